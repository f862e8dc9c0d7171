"""kill -9 a training run at random moments, resume it, and check it ends bit-for-bit the same.

  python -m bigmodel_jax.tools.kill_resume --points=10 [--experiment=textgen:tiny]

First an uninterrupted reference run; then, for each point, a fresh run that is killed with
SIGKILL after a random delay (anywhere from start-up through compilation, steps and checkpoint
saves), then resumed with the same command until it finishes. The final parameters and optimizer
state must equal the reference's exactly. Prints one line per point and a summary; exit code 1 if
any point differs.
"""

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_POINTS = flags.DEFINE_integer("points", 10, "How many runs to kill.")
_EXPERIMENT = flags.DEFINE_string("experiment", "textgen:tiny", "Experiment to train.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the kill times.")
_OVERRIDES = flags.DEFINE_multi_string(
    "override",
    ["train.steps=300", "checkpoint.every_steps=20", "train.eval_every=100", "compile_cache_dir="],
    "KEY=VALUE config overrides for every run; the defaults make a run long enough, with saves "
    "often enough, that the kills land in training and in saves, not only in start-up, and turn "
    "the compile cache off so that every run takes about as long as the reference.",
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train(workdir: str, experiment: str, overrides: list[str], kill_after: float | None = None):
  """Runs run.py; with kill_after, SIGKILLs it after that many seconds. -> (returncode, seconds)."""
  cmd = [
      sys.executable,
      "run.py",
      f"--experiment={experiment}",
      f"--workdir={workdir}",
      "--config.sample.num_samples=0",
      *overrides,
  ]
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    _, err = proc.communicate(timeout=kill_after)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return None, time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"run.py failed ({proc.returncode}): {err.decode()[-2000:]}")
  return proc.returncode, time.perf_counter() - start


def state_digest(workdir: str) -> tuple[int, str]:
  """(latest step, sha256 over every array of its saved train state)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  state = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "state"))
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return step, h.hexdigest()


def main(argv):
  del argv
  rng = random.Random(_SEED.value)
  root = tempfile.mkdtemp(prefix="kill_resume_")
  overrides = [f"--config.{o}" for o in _OVERRIDES.value]
  reference = os.path.join(root, "reference")
  _, duration = train(reference, _EXPERIMENT.value, overrides)
  ref_step, ref_digest = state_digest(reference)
  print(
      f"reference: {duration:.1f} s to step {ref_step}, state sha256 {ref_digest[:16]}", flush=True
  )
  failures = 0
  for point in range(_POINTS.value):
    workdir = os.path.join(root, f"point{point}")
    kill_after = rng.uniform(0.3, 0.95) * duration
    code, _ = train(workdir, _EXPERIMENT.value, overrides, kill_after=kill_after)
    killed_at = "finished before the kill" if code == 0 else f"killed at {kill_after:.1f} s"
    saved = (
        sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
        if os.path.isdir(os.path.join(workdir, "checkpoints"))
        else []
    )
    train(workdir, _EXPERIMENT.value, overrides)
    step, digest = state_digest(workdir)
    same = (step, digest) == (ref_step, ref_digest)
    failures += not same
    print(
        f"point {point}: {killed_at}, checkpoints then {saved or 'none'}; resumed to step "
        f"{step}: {'identical' if same else 'DIFFERENT'}",
        flush=True,
    )
  print(f"{_POINTS.value - failures}/{_POINTS.value} resumed runs identical to the reference")
  shutil.rmtree(root, ignore_errors=True)
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  app.run(main)
