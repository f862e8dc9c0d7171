"""kill -9 of a pruning run right after a mid-ramp checkpoint: the resumed run ends with masks and
parameters bit-identical to an uninterrupted run's (compress/prune.py keeps the masks in the
optimizer state, so the checkpoint holds them)."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from bigmodel_jax.tools import kill_resume

# textgen:tiny trains 40 steps; its kernels ramp to 75% sparsity between steps 2 and 30, and a
# checkpoint every 10 steps puts the kill at step 10, a third of the way up the ramp.
OVERRIDES = [
    "--config.prune.target=0.75",
    "--config.prune.start_step=2",
    "--config.prune.end_step=30",
    "--config.checkpoint.every_steps=10",
    "--config.train.eval_every=40",
    "--config.compile_cache_dir=",
]


def _kill_after_checkpoint(workdir: str, step: int) -> int:
  """Starts the run; SIGKILLs it as soon as checkpoint `step` has committed (orbax renames the
  folder into place only then). -> the return code (-9 when it was killed)."""
  cmd = [
      sys.executable, "run.py", "--experiment=textgen:tiny", f"--workdir={workdir}",
      "--config.sample.num_samples=0", *OVERRIDES,
  ]  # fmt: skip
  proc = subprocess.Popen(
      cmd, cwd=kill_resume.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  committed = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.monotonic() + 300
  while proc.poll() is None and not os.path.isdir(committed) and time.monotonic() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  return proc.wait()


def _saved(workdir: str, step: int) -> tuple[dict, dict]:
  """({path: array} of the masks, of everything) in checkpoint `step`'s train state."""
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
  state = ocp.StandardCheckpointer().restore(path)
  leaves = {
      jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state)
  }
  masks = {k: v for k, v in leaves.items() if "masks" in k and v.ndim >= 2}
  return masks, leaves


def test_kill_9_right_after_a_mid_ramp_checkpoint_resumes_to_identical_masks_and_params(tmp_path):
  reference = str(tmp_path / "reference")
  kill_resume.train(reference, "textgen:tiny", OVERRIDES)
  killed = str(tmp_path / "killed")
  assert _kill_after_checkpoint(killed, 10) == -signal.SIGKILL
  saved = sorted(int(d) for d in os.listdir(os.path.join(killed, "checkpoints")) if d.isdigit())
  assert saved and max(saved) < 40  # killed before the end: the resume has work to do
  masks, _ = _saved(killed, 10)
  sparsity = np.mean([1 - m.mean() for m in masks.values()])
  assert masks and 0.1 < sparsity < 0.6  # mid-ramp: 0.75 * (1 - (1 - 8/28)^3) = 0.48 (pmap rows)
  kill_resume.train(killed, "textgen:tiny", OVERRIDES)  # resumes from its latest checkpoint

  ours, everything = _saved(killed, 40)
  theirs, reference_everything = _saved(reference, 40)
  assert ours.keys() == theirs.keys() and len(ours) >= 8  # every kernel of the 2 blocks
  for name in ours:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert abs(1 - ours[name].mean() - 0.75) < 0.01, name  # at the target after end_step
  params = [k for k in everything if k.startswith("['params']")]
  assert params and everything.keys() == reference_everything.keys()
  for name in everything:  # params, optimizer moments, step: bit for bit
    np.testing.assert_array_equal(everything[name], reference_everything[name], err_msg=name)
