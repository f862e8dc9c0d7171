"""`--mode=compress`: compressed variants of a trained workdir, each an ordinary workdir under
`<workdir>/compressed/<variant>/`, and one table measuring them next to the original.

Variants (VARIANTS, chosen by config.compress.variants): int8 (post-training weight quantization,
quantize.py), pruned ones (prune.py), each a brief fine-tune of the run, and distill, a smaller
model trained from scratch against the run's soft targets (distill_variant.py). For each row the
table gives the checkpoint's state size on disk, the parameter count and how many are nonzero,
the eval metrics on the whole validation split, and CPU speed of that evaluation pass (after a
compile-and-warm-up pass): seconds per batch and examples per second. It prints the table and
writes it to `<workdir>/compressed/report.json`.
"""

import functools
import json
import os
import shutil
import time

from absl import logging
import jax

from bigmodel_jax import checkpoint, steps
from bigmodel_jax.compress import distill, distill_variant, quantize
from bigmodel_jax.errors import RunError, UsageError

FOLDER = "compressed"
# Workdir entries a variant does not copy: its own checkpoints replace these, and the variants
# folder would nest itself.
_NOT_COPIED = (checkpoint.DIRECTORY, "best_checkpoint", FOLDER, "tensorboard", "metrics.jsonl")


# Variant name -> the prune section of its brief fine-tune (None: int8 quantization, or a
# smaller student distilled from the run, distill_variant.py).
VARIANTS = {
    "int8": None,
    "prune_50": dict(target=0.5, pattern="unstructured"),
    "prune_75": dict(target=0.75, pattern="unstructured"),
    "prune_90": dict(target=0.9, pattern="unstructured"),
    "prune_2of4": dict(target=0.0, pattern="2:4"),
    "distill": None,
}


def validate(cfg) -> None:
  """`cfg` is config.compress; a one-line UsageError names the first bad field."""
  bad = [v for v in cfg.variants if v not in VARIANTS]
  if bad or not cfg.variants:
    raise UsageError(
        f"compress.variants={tuple(cfg.variants)!r}: {bad[0] if bad else 'none'} is not a "
        f"variant; valid: {', '.join(VARIANTS)}"
    )
  if cfg.finetune_steps < 2:
    raise UsageError(f"compress.finetune_steps={cfg.finetune_steps} must be >= 2")
  if cfg.distill_steps < 0 or cfg.distill_steps == 1:
    raise UsageError(
        f"compress.distill_steps={cfg.distill_steps} must be >= 2 (0: the run's train.steps)"
    )


