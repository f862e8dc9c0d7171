"""Knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv:1503.02531) for any model.

With `config.distill.teacher=<workdir>` the run's model (the student) trains on

  alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * the task's loss

averaged over the positions the task's loss averages over (tokens, images). T^2 keeps the soft
term's gradients on the scale of the hard one's as T grows (the paper's section 2).

The teacher is another trained run of the same experiment: its latest checkpoint, restored with
its own config.json, through its own task wrappers (a LoRA, int8 or pruned teacher gives the
plain variables its model applies, `tasks.base.plain_variables`). `DistillTask` wraps the
student's task like lora.py / quantize.QuantTask do; it needs the task's `loss_and_logits`
(textgen's lm and imagecls's classify_image have it), so no model file knows about
distillation.

Where the teacher's variables live: in `steps.FrozenState.frozen`, a field of the train state
beside (not inside) `params`. So they are an argument of the compiled step, placed by the run's
strategy like the rest of the state (replicated by pmap; sharded by their logical axes on a
mesh), and never constants of the compiled program (a 1 GB teacher would be a 1 GB constant);
`jax.grad` differentiates the loss in `params` only and the optimizer sees only `params`, so the
teacher gets no gradient and no optimizer moments; checkpoints hold `FrozenState.saved()`, the
student alone, and every run (and resume) restores the teacher from its own workdir.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bigmodel_jax import checkpoint, json_files, lora, optim, steps, tasks
from bigmodel_jax import config as config_lib
from bigmodel_jax.compress import prune, quantize
from bigmodel_jax.errors import UsageError
from bigmodel_jax.tasks import base

# A student workdir written by `--mode=compress` carries MARKER (JSON: {"teacher": <workdir>,
# "overrides": {dotted key: value}}): its model is not the experiment's, and every mode applies
# the overrides (`with_saved`) so that `--workdir=<it>` evaluates, samples and serves as is.
MARKER = "distilled.bigmodel.json"


def validate(cfg) -> None:
  """`cfg` is config.distill; a one-line UsageError names the first bad field."""
  if not 0 <= cfg.alpha <= 1:
    raise UsageError(
        f"distill.alpha={cfg.alpha} must be in [0, 1]: the weight of the KL term against the "
        "task's own loss (0: hard labels only, 1: soft targets only)"
    )
  if not cfg.temperature > 0:
    raise UsageError(f"distill.temperature={cfg.temperature} must be > 0 (1: plain softmax)")


def kl_divergence(teacher_logits, student_logits, temperature: float):
  """KL(softmax(teacher / T) || softmax(student / T)) over the last axis, in float32: (...)."""
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def innermost(task: base.Task) -> base.Task:
  while isinstance(task, base.WrappedTask):
    task = task.inner
  return task


def distillable(task: base.Task) -> bool:
  """Whether the class that defines the task's loss also defines its loss_and_logits (sft
  overrides lm's loss, so lm's logits would not be its loss's)."""
  mro = type(innermost(task)).__mro__
  owner = lambda name: next(k for k in mro if name in vars(k))  # noqa: E731
  return owner("loss") is owner("loss_and_logits") is not base.Task


def wrap(task: base.Task, config, train: bool) -> base.Task:
  """`task`, or, when training with config.distill.teacher set, a DistillTask around it. Other
  modes see the plain task: a distilled model is an ordinary one."""
  if "distill" not in config:
    return task
  validate(config.distill)
  if not (train and config.distill.teacher):
    return task
  if not distillable(task):
    raise UsageError(
        f"distill.teacher is set but task {config.task!r} cannot be distilled (its loss has "
        "no loss_and_logits); textgen's lm and imagecls's classify_image can"
    )
  return DistillTask(task, Teacher(config.distill.teacher, config), config.distill)


def with_saved(config, workdir: str):
  """`config` with the student overrides a distilled workdir's MARKER records, if it has one."""
  path = os.path.join(workdir, MARKER) if workdir else ""
  if not path or not os.path.exists(path):
    return config
  overrides = json_files.read_json(path, "distillation marker")["overrides"]
  config = config.copy_and_resolve_references()
  return config_lib.set_values(config, _typed(config, overrides), source=path)


def _typed(config, values: dict) -> dict:
  """JSON values -> the config's types (JSON has lists where the config has tuples)."""
  tuples = lambda v: tuple(tuples(x) for x in v) if isinstance(v, list) else v  # noqa: E731
  return {k: tuples(v) for k, v in values.items()}


def saved_config(path: str, what: str) -> ml_collections.ConfigDict:
  """The config a run saved as `<path>/config.json`: its experiment's, with every saved value."""
  saved = json_files.read_json(os.path.join(path, "config.json"), f"{what}'s config")
  config = config_lib.load_experiment(saved.get("experiment", ""))
  flat = {}
  for key in config_lib.leaf_keys(config):
    node = saved
    for part in key.split("."):
      node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
    if node is not KeyError and key != "experiment":
      flat[key] = node
  return config_lib.set_values(config, _typed(config, flat), source=f"{what}'s config.json")


