"""Checkpoints through orbax: train state, data-iterator position and config, saved together.

Layout under the workdir:
  checkpoints/<step>/{state,data,config}   the last `checkpoint.keep` saves (async)
  best_checkpoint/<step>/...               with checkpoint.best_metric: the best eval so far,
                                           chosen by orbax from the metrics saved with each
                                           step, so the choice survives a resume
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time

from absl import logging
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from bigmodel_jax import encoder_transfer, json_files
from bigmodel_jax import steps as steps_lib
from bigmodel_jax.errors import RunError

DIRECTORY = "checkpoints"
MANIFEST = "manifest.bigmodel.json"
ITEMS = ("state", "data", "config")
# Model settings that change how a model runs, not the parameters a checkpoint holds.
RUNTIME_MODEL_KEYS = ("dropout", "dtype", "matmul_dtype", "attention_impl", "remat", "kv_cache")


def best_mode(metric: str) -> str:
  """ "min" for metrics where lower is better (losses, perplexity, error rates), else "max"."""
  lower = metric.endswith("loss") or metric in ("perplexity",) or "error" in metric
  return "min" if lower else "max"


def has_steps(directory: str) -> bool:
  return latest_step_number(directory) is not None


def latest_step_number(directory: str) -> int | None:
  """The highest step folder in a checkpoints/ directory (a listing; nothing is read or checked)."""
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
  return max(steps, default=None)


class Checkpointer:
  """Saves and restores {state, data, config} items with an orbax CheckpointManager.

  Saves are async. orbax writes each into a temporary folder and renames it once committed, so an
  interrupted save never becomes the latest checkpoint, and it deletes old checkpoints only after a
  newer one has committed. Once a save has committed we add a manifest of its files, their sizes
  and BLAKE2b digests, so a later restore (train, eval, sample, init_from) can tell a torn or
  damaged checkpoint, even one with flipped bytes inside an array file, from a good one before
  reading it.
  """

  def __init__(self, workdir: str, cfg, *, best: bool = False, read_only: bool = False):
    self.directory = os.path.abspath(
        os.path.join(workdir, "best_checkpoint" if best else DIRECTORY)
    )
    self.on_corrupt = cfg.on_corrupt
    self._failed = False
    by_metric = {}
    if best:  # orbax keeps the one save whose metrics score best (read back from disk on resume)
      name = cfg.best_metric
      by_metric = dict(
          best_fn=lambda metrics: metrics[name],
          best_mode=best_mode(name),
          keep_checkpoints_without_metrics=False,
      )
    options = ocp.CheckpointManagerOptions(
        **by_metric,
        max_to_keep=1 if best else cfg.keep,
        enable_async_checkpointing=cfg.async_save,
        cleanup_tmp_directories=not read_only,  # leftovers of saves killed half-way
        read_only=read_only,
        create=not read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(
      self,
      step: int,
      state,
      data_iterator,
      config: dict,
      *,
      force: bool = False,
      metrics: dict[str, float] | None = None,
  ) -> bool:
    """Starts an async save; `metrics` (evaluation values) rank saves of a best checkpoint.

    Refuses to start one that cannot fit on the disk, and turns a failed earlier async save into
    a one-line RunError: the newest committed checkpoint stays the latest.
    """
    state = _saved(state)
    need = sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(state))
    free = shutil.disk_usage(self.directory).free
    if need > free:
      raise RunError(
          f"no space left for checkpoint {step} in {self.directory}: it needs about "
          f"{need / 2**20:,.1f} MiB and the disk has {free / 2**20:,.1f} MiB free. "
          f"{self._last_good()}"
      )
    with self._reporting_failures(step):
      saved = self._manager.save(
          step,
          force=force,
          metrics=metrics,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=grain.checkpoint.CheckpointSave(data_iterator),
              config=ocp.args.JsonSave(config),
          ),
      )
      self._write_manifests(exclude=step)  # orbax has waited for the earlier saves to commit
    return saved

  @contextlib.contextmanager
  def _reporting_failures(self, step: int):
    """An async save that failed (a full disk, a lost mount) surfaces in the next orbax call."""
    try:
      yield
    except (OSError, ValueError) as e:
      if self._failed:
        return  # already reported; this is the same failure again (e.g. on close)
      self._failed = True
      message = " ".join(str(e).split())
      reason = (
          "no space left on the device"
          if "No space left" in message or (getattr(e, "errno", None) == errno.ENOSPC)
          else message[:300]
      )
      raise RunError(
          f"a checkpoint save in {self.directory} failed (at or before step {step}): "
          f"{reason}. {self._last_good()}"
      ) from None

  def _last_good(self) -> str:
    steps = [
        s for s in self._manager.all_steps() if os.path.isdir(os.path.join(self.directory, str(s)))
    ]
    return (
        f"The newest good checkpoint is step {max(steps)}."
        if steps
        else "No checkpoint has been saved yet."
    )

  def restore_latest(self, abstract_state, data_iterator, config):
    """-> (state, step) from the newest valid checkpoint, or None if there is none at all.

    A damaged newest checkpoint stops the run with what is wrong, or, with
    checkpoint.on_corrupt=fallback, is skipped (loudly) for the next older one. A checkpoint
    written for another experiment, model shape or tokenizer is an error naming the differences.
    data_iterator None restores the state only (eval, sampling).
    """
    abstract_state = _saved(abstract_state)
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      path = os.path.join(self.directory, str(step))
      problem = damage(path)
      if problem is None:
        check_compatible(path, abstract_state, config)
        try:
          return self._restore(step, abstract_state, data_iterator), step
        except Exception as e:  # orbax/tensorstore raise many kinds; all mean "unreadable"
          problem = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
      if self.on_corrupt != "fallback":
        raise RunError(
            f"checkpoint {path} is damaged: {problem}. Move it away, or set "
            "--config.checkpoint.on_corrupt=fallback to restore the newest valid one"
        )
      aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints", str(step))
      if jax.process_index() == 0:
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.replace(path, aside if not os.path.exists(aside) else f"{aside}.{int(time.time())}")
      self._manager.reload()
      logging.warning(
          "Checkpoint %s is damaged (%s); moved it to %s and fell back to an older one",
          path,
          problem,
          aside,
      )
    if steps:
      raise RunError(
          f"no valid checkpoint in {self.directory} (all {len(steps)} damaged); "
          "refusing to start over in a workdir that has checkpoints"
      )
    return None

  def _restore(self, step, abstract_state, data_iterator):
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items)).state

  def _write_manifests(self, exclude: int | None = None) -> None:
    if jax.process_index() != 0:
      return
    for step in self._manager.all_steps():
      path = os.path.join(self.directory, str(step))
      if (
          step != exclude
          and os.path.isdir(path)
          and not os.path.exists(os.path.join(path, MANIFEST))
      ):
        files = {
            os.path.relpath(os.path.join(root, f), path): file_fingerprint(os.path.join(root, f))
            for root, _, names in os.walk(path)
            for f in names
        }
        with open(os.path.join(path, MANIFEST + ".tmp"), "w") as f:
          json.dump(files, f)
        os.replace(os.path.join(path, MANIFEST + ".tmp"), os.path.join(path, MANIFEST))

  def close(self) -> None:
    with self._reporting_failures(step=self._manager.latest_step() or 0):
      self._manager.wait_until_finished()
      self._write_manifests()
      self._manager.close()


def _saved(state):
  """What a checkpoint holds of a train state: a steps.FrozenState's frozen arrays (a
  distillation teacher) are left out; each run restores them from their own workdir."""
  return state.saved() if isinstance(state, steps_lib.FrozenState) else state


def file_fingerprint(path: str) -> dict:
  """Size and BLAKE2b digest of a file (hashing runs at ~1 GB/s: a small part of a save)."""
  with open(path, "rb") as f:
    digest = hashlib.file_digest(f, "blake2b").hexdigest()
  return {"size": os.path.getsize(path), "blake2b": digest}


def damage(path: str) -> str | None:
  """What is wrong with the checkpoint folder `path` (None if nothing we can see)."""
  manifest = os.path.join(path, MANIFEST)
  if os.path.exists(manifest):
    try:
      with open(manifest) as f:
        files = json.load(f)
      assert isinstance(files, dict)
    except (ValueError, AssertionError, UnicodeDecodeError):
      return f"{MANIFEST} is unreadable (not the JSON this code writes)"
    for name, saved in sorted(files.items()):
      full = os.path.join(path, name)
      saved = saved if isinstance(saved, dict) else {"size": saved}  # older manifests: size only
      if not os.path.exists(full):
        return f"{name} is missing"
      if os.path.getsize(full) != saved.get("size"):
        return (
            f"{name} is {os.path.getsize(full)} bytes, {saved.get('size')} when saved "
            "(truncated?)"
        )
      if "blake2b" in saved and file_fingerprint(full)["blake2b"] != saved["blake2b"]:
        return f"{name} does not match its checksum from when it was saved (bytes changed on disk)"
    return None
  # No manifest yet (the run was killed right after this save committed): check the structure.
  for item in ITEMS:
    if not os.path.exists(os.path.join(path, item, "commit_success.txt")):
      return f"item {item!r} was never committed (half-written folder)"
  for name in ("state/_METADATA", "state/manifest.ocdbt"):
    if not os.path.exists(os.path.join(path, name)):
      return f"{name} is missing"
  if not any(n.startswith("process_") for n in os.listdir(os.path.join(path, "data"))):
    return "the data-iterator state is missing"
  try:
    json_files.read_json(os.path.join(path, "config", "metadata"), "checkpoint config")
  except (OSError, RunError):
    return "config/metadata is missing or not valid JSON"
  return None


def check_compatible(path: str, abstract_state, config) -> None:
  """Raises RunError naming what differs between the checkpoint at `path` and this run."""
  saved = json_files.read_json(os.path.join(path, "config", "metadata"), "checkpoint config")
  current = config.to_dict()
  # A model field added since the checkpoint was written (e.g. imagecls's vit fields) is not
  # compared: the checkpoint's model did without it, and the shapes below still are.
  keys = ["task", "data.tokenizer", "data.vocab_size"] + [
      f"model.{k}"
      for k in current.get("model", {})
      if k not in RUNTIME_MODEL_KEYS and k in saved.get("model", {})
  ]
  diffs = [
      f"{k}: checkpoint {_get(saved, k)!r}, now {_get(current, k)!r}"
      for k in keys
      if _get(saved, k) != _get(current, k)
  ]
  base = lambda c: str(c.get("experiment", "")).split(":")[0]
  if base(saved) != base(current):
    diffs.insert(0, f"experiment: checkpoint {base(saved)!r}, now {base(current)!r}")
  if not diffs:  # same settings; still compare parameter shapes (e.g. a retrained tokenizer)
    saved_shapes = _shapes(ocp.StandardCheckpointer().metadata(os.path.join(path, "state")))
    now_shapes = _shapes(abstract_state)
    diffs = [
        f"{k}: checkpoint {saved_shapes.get(k)}, now {now_shapes.get(k)}"
        for k in sorted(set(saved_shapes) | set(now_shapes))
        if k.startswith("params") and saved_shapes.get(k) != now_shapes.get(k)
    ]
  if diffs:
    raise RunError(
        f"checkpoint {path} does not fit this run: {'; '.join(diffs[:6])}"
        f"{' ...' if len(diffs) > 6 else ''}. Use another --workdir, or the same "
        "settings"
    )


def _get(tree: dict, dotted: str):
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return list(tree) if isinstance(tree, tuple) else tree


def _shapes(tree) -> dict[str, tuple]:
  tree = getattr(getattr(tree, "item_metadata", tree), "tree", tree)
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    out[name] = tuple(getattr(leaf, "shape", ()))
  return out


def params_from(
    path: str, abstract_params, fresh_params, reinit: tuple[str, ...], task: str | tuple[str, ...]
):
  """Parameters for fine-tuning from another run (`config.init_from`) of the same `task`.

  `path` is that run's workdir or its checkpoints/ folder; its latest step is used. Parameters whose
  path ('/'-joined) matches a regex in `reinit` keep their values from `fresh_params`.
  """
  directory = (
      os.path.join(path, "checkpoints")
      if os.path.isdir(os.path.join(path, "checkpoints"))
      else path
  )
  if not os.path.isdir(directory):
    raise RunError(f"config.init_from={path!r}: no such directory")
  manager = ocp.CheckpointManager(
      os.path.abspath(directory),
      item_names=("state",),
      options=ocp.CheckpointManagerOptions(read_only=True),
  )
  step = manager.latest_step()
  if step is None:
    raise RunError(f"config.init_from={path!r}: no checkpoint found in {directory}")
  problem = damage(os.path.join(os.path.abspath(directory), str(step)))
  if problem:
    raise RunError(f"config.init_from={path!r}: its checkpoint {step} is damaged: {problem}")
  saved = json_files.read_json(
      os.path.join(os.path.abspath(directory), str(step), "config", "metadata"), "checkpoint config"
  )
  ok = (task,) if isinstance(task, str) else tuple(task)  # this run's task, then compatible ones
  source = saved.get("task")
  encoder_only = (source, ok[0]) in encoder_transfer.ENCODER_TRANSFERS  # e.g. ssl -> imagecls
  if source not in ok and not encoder_only:
    valid = [*ok, *(a for a, b in sorted(encoder_transfer.ENCODER_TRANSFERS) if b == ok[0])]
    raise RunError(
        f"config.init_from={path!r} is a run of another task ({saved.get('experiment')!r}, task "
        f"{source!r}); this run's task is {ok[0]!r}: start from a run of "
        f"{' or '.join(repr(t) for t in valid)}"
    )
  if encoder_only:
    state_dir = os.path.join(os.path.abspath(directory), str(step), "state")
    have = _shapes(ocp.StandardCheckpointer().metadata(state_dir))
    abstract_params = encoder_transfer.encoder_part(path, saved, have, abstract_params)
  logging.info("Initialising parameters from %s step %d", directory, step)
  target = {"params": abstract_params}
  try:
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target,
                partial_restore=True,
                restore_args=jax.tree.map(
                    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target
                ),
            )
        ),
    )
  except (ValueError, KeyError) as e:
    raise RunError(
        f"config.init_from={path!r}: its parameters do not fit this model "
        f"({str(e).splitlines()[0][:300]})"
    ) from None
  return keep_fresh(restored.state["params"], fresh_params, reinit)


def keep_fresh(params, fresh_params, reinit: tuple[str, ...]):
  """`fresh_params`' tree with the values of `params` (which may hold only some of them, e.g. an
  encoder), except where a '/'-joined path matches a regex in `reinit`: those stay fresh."""
  params = encoder_transfer.flat(params)
  patterns = [re.compile(p) for p in reinit]

  def pick(path_, new):
    name = "/".join(str(getattr(k, "key", k)) for k in path_)
    keep_fresh = name not in params or any(p.search(name) for p in patterns)
    return new if keep_fresh else params[name]

  return jax.tree_util.tree_map_with_path(pick, fresh_params)
