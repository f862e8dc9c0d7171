"""`--mode=compress`'s distill variant: a smaller student trained from scratch against the run.

The student is this run's config with `compress.student`'s dotted overrides (by default half the
model's layers and widths, `student_overrides`), trained for `compress.distill_steps` (0: the
run's own train.steps, so the row compares a smaller model at the teacher's training budget)
with `distill.teacher` = the run, into `<workdir>/compressed/distill/`: an ordinary workdir whose
distill.MARKER records the overrides, so every mode rebuilds the student's model from it.
"""

import json
import os

import jax

from bigmodel_jax import checkpoint, parallel, steps, tasks
from bigmodel_jax import config as config_lib
from bigmodel_jax.compress import distill
from bigmodel_jax.errors import UsageError

NAME = "distill"
# Model fields a default student halves, where the model has them (ints and tuples of ints).
HALVED = ("num_layers", "embed_dim", "mlp_dim", "hidden", "widths")


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def student_overrides(config) -> dict:
  """{dotted key: typed value} that make the student: compress.student's "key=value" items,
  parsed like --config flags, or half of every HALVED field of config.model (at least 1; an
  embedding width stays a multiple of model.num_heads)."""
  items = tuple(config.compress.student)
  if items:
    pairs = {}
    for item in items:
      key, sep, text = str(item).partition("=")
      if not sep or not key.strip():
        raise UsageError(
            f"compress.student: {item!r} is not key=value (e.g. model.num_layers=2); "
            f"compress.student={items!r}"
        )
      pairs[key.strip()] = text.strip()
    try:
      probe = config_lib.apply_overrides(config.copy_and_resolve_references(), pairs)
    except UsageError as e:
      raise UsageError(f"compress.student: {e}") from None
    return {key: _get(probe, key) for key in pairs}
  model, out = config.model, {}
  half = lambda n: max(1, n // 2)  # noqa: E731
  for key in HALVED:
    value = model.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value > 1:
      heads = model.get("num_heads", 1) if key == "embed_dim" else 1
      if half(value) % heads == 0:
        out[f"model.{key}"] = half(value)
    elif isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
      out[f"model.{key}"] = tuple(half(v) for v in value)
  return out


def student_config(config, workdir: str):
  """-> (the student's config, its overrides): a fresh model of the run's recipe, no pruning,
  adapters or init_from, the run as teacher, one checkpoint at the end."""
  overrides = student_overrides(config)
  c = config.copy_and_resolve_references()
  n = config.compress.distill_steps or config.train.steps
  with c.unlocked():
    c.init_from, c.init_reinit = "", ()
    c.prune.update(target=0.0, pattern="unstructured")
    if "lora" in c.get("model", {}):
      c.model.lora.rank = 0
    if "linear_probe" in c:
      c.linear_probe = False
    c.distill.teacher = os.path.abspath(workdir)
    c.train.update(
        steps=n,
        trainable="",
        warmup_steps=min(c.train.warmup_steps, n // 4),
        eval_every=min(c.train.eval_every, n),
        log_every=min(c.train.log_every, n),
    )
    c.checkpoint.update(every_steps=n, best_metric="")
  config_lib.set_values(c, overrides, source="compress.student")
  return c, overrides


def row(config, workdir: str, evaluator_cls) -> dict:
  """Trains the student into `<workdir>/compressed/distill/` and measures it as it is on disk."""
  # pylint: disable=g-import-not-at-top  (trainer and report import this module)
  from bigmodel_jax import trainer
  from bigmodel_jax.compress import report

  sconfig, overrides = student_config(config, workdir)
  out, tmp = report._start_variant(workdir, NAME)  # pylint: disable=protected-access
  with open(os.path.join(tmp, distill.MARKER), "w") as f:
    json.dump({"teacher": os.path.abspath(workdir), "overrides": overrides}, f)
  trainer.run(sconfig, tmp)
  out = report._finish_variant(out, tmp)  # pylint: disable=protected-access

  task = tasks.get(sconfig.task)(sconfig)  # the plain task: the student as it will be used
  task.setup(out, create=False)
  strategy = parallel.make(sconfig)
  tx = trainer._optimizer(sconfig)[0]  # pylint: disable=protected-access
  init_fn = lambda rng: steps.init_state(rng, task=task, tx=tx)  # noqa: E731
  ckpt = checkpoint.Checkpointer(out, sconfig.checkpoint, read_only=True)
  restored, step = ckpt.restore_latest(
      strategy.abstract(init_fn, jax.random.key(sconfig.seed)), None, sconfig
  )
  ckpt.close()
  state = strategy.place(restored)
  return report.measure(NAME, evaluator_cls, task, strategy, sconfig, state, out, step)