class Teacher:
  """A trained run's model, read-only: checked against the student's config on construction
  (cheap: nothing is loaded), restored by `load`."""

  def __init__(self, path: str, student_config):
    self.path = os.path.abspath(path)
    where = f"distill.teacher={path!r}"
    if not os.path.isfile(os.path.join(self.path, "config.json")):
      raise UsageError(f"{where} is not a run's workdir (it has no config.json)")
    if checkpoint.latest_step_number(os.path.join(self.path, checkpoint.DIRECTORY)) is None:
      raise UsageError(
          f"{where} holds no checkpoint; train the teacher first (python run.py "
          f"--experiment={student_config.experiment} --workdir={path})"
      )
    self.config = saved_config(self.path, "the teacher")
    base_name = lambda c: str(c.experiment).split(":")[0]  # noqa: E731
    if (self.config.task, base_name(self.config)) != (
        student_config.task,
        base_name(student_config),
    ):
      raise UsageError(
          f"{where} is a run of experiment {base_name(self.config)!r} (task "
          f"{self.config.task!r}); the student is {base_name(student_config)!r} (task "
          f"{student_config.task!r}): distil from a run of the same experiment"
      )
    task = tasks.get(self.config.task)(self.config)
    self.wrapped = quantize.wrap(lora.wrap(task, self.config), self.path)
    self.task = innermost(self.wrapped)  # applies the plain variables `load` returns

  def load(self, student: base.Task) -> dict:
    """The teacher's plain variables {"params": ..., **model_state} as host arrays, after
    checking that its outputs mean what the student's do (same classes or vocabulary)."""
    self.wrapped.setup(self.path, create=False)
    mine, theirs = student.output_names(), self.task.output_names()
    if mine != theirs:
      diff = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), None)
      detail = (
          f"; they first differ at {diff}: {theirs[diff]!r} vs {mine[diff]!r}"
          if diff is not None
          else ""
      )
      raise UsageError(
          f"distill.teacher={self.path!r} has {len(theirs)} outputs (classes or vocabulary "
          f"tokens) and the student {len(mine)}{detail}: teacher and student must share them"
      )
    c = self.config
    if isinstance(self.wrapped, quantize.QuantTask):
      tx = quantize.frozen_optimizer()
    else:  # only shapes: the abstract state must match what the teacher's checkpoint holds
      tx = prune.wrap(optim.make_optimizer(c.train, lora.enabled(c))[0], c)
    init_fn = functools.partial(steps.init_state, task=self.wrapped, tx=tx)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one),
        jax.eval_shape(lambda r: nn.meta.unbox(init_fn(r)), jax.random.key(0)),
    )
    ckpt = checkpoint.Checkpointer(self.path, c.checkpoint, read_only=True)
    state, _ = ckpt.restore_latest(abstract, None, c)
    ckpt.close()
    variables = {"params": state.params, **state.model_state}
    return jax.device_get(base.plain_variables(self.wrapped, variables))


class DistillTask(base.WrappedTask):
  """The student's task, trained against the teacher's soft targets (see the module doc)."""

  def __init__(self, inner: base.Task, teacher: Teacher, cfg):
    super().__init__(inner)
    self.teacher = teacher
    self.temperature, self.alpha = float(cfg.temperature), float(cfg.alpha)
    self._teacher_variables = None

  def plain_params(self, params):
    return params  # the student's parameters are stored as they are

  def setup(self, workdir, create):
    self.inner.setup(workdir, create)
    self._teacher_variables = self.teacher.load(self.inner)

  def teacher_variables(self) -> dict:
    """Host arrays, after setup; the trainer places them into FrozenState.frozen."""
    if self._teacher_variables is None:
      raise RuntimeError("DistillTask.setup has not run: the teacher is not loaded")
    return self._teacher_variables

  def init_variables(self, rng):
    # The teacher's collection gives FrozenState.frozen its shapes and logical axes (so a mesh
    # shards it like the teacher's own run); its fresh values are replaced by `attach`.
    teacher = self.teacher.task.init_variables(rng)
    return {**self.inner.init_variables(rng), steps.FROZEN: teacher}

  def loss(self, params, model_state, batch, rng, train, frozen=None):
    if frozen is None:  # evaluation (steps.eval_step): the student's task, as it will be used
      return self.inner.loss(params, model_state, batch, rng, train)
    hard, (metrics, model_state), logits = self.inner.loss_and_logits(
        params, model_state, batch, rng, train
    )
    teacher = jax.lax.stop_gradient(frozen)
    teacher_state = {k: v for k, v in teacher.items() if k != "params"}
    _, _, teacher_logits = self.teacher.task.loss_and_logits(
        teacher["params"], teacher_state, batch, rng, False
    )
    kl = kl_divergence(teacher_logits, logits, self.temperature)  # (B, ...) per position
    weight = batch.get("weight", jnp.ones(kl.shape[:1], jnp.float32)).astype(jnp.float32)
    weight = jnp.broadcast_to(weight.reshape(weight.shape + (1,) * (kl.ndim - 1)), kl.shape)
    total_weight = weight.sum()
    kl_mean = (kl * weight).sum() / jnp.maximum(total_weight, 1e-9)
    loss = self.alpha * self.temperature**2 * kl_mean + (1.0 - self.alpha) * hard
    # "loss" stays the task's own (what evaluation reports); "kl" is the soft term at T.
    metrics = {**metrics, "kl": ((kl * weight).sum(), total_weight)}
    return loss, (metrics, model_state)


def attach(state, task: base.Task):
  """A host-layout train state with the teacher's variables in FrozenState.frozen (no-op for a
  task that is not a DistillTask)."""
  if not isinstance(task, DistillTask):
    return state
  fields = {k: getattr(state, k) for k in ("step", "params", "opt_state", "model_state")}
  return steps.FrozenState(**fields, frozen=task.teacher_variables())
