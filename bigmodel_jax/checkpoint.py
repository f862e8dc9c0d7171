"""Checkpoints through orbax: train state, data-iterator position and config, saved together.

Layout under the workdir:
  checkpoints/<step>/{state,data,config}   the last `checkpoint.keep` saves (async)
  best_checkpoint/<step>/...               with checkpoint.best_metric: the best eval so far
"""

import os
import re

from absl import logging
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from bigmodel_jax.errors import RunError


class Checkpointer:
  """Saves and restores {state, data, config} items with an orbax CheckpointManager."""

  def __init__(self, workdir: str, cfg, *, best: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, "best_checkpoint" if best else "checkpoints"))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1 if best else cfg.keep,
        enable_async_checkpointing=cfg.async_save,
        create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator, config: dict, *, force: bool = False) -> bool:
    """Starts an (async) save; orbax writes to a temporary folder and renames it when committed,
    so an interrupted save never becomes the latest checkpoint, and older ones are deleted only
    after a newer one has committed."""
    return self._manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config)))

  def restore(self, step: int, abstract_state, data_iterator):
    """-> (state, config dict) for `step`; the data iterator is moved to its saved position."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator),
        config=ocp.args.JsonRestore()))
    return restored.state, restored.config

  def restore_state(self, step: int, abstract_state):
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored.state

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def params_from(path: str, abstract_params, fresh_params, reinit: tuple[str, ...]):
  """Parameters for fine-tuning from another run (`config.init_from`).

  `path` is that run's workdir or its checkpoints/ folder; its latest step is used. Parameters whose
  path ('/'-joined) matches a regex in `reinit` keep their values from `fresh_params`.
  """
  directory = os.path.join(path, "checkpoints") if os.path.isdir(
      os.path.join(path, "checkpoints")) else path
  if not os.path.isdir(directory):
    raise RunError(f"config.init_from={path!r}: no such directory")
  manager = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state",),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  if step is None:
    raise RunError(f"config.init_from={path!r}: no checkpoint found in {directory}")
  logging.info("Initialising parameters from %s step %d", directory, step)
  target = {"params": abstract_params}
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, partial_restore=True,
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target))))
  except (ValueError, KeyError) as e:
    raise RunError(f"config.init_from={path!r}: its parameters do not fit this model "
                   f"({str(e).splitlines()[0][:300]})") from None
  params = restored.state["params"]
  patterns = [re.compile(p) for p in reinit]

  def pick(path_, old, new):
    name = "/".join(str(getattr(k, "key", k)) for k in path_)
    return new if any(p.search(name) for p in patterns) else old

  return jax.tree_util.tree_map_with_path(pick, params, fresh_params)
