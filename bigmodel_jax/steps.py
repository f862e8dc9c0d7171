"""The pure step functions every strategy runs: `init_state`, `train_step`, `eval_step`.

Nothing here touches devices, files or the host: `bigmodel_jax.parallel` wraps these in pmap or
jit, the trainer loops over them, and `--mode=plan` and the benchmark compile the same functions.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import optax

from bigmodel_jax import parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  model_state: dict  # non-parameter collections, e.g. BatchNorm statistics


FROZEN = "frozen"  # the init_variables collection that becomes FrozenState.frozen


@flax.struct.dataclass
class FrozenState(TrainState):
  """A TrainState that also carries arrays every step reads but nothing trains: a distillation
  teacher's variables (compress/distill.py). They are an argument of the compiled step (placed
  and sharded like the rest of the state, never baked in as constants), outside `params` (so no
  gradient, no optimizer moments) and outside checkpoints (`saved()`): each run restores them
  from the teacher's own workdir."""

  frozen: dict

  def saved(self) -> TrainState:
    return TrainState(self.step, self.params, self.opt_state, self.model_state)


def init_state(rng, *, task, tx) -> TrainState:
  variables = dict(task.init_variables(rng))
  params = variables.pop("params")
  frozen = variables.pop(FROZEN, None)
  fields = dict(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), model_state=variables
  )
  return TrainState(**fields) if frozen is None else FrozenState(**fields, frozen=frozen)


def train_step(
    state: TrainState,
    batch,
    rng,
    *,
    task,
    tx,
    schedule,
    accum: int,
    axis_name: str | None,
    poison_steps: tuple[int, ...] = (),
):
  """One optimizer update over `batch`, split into `accum` micro-batches; pure.

  An update whose loss, gradients or update (what the optimizer would add to the parameters) are
  not finite is not applied (the step still counts, as its batch was consumed); the returned flags
  tell the host which. `poison_steps` makes those steps' gradients NaN: a test-only fault
  injection.
  """
  rng = jax.random.fold_in(rng, state.step)
  if axis_name:  # a different dropout mask on each pmap device
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  loss_fn = task.loss
  if isinstance(state, FrozenState):  # an input of the loss; grad is taken of params only
    loss_fn = functools.partial(task.loss, frozen=state.frozen)
  grad_fn = jax.grad(loss_fn, has_aux=True)

  def micro_step(carry, xs):
    grads, model_state = carry
    micro_batch, i = xs
    g, (m, model_state) = grad_fn(
        state.params, model_state, micro_batch, jax.random.fold_in(rng, i), True
    )
    return (jax.tree.map(jnp.add, grads, g), model_state), m

  if accum == 1:  # no scan: XLA:CPU runs some ops (conv weight gradients) far slower inside one
    grads, (metrics, model_state) = grad_fn(state.params, state.model_state, batch, rng, True)
  else:
    micro_batches = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, model_state), metrics = jax.lax.scan(
        micro_step, (zeros, state.model_state), (micro_batches, jnp.arange(accum))
    )
    grads = jax.tree.map(lambda g: g / accum, grads)
    metrics = jax.tree.map(lambda m: m.sum(0), metrics)
  if poison_steps:
    poison = jnp.where(jnp.isin(state.step + 1, jnp.array(poison_steps)), jnp.nan, 1.0)
    grads = jax.tree.map(lambda g: g * poison, grads)
  if axis_name:
    grads, model_state = parallel.pmean((grads, model_state), axis_name)
    metrics = jax.lax.psum(metrics, axis_name)

  grad_norm = optax.tree.norm(grads)
  flags = {"loss": jnp.isfinite(metrics["loss"][0]), "gradients": jnp.isfinite(grad_norm)}

  def keep(update_finite):  # keep everything as it was
    return (
        state.params,
        state.opt_state,
        state.model_state,
        jnp.zeros((), jnp.float32),
        update_finite,
    )

  def apply(_):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    update_norm = optax.tree.norm(updates).astype(jnp.float32)
    params = optax.apply_updates(state.params, updates)
    commit = lambda _: (
        params,
        opt_state,
        task.after_update(params, model_state),
        update_norm,
        jnp.array(True),
    )
    # Finite gradients can still make a non-finite update (e.g. an extreme learning rate).
    return jax.lax.cond(jnp.isfinite(update_norm), commit, lambda _: keep(jnp.array(False)), None)

  # lax.cond, not a select over the old and new trees: XLA updates the donated buffers in place.
  params, opt_state, new_model_state, update_norm, flags["update"] = jax.lax.cond(
      flags["loss"] & flags["gradients"], apply, lambda _: keep(jnp.array(True)), None
  )
  one = jnp.ones((), jnp.float32)
  metrics.update(
      grad_norm=(grad_norm, one),
      param_norm=(optax.tree.norm(params), one),
      update_norm=(update_norm, one),
      lr=(schedule(state.step), one),
  )
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, model_state=new_model_state
  )
  return new_state, (metrics, flags)


def eval_step(state: TrainState, batch, rng, *, task, axis_name: str | None):
  _, (metrics, _) = task.loss(state.params, state.model_state, batch, rng, False)
  return jax.lax.psum(metrics, axis_name) if axis_name else metrics
