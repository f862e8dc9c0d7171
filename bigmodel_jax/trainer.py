"""The one trainer: `run(config, workdir, mode)`; every experiment goes through it.

The task owns the loss, metrics and batch layout; this file knows nothing about any model. One pure
`train_step(state, batch, rng) -> (state, metrics)` runs under either strategy of `parallel.py`.
"""

import functools
import os
import time

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import optax

from bigmodel_jax import checkpoint, metrics as metrics_lib, optim, parallel, safety, tasks
from bigmodel_jax.errors import RunError, UsageError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  model_state: dict  # non-parameter collections, e.g. BatchNorm statistics


def init_state(rng, *, task, tx) -> TrainState:
  variables = dict(task.init_variables(rng))
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), model_state=variables)


def train_step(state: TrainState, batch, rng, *, task, tx, schedule, accum: int,
               axis_name: str | None, poison_steps: tuple[int, ...] = ()):
  """One optimizer update over `batch`, split into `accum` micro-batches; pure.

  An update whose loss or gradients are not finite is not applied (the step still counts, as its
  batch was consumed); `finite` in the returned flags tells the host. `poison_steps` makes those
  steps' gradients NaN: a test-only fault injection.
  """
  rng = jax.random.fold_in(rng, state.step)
  if axis_name:  # a different dropout mask on each pmap device
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  grad_fn = jax.grad(task.loss, has_aux=True)

  def micro_step(carry, xs):
    grads, model_state = carry
    micro_batch, i = xs
    g, (m, model_state) = grad_fn(state.params, model_state, micro_batch,
                                  jax.random.fold_in(rng, i), True)
    return (jax.tree.map(jnp.add, grads, g), model_state), m

  if accum == 1:  # no scan: XLA:CPU runs some ops (conv weight gradients) far slower inside one
    grads, (metrics, model_state) = grad_fn(state.params, state.model_state, batch, rng, True)
  else:
    micro_batches = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, model_state), metrics = jax.lax.scan(
        micro_step, (zeros, state.model_state), (micro_batches, jnp.arange(accum)))
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

  def apply(_):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return params, opt_state, model_state, optax.tree.norm(updates).astype(jnp.float32)

  def skip(_):  # the update is not finite: keep everything as it was
    return state.params, state.opt_state, state.model_state, jnp.zeros((), jnp.float32)

  # lax.cond, not a select over the old and new trees: XLA updates the donated buffers in place.
  params, opt_state, new_model_state, update_norm = jax.lax.cond(
      flags["loss"] & flags["gradients"], apply, skip, None)
  one = jnp.ones((), jnp.float32)
  metrics.update(grad_norm=(grad_norm, one), param_norm=(optax.tree.norm(params), one),
                 update_norm=(update_norm, one), lr=(schedule(state.step), one))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            model_state=new_model_state)
  return new_state, (metrics, flags)


def eval_step(state: TrainState, batch, rng, *, task, axis_name: str | None):
  _, (metrics, _) = task.loss(state.params, state.model_state, batch, rng, False)
  return jax.lax.psum(metrics, axis_name) if axis_name else metrics


# --- entry point ---------------------------------------------------------------------------------