def finetune_config(config, workdir: str, name: str):
  """The config of variant `name`'s brief fine-tune from `workdir`: the ramp over its first half,
  the masks fixed over the second; no warmup (it starts from a trained model)."""
  c = config.copy_and_resolve_references()
  steps_ = config.compress.finetune_steps
  with c.unlocked():
    c.init_from, c.init_reinit = os.path.abspath(workdir), ()
    c.prune.update(VARIANTS[name], start_step=0, end_step=max(1, steps_ // 2))
    c.train.update(
        steps=steps_, warmup_steps=0, eval_every=steps_, log_every=min(c.train.log_every, steps_)
    )
    c.checkpoint.update(every_steps=steps_, best_metric="")
  return c


def write_pruned(config, workdir: str, name: str):
  """Fine-tunes variant `name` into `<workdir>/compressed/<name>/` -> (its folder, final state)."""
  from bigmodel_jax import trainer  # pylint: disable=g-import-not-at-top  (trainer imports us)

  out, tmp = _start_variant(workdir, name)
  state = trainer.run(finetune_config(config, workdir, name), tmp)
  return _finish_variant(out, tmp), state


def dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def state_bytes(workdir: str, step: int) -> int:
  """Bytes of the saved train state (parameters, optimizer moments, model state) at `step`."""
  return dir_bytes(os.path.join(workdir, checkpoint.DIRECTORY, str(step), "state"))


def _weights_bytes(params) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def _start_variant(workdir: str, name: str) -> tuple[str, str]:
  """-> (its final folder, a fresh .partial folder holding the run's files but no checkpoint)."""
  out = os.path.join(workdir, FOLDER, name)
  tmp = out + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for entry in os.listdir(workdir):  # tokenizer, dataset statistics, config.json, ...
    src = os.path.join(workdir, entry)
    if entry in _NOT_COPIED or entry.startswith("."):
      continue
    (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(tmp, entry))
  return out, tmp


def _finish_variant(out: str, tmp: str) -> str:
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  return out


def write_int8(config, workdir: str, task, host_state, step: int) -> str:
  """Writes `<workdir>/compressed/int8/` (whole or not at all) and returns its path."""
  out, tmp = _start_variant(workdir, "int8")
  params = quantize.quantize(host_state.params)
  state = steps.TrainState(
      step=host_state.step,
      params=params,
      opt_state=quantize.frozen_optimizer().init(params),
      model_state=host_state.model_state,
  )
  data = task.train_iterator(
      config.train.batch_size // jax.process_count(),
      config.seed,
      jax.process_index(),
      jax.process_count(),
  )
  ckpt = checkpoint.Checkpointer(tmp, config.checkpoint)
  ckpt.save(step, state, data, config.to_dict(), force=True)
  ckpt.close()
  with open(os.path.join(tmp, quantize.MARKER), "w") as f:
    json.dump({"quantize": "int8", "source": os.path.abspath(workdir)}, f)
  return _finish_variant(out, tmp)


def measure(name, evaluator_cls, task, strategy, config, state, workdir, step) -> dict:
  """One table row: sizes, parameter count, eval metrics and CPU speed of `state` under `task`."""
  evaluate = evaluator_cls(task, strategy, config)
  evaluate(state)  # compiles and warms up
  batches = task.eval_batches(evaluate.batch_size)
  examples = sum(len(jax.tree.leaves(b)[0]) for b in batches)
  start = time.perf_counter()
  values = evaluate(state)
  seconds = time.perf_counter() - start
  params = strategy.to_host_layout(state).params
  weights = jax.tree.leaves(quantize.dequantize(params))
  return {
      "variant": name,
      "workdir": os.path.abspath(workdir),
      "state_mib": state_bytes(workdir, step) / 2**20,
      "weights_mib": _weights_bytes(params) / 2**20,
      "parameters": int(sum(x.size for x in weights)),
      "nonzero": int(sum((x != 0).sum() for x in weights)),
      **{k: float(v) for k, v in values.items()},
      "eval_s_per_batch": seconds / max(len(batches), 1),
      "eval_examples_per_s": examples / seconds,
  }


def table(rows: list[dict]) -> str:
  keys = [k for k in rows[0] if k != "workdir"]
  cell = lambda v: f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v
  cells = [[str(k) for k in keys]] + [[cell(r.get(k, "")) for k in keys] for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells)


def run(config, workdir: str, task, strategy, state, step: int, evaluator_cls) -> list[dict]:
  """Writes the variants of the restored run (`state` at `step`, strategy layout) and the table."""
  if jax.process_count() > 1:
    raise RunError("--mode=compress runs on one process; run it without jax.distributed")
  validate(config.compress)
  if "distill" in config.compress.variants:
    distill_variant.student_overrides(config)  # a bad compress.student fails before any work
  rows = [measure("original", evaluator_cls, task, strategy, config, state, workdir, step)]
  for name in config.compress.variants:
    if name == "int8":
      rows.append(_int8_row(config, workdir, task, strategy, state, step, evaluator_cls))
    elif name == "distill":
      if not distill.distillable(task):
        logging.warning("compress: no distill variant; task %s cannot be distilled", config.task)
        continue
      rows.append(distill_variant.row(config, workdir, evaluator_cls))
    else:
      out, vstate = write_pruned(config, workdir, name)
      vconfig = finetune_config(config, workdir, name)
      n = config.compress.finetune_steps
      rows.append(measure(name, evaluator_cls, task, strategy, vconfig, vstate, out, n))
  path = os.path.join(workdir, FOLDER, "report.json")
  with open(path, "w") as f:
    json.dump(rows, f, indent=2)
  print(table(rows), flush=True)
  print(f"Wrote {path}", flush=True)
  return rows


def _int8_row(config, workdir, task, strategy, state, step, evaluator_cls) -> dict:
  out = write_int8(config, workdir, task, strategy.to_host_layout(state), step)
  qtask = quantize.QuantTask(task)
  qinit = functools.partial(steps.init_state, task=qtask, tx=quantize.frozen_optimizer())
  ckpt = checkpoint.Checkpointer(out, config.checkpoint, read_only=True)
  restored = ckpt.restore_latest(
      strategy.abstract(qinit, jax.random.key(config.seed)), None, config
  )
  ckpt.close()
  qstate = strategy.place(restored[0])  # read back: the row measures what is on disk
  return measure("int8", evaluator_cls, qtask, strategy, config, qstate, out, step)
