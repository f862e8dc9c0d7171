"""What keeps a long run from losing work: workdir checks, preemption signals, the NaN guard."""

import fcntl
import json
import os
import shutil
import signal
import tempfile

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import RunError, UsageError


def check_workdir(workdir: str, writing: bool = False) -> None:
  """A usable --workdir: a directory, or a path we can create; probed by writing, not by mode bits
  (root passes os.access everywhere, and read-only mounts don't show in mode bits). A run that
  writes (`writing`) also refuses a non-empty folder that is not one of our workdirs, so a user's
  own files are never overwritten."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UsageError(f"--workdir={workdir} is a file; it must be a directory (or not exist yet)")
  if writing and os.path.isdir(workdir) and not is_run_folder(workdir):
    found = sorted(os.listdir(workdir))
    raise UsageError(
        f"--workdir={workdir} holds files that are not a bigmodel_jax run "
        f"({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}); use an empty "
        "or new folder so nothing of yours is overwritten"
    )
  parent = os.path.abspath(workdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UsageError(f"--workdir={workdir}: {parent} is a file, so the workdir cannot be created")
  try:
    with tempfile.TemporaryFile(dir=parent):
      pass
  except OSError as e:
    raise UsageError(f"--workdir={workdir} is not writable ({parent}: {e.strerror})") from None


def is_run_folder(path: str) -> bool:
  """An empty folder, or one a run of ours wrote: its lock file, its checkpoints, or the
  config.json a run writes (an experiment and a task)."""
  names = set(os.listdir(path))
  if not names or names & {WorkdirLock.FILE, "checkpoints"}:
    return True
  try:
    with open(os.path.join(path, "config.json")) as f:
      saved = json.load(f)
    return isinstance(saved, dict) and {"experiment", "task"} <= set(saved)
  except (OSError, ValueError):
    return False


class WorkdirLock:
  """One writer per workdir: an exclusive OS advisory lock on <workdir>/.lock, held for the run.

  The OS drops the lock when the process exits in any way (kill -9 included), so a crashed run
  never leaves a stale lock; the file itself stays, holding the last writer's pid for the message.
  A second writer fails at once with a one-line RunError naming the holder's pid.
  """

  FILE = ".lock"

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, self.FILE)
    self._fd = None

  def __enter__(self):
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise RunError(
          f"workdir {os.path.dirname(self.path)} is in use by another run (pid "
          f"{holder}); wait for it to finish, or use another --workdir"
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc):
    if self._fd is not None:
      os.close(self._fd)  # closing releases the lock
      self._fd = None
    return False


class RemoveIfFailed:
  """Removes a workdir this run created if the run fails before its first checkpoint, so a bad
  input leaves nothing behind; a workdir that existed before is never touched."""

  def __init__(self, workdir: str, has_checkpoint):
    self.workdir, self.has_checkpoint = workdir, has_checkpoint
    self.created = not os.path.exists(workdir)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None and self.created and not self.has_checkpoint():
      shutil.rmtree(self.workdir, ignore_errors=True)
    return False


class Stopped(RunError):
  """A stop signal arrived before training started: there is nothing to save."""


class StopOnSignal:
  """SIGTERM (preemption) or Ctrl-C: finish the current step, checkpoint, and exit cleanly.

  Installed before a run writes anything. Until `training()` is called (tokenizer training,
  building the data, restoring, the first batch) a signal stops the run at once by raising
  `Stopped`, so nothing half-built is kept and nobody waits minutes. A second signal while stopping
  aborts at once (exit 130): nothing is written, and the last committed checkpoint stays the
  latest.
  """

  def __init__(self):
    self.requested = None
    self._setting_up = True
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. some test runners)
        pass

  def training(self) -> None:
    """From now on a signal finishes the current step and saves; raises if one came already."""
    self._setting_up = False
    if self.requested:
      raise Stopped(f"stopped by {self.requested} before training started; nothing was saved")

  def _handle(self, signum, frame):
    del frame
    if self.requested:
      os._exit(130)
    self.requested = signal.Signals(signum).name
    if self._setting_up:
      self.training()  # raises Stopped
    logging.warning("%s received: stopping after this step and saving a checkpoint", self.requested)

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def check_finite_params(params, step: int) -> None:
  """Refuses to let a checkpoint hold NaN or Inf parameters (one reduction on the devices)."""
  if not bool(_all_finite(params)):
    raise RunError(
        f"parameters are not finite (NaN or Inf) at step {step}; not saving it. The "
        "last saved checkpoint is the newest good one"
    )


class NanGuard:
  """Host side of the NaN guard. The train step already refuses non-finite updates (the state is
  never poisoned); here the per-step `finite` flags are read, lazily, before anything is logged or
  saved, so the error names the exact step and metric without a sync every step."""

  def __init__(self, on_nan: str, max_skips_in_a_row: int):
    self.on_nan, self.max_in_a_row = on_nan, max_skips_in_a_row
    self.skipped_total, self.in_a_row = 0, 0
    self._pending = []

  def add(self, step: int, flags) -> None:
    self._pending.append((step, flags))

  def check(self) -> None:
    """Raises RunError per train.on_nan; call before logging, evaluating or saving."""
    for step, flags in self._pending:
      flags = {k: bool(np.asarray(v).reshape(-1)[0]) for k, v in flags.items()}
      bad = [k for k, ok in flags.items() if not ok]
      if not bad:
        self.in_a_row = 0
        continue
      what = " and ".join(bad)
      if self.on_nan == "stop":
        self._pending = []
        raise RunError(
            f"{what} not finite (NaN or Inf) at step {step}; stopped without saving "
            "(train.on_nan=stop; train.on_nan=skip rejects such updates instead)"
        )
      self.skipped_total += 1
      self.in_a_row += 1
      logging.warning(
          "step %d: %s not finite; update skipped (%d in a row)", step, what, self.in_a_row
      )
      if self.in_a_row > self.max_in_a_row:
        self._pending = []
        raise RunError(
            f"{what} not finite for {self.in_a_row} steps in a row (up to step {step});"
            f" stopping (train.max_nan_skips={self.max_in_a_row})"
        )
    self._pending = []