def run(config, workdir: str, mode: str = "train", **test_hooks):
  """Validates everything it can, then trains (mode "train"), evaluates, or runs a task mode.

  test_hooks (tests only): stop_after=N stops training at step N as if interrupted;
  poison_steps=(N, ...) makes those steps' gradients NaN.
  """
  parallel.initialize_distributed(config.distributed)  # before anything touches a device
  parallel.configure_cpu_devices(config)
  task = tasks.get(config.task)(config)
  valid = ["train", "eval", "plan", *task.modes]
  if mode not in valid:
    raise UsageError(f"--mode={mode!r} is not valid for {config.experiment}; valid: "
                     f"{', '.join(valid)}")
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # one process speaks for the job
  if config.compile_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compile_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  strategy = parallel.make(config)
  if mode == "plan":
    from bigmodel_jax import plan  # pylint: disable=g-import-not-at-top (plan imports trainer)
    return plan.plan(config, task)
  safety.check_workdir(workdir)
  if mode == "train":
    ckpt_dir = os.path.join(workdir, checkpoint.DIRECTORY)
    with safety.RemoveIfFailed(workdir, lambda: checkpoint.has_steps(ckpt_dir)):
      return train_and_evaluate(config, workdir, task, strategy, **test_hooks)

  task.setup(workdir, create=False)
  tx, _ = optim.make_optimizer(config.train)
  init_fn = functools.partial(init_state, task=task, tx=tx)
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
  restored = ckpt.restore_latest(strategy.abstract(init_fn, jax.random.key(config.seed)),
                                 None, config)
  ckpt.close()
  if restored is None:
    raise RunError(f"no checkpoint in {ckpt.directory}; train first with python run.py "
                   f"--experiment={config.experiment} --workdir={workdir}")
  state, step = strategy.place(restored[0]), restored[1]
  if mode == "eval":
    values = evaluate(task, strategy, state, config, final=True)
    metrics_lib.log_eval(step, "validation", values)
    print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
    return values
  return task.modes[mode](_variables(strategy.to_host_layout(state)))


def evaluate(task, strategy, state, config, final: bool = False) -> dict[str, float]:
  """Sums the task's metrics over its eval batches; at the end of training (final), adds the
  task's host-side metrics (`task.final_metrics(variables)`, e.g. BLEU from decoding), if any."""
  step_fn = getattr(strategy, "_eval_fn", None)
  if step_fn is None:
    step_fn = strategy._eval_fn = strategy.compile(
        functools.partial(eval_step, task=task, axis_name=strategy.axis_name), train=False)
  per_process = config.train.batch_size // jax.process_count()
  totals = None
  for batch in task.eval_batches(per_process):
    m = strategy.metrics_to_host(step_fn(state, strategy.put_batch(batch), jax.random.key(0)))
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  values = task.summarize(metrics_lib.reduce(totals))
  if final and hasattr(task, "final_metrics"):
    values.update(task.final_metrics(_variables(strategy.to_host_layout(state))))
  return values


def train_and_evaluate(config, workdir: str, task, strategy, *, stop_after: int | None = None,
                       poison_steps: tuple[int, ...] = ()):
  primary = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  # Process 0 builds what the run saves (e.g. trains the tokenizer); the others then load it.
  if primary:
    task.setup(workdir, create=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("task setup")
    if not primary:
      task.setup(workdir, create=False)
  tx, schedule = optim.make_optimizer(config.train)
  init_fn = functools.partial(init_state, task=task, tx=tx)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  per_process = config.train.batch_size // jax.process_count()
  data = task.train_iterator(per_process, config.seed, jax.process_index(), jax.process_count())
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint)
  best = checkpoint.Checkpointer(workdir, config.checkpoint, best=True) if (
      config.checkpoint.best_metric) else None
  state, start = _restore_or_init(config, strategy, ckpt, init_fn, init_rng, data, tx)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  n_params = sum(x.size for x in jax.tree.leaves(strategy.to_host_layout(state).params))
  peak, peak_source = metrics_lib.peak_flops_per_device()
  logging.info("Model: %s parameters; %s strategy on %d device(s); MFU peak %.3g FLOP/s per device "
               "(%s)", f"{n_params:,}", strategy.name, strategy.num_devices, peak, peak_source)

  step_fn = strategy.compile(functools.partial(
      train_step, task=task, tx=tx, schedule=schedule, accum=config.train.grad_accum_steps,
      axis_name=strategy.axis_name, poison_steps=tuple(poison_steps)))
  writer = metrics_lib.MetricWriter(workdir, enabled=primary, resume_step=start)
  progress = metrics_lib.Progress(config.train.steps, start)
  guard = safety.NanGuard(config.train.on_nan, config.train.max_nan_skips)
  stop = safety.StopOnSignal()
  t = config.train
  units_per_step = t.batch_size * task.units_per_example
  pending, stopping = [], None
  try:
    for step in range(start + 1, t.steps + 1):
      state, (m, flags) = step_fn(state, strategy.put_batch(next(data)), step_rng)
      pending.append(m)
      guard.add(step, flags)
      if step == start + 1:
        jax.block_until_ready(state)
        logging.info("First step (compile + run) took %.1f s",
                     time.perf_counter() - progress.start_time())
        progress.update(step)  # throughput from here on leaves compilation out
      if step == stop_after:
        stop.requested = f"stop_after={stop_after}"
      stopping = stop.requested  # read once: a signal may land anywhere below
      last = step == t.steps or bool(stopping)
      if step % t.log_every == 0 or last:
        guard.check()
        values = _reduce_pending(strategy, pending)
        pending = []
        per_step, eta = progress.update(step)
        values[f"{task.unit}_per_s"] = units_per_step / per_step
        if task.flops_per_unit:
          values["mfu"] = task.flops_per_unit * units_per_step / per_step / (
              peak * strategy.num_devices)
        values["skipped_steps"] = guard.skipped_total
        writer.write(step, "train", task.summarize(values))
        if primary:
          logging.info(progress.line(step, values, eta))
      paused = time.perf_counter()
      if step % t.eval_every == 0 or last:
        guard.check()
        values = evaluate(task, strategy, state, config, final=step == t.steps)
        writer.write(step, "validation", values)
        metrics_lib.log_eval(step, "validation", values)
        if best is not None:
          _save_best(best, config, step, strategy.to_host_layout(state), data, values)
      if step % config.checkpoint.every_steps == 0 or last:
        guard.check()  # never save a step after a NaN that is meant to stop the run
        ckpt.save(step, strategy.to_host_layout(state), data, config.to_dict(), force=True)
      progress.exclude(time.perf_counter() - paused)
      if stopping:
        logging.warning("Stopped at step %d on %s; checkpoint saved", step, stopping)
        break
  finally:
    stop.restore()
    ckpt.close()  # waits for async saves to commit
    if best is not None:
      best.close()
    writer.close()
  if start == t.steps:
    logging.info("Already trained to train.steps=%d; raise it to train further", t.steps)
  if not stopping and primary:
    task.showcase(_variables(strategy.to_host_layout(state)))
  return state


def _restore_or_init(config, strategy, ckpt, init_fn, init_rng, data, tx):
  """-> (state in the strategy's layout, its step)."""
  # Restore order: (1) the latest valid checkpoint in this workdir (resume: state, data position
  # and all); (2) config.init_from, another run's parameters (fine-tuning; fresh optimizer, step
  # 0); (3) a fresh init.
  restored = ckpt.restore_latest(strategy.abstract(init_fn, init_rng), data, config)
  if restored is not None:
    logging.info("Resumed from %s/%d", ckpt.directory, restored[1])
    return strategy.place(restored[0]), restored[1]
  if config.init_from:
    fresh = jax.jit(lambda r: flax.linen.meta.unbox(init_fn(r)))(init_rng)
    abstract = jax.eval_shape(lambda: fresh.params)
    params = checkpoint.params_from(config.init_from, abstract, fresh.params, config.init_reinit)
    return strategy.place(fresh.replace(params=params, opt_state=tx.init(params))), 0
  return strategy.init_state(init_fn, init_rng), 0


def _variables(state: TrainState) -> dict:
  """What a model's apply takes: {"params": ..., other collections (e.g. batch_stats)}."""
  return {"params": state.params, **state.model_state}


def _reduce_pending(strategy, pending) -> dict[str, float]:
  """Sums per-step metric sums; norms and lr (count 1 per step) average over the steps."""
  total = jax.tree.map(lambda *xs: sum(xs), *[strategy.metrics_to_host(m) for m in pending])
  return metrics_lib.reduce(total)


def _save_best(best, config, step, state, data, values) -> None:
  name = config.checkpoint.best_metric
  if name not in values:
    raise UsageError(f"checkpoint.best_metric={name!r} is not an eval metric; valid: "
                     f"{', '.join(values)}")
  better = min if name in ("loss", "perplexity") else max
  previous = getattr(best, "best_value", None)
  if previous is None or better(previous, values[name]) != previous:
    best.best_value = values[name]
    best.save(step, state, data, config.to_dict(), force=True)
    logging.info("New best %s %.4f at step %d", name, values[name], step)
