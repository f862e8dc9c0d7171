"""Surviving kill -9, SIGTERM, damaged checkpoints, mismatched configs and NaNs."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import trainer
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tools import kill_resume
from tests.helpers import read_metrics, tiny_config

REPO = kill_resume.REPO


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_kill_9_at_several_points_resumes_bit_for_bit(data_dir, tmp_path):
  # No compile cache: every run compiles alike, so the kill times mean the same in each run.
  overrides = [
      f"--config.data.tfds_data_dir={data_dir}",
      "--config.checkpoint.every_steps=5",
      "--config.compile_cache_dir=",
  ]
  reference = str(tmp_path / "reference")
  _, duration = kill_resume.train(reference, "textgen:tiny", overrides)
  expected = kill_resume.state_digest(reference)
  assert expected[0] == 40
  codes = []
  for fraction in (0.45, 0.8):  # mid-compile/early steps, and late (saves every 5 steps)
    workdir = str(tmp_path / f"killed{fraction}")
    code, _ = kill_resume.train(workdir, "textgen:tiny", overrides, kill_after=fraction * duration)
    codes.append(code)
    kill_resume.train(workdir, "textgen:tiny", overrides)
    assert kill_resume.state_digest(workdir) == expected, (fraction, code)
  assert None in codes  # at least one run was really killed


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_dir, tmp_path):
  workdir = tmp_path / "run"
  cmd = [
      sys.executable,
      "run.py",
      "--experiment=textgen:tiny",
      f"--workdir={workdir}",
      f"--config.data.tfds_data_dir={data_dir}",
      "--config.train.steps=100000",
      "--config.train.log_every=5",
      "--config.checkpoint.every_steps=100000",
      "--config.train.eval_every=100000",
  ]
  proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:
    if "step 10/" in line:
      break
  sent = time.perf_counter()
  proc.send_signal(signal.SIGTERM)
  rest = proc.stderr.read()
  proc.wait(timeout=60)
  assert proc.returncode == 0, rest[-2000:]
  assert time.perf_counter() - sent < 30
  assert "Stopped at step" in rest and "on SIGTERM" in rest
  steps = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert len(steps) == 1 and steps[0] >= 10
  assert max(read_metrics(str(workdir))) == steps[0]


@pytest.fixture
def trained(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  trainer.run(tiny_config(data_dir), workdir)  # checkpoints at 20 and 40
  return workdir


def _one_file(directory):
  for root, _, names in os.walk(directory):
    for name in names:
      if "/d/" in os.path.join(root, name) or root.endswith("/d"):
        return os.path.join(root, name)
  raise AssertionError(f"no data file under {directory}")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "bytes, "),
        ("flip_bytes", "does not match its checksum"),
        ("bad_manifest", "manifest.bigmodel.json is unreadable"),
        ("delete", "is missing"),
        ("half_written", "never committed"),
    ],
)
def test_damaged_latest_checkpoint_stops_or_falls_back(data_dir, trained, damage, message):
  latest = os.path.join(trained, "checkpoints", "40")
  if damage == "truncate":
    os.truncate(_one_file(os.path.join(latest, "state")), 10)
  elif damage.startswith("flip_bytes"):  # same size, other bytes: only a checksum can tell
    named = damage.partition(":")[2]
    path = os.path.join(latest, named) if named else _one_file(os.path.join(latest, "state"))
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(f.name) // 2)
      byte = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte[0] ^ 0xFF]))
  elif damage == "bad_manifest":
    with open(os.path.join(latest, "manifest.bigmodel.json"), "w") as f:
      f.write('{"state/_METADATA": ')
  elif damage == "delete":
    os.remove(os.path.join(latest, "data", "process_0-of-1.json"))
  else:  # a folder copied or written without orbax's commit markers
    for root, _, names in os.walk(latest):
      for name in names:
        if name in ("commit_success.txt", "manifest.bigmodel.json"):
          os.remove(os.path.join(root, name))
  config = tiny_config(data_dir, train__steps=50)
  with pytest.raises(RunError, match=f"checkpoints/40 is damaged: .*{message}"):
    trainer.run(config, trained)
  with pytest.raises(RunError, match="is damaged"):
    trainer.run(config, trained, "eval")
  config.checkpoint.on_corrupt = "fallback"
  trainer.run(config, trained)
  assert read_metrics(trained)[50]["loss"] > 0
  assert os.path.isdir(os.path.join(trained, "damaged_checkpoints", "40"))


def test_all_checkpoints_damaged_never_restarts_silently(data_dir, trained):
  for step in ("20", "40"):
    os.remove(os.path.join(trained, "checkpoints", step, "data", "process_0-of-1.json"))
  config = tiny_config(data_dir, checkpoint__on_corrupt="fallback")
  with pytest.raises(RunError, match="no valid checkpoint .* refusing to start over"):
    trainer.run(config, trained)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model__num_layers": 3}, "model.num_layers: checkpoint 2, now 3"),
        ({"model__embed_dim": 64}, "model.embed_dim: checkpoint 32, now 64"),
        ({"model__positions": "rotary"}, "model.positions: checkpoint 'learned', now 'rotary'"),
        (
            {"experiment": "forked_textgen:tiny"},
            "experiment: checkpoint 'textgen', now 'forked_textgen'",
        ),
    ],
)
def test_checkpoint_from_other_settings_names_the_mismatch(data_dir, trained, overrides, message):
  config = tiny_config(data_dir, **{k: v for k, v in overrides.items() if k != "experiment"})
  config.experiment = overrides.get("experiment", config.experiment)
  with pytest.raises(RunError, match=f"does not fit this run: .*{message}"):
    trainer.run(config, trained)


def test_other_tokenizer_is_refused(data_dir, trained):
  config = tiny_config(data_dir, data__tokenizer="sentencepiece", data__vocab_size=300)
  with pytest.raises(RunError, match="data.tokenizer: checkpoint 'byte', now 'sentencepiece'"):
    trainer.run(config, trained)


def test_nan_stops_at_its_step_without_saving(data_dir, tmp_path):
  workdir = str(tmp_path / "nan")
  config = tiny_config(data_dir, checkpoint__every_steps=4, train__log_every=10)
  with pytest.raises(RunError, match="gradients not finite .* at step 6; stopped without saving"):
    trainer.run(config, workdir, poison_steps=(6,))
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [4]


def test_nan_skip_rejects_updates_and_stops_after_too_many(data_dir, tmp_path):
  workdir = str(tmp_path / "skip")
  config = tiny_config(data_dir, train__on_nan="skip", train__log_every=5)
  trainer.run(config, workdir, poison_steps=(6, 7))
  train = read_metrics(workdir)
  assert train[5]["skipped_steps"] == 0 and train[10]["skipped_steps"] == 2
  assert train[40]["loss"] < train[5]["loss"]
  config = tiny_config(data_dir, train__on_nan="skip", train__max_nan_skips=2)
  with pytest.raises(RunError, match="not finite for 3 steps in a row"):
    trainer.run(config, str(tmp_path / "many"), poison_steps=(3, 4, 5))


def test_best_checkpoint_survives_a_resume_that_gets_worse(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  best = dict(checkpoint__best_metric="loss", train__eval_every=10, train__eval_batches=1)
  trainer.run(tiny_config(data_dir, train__steps=20, **best), workdir)
  before = read_metrics(workdir, "validation")
  assert before[20]["loss"] < before[10]["loss"]
  assert os.listdir(os.path.join(workdir, "best_checkpoint")) == ["20"]
  # Resumed with a learning rate that wrecks the model: step 30's eval is worse than step 20's,
  # so the best checkpoint must stay step 20 (a best value kept in memory would be gone).
  trainer.run(tiny_config(data_dir, train__steps=30, train__learning_rate=1.0, **best), workdir)
  assert read_metrics(workdir, "validation")[30]["loss"] > before[20]["loss"]
  assert os.listdir(os.path.join(workdir, "best_checkpoint")) == ["20"]


def test_best_metric_that_no_evaluation_reports_fails_before_training(data_dir, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(UsageError, match=r"best_metric='bleu'.*valid: loss, accuracy, perplexity"):
    trainer.run(tiny_config(data_dir, checkpoint__best_metric="bleu"), str(workdir))
  assert not workdir.exists()


def test_one_writer_per_workdir_and_no_stale_lock_after_a_crash(data_dir, tmp_path):
  workdir = tmp_path / "run"
  trainer.run(tiny_config(data_dir, train__steps=2), str(workdir))
  before = (workdir / "metrics.jsonl").read_text()
  # Another process holds the workdir (and is then killed -9, as a crashed run would be).
  holder = subprocess.Popen(
      [
          sys.executable,
          "-c",
          "import sys, time; from bigmodel_jax import safety\n"
          f"with safety.WorkdirLock({str(workdir)!r}):\n"
          "  print('locked', flush=True); time.sleep(60)",
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunError, match=f"in use by another run \\(pid {holder.pid}\\)"):
      trainer.run(tiny_config(data_dir, train__steps=4), str(workdir))
    assert (workdir / "metrics.jsonl").read_text() == before  # the holder's files untouched
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  trainer.run(tiny_config(data_dir, train__steps=4), str(workdir))  # the OS released the lock
  assert max(read_metrics(str(workdir))) == 4


def test_init_from_a_damaged_checkpoint_is_refused(data_dir, trained, tmp_path):
  with open(_one_file(os.path.join(trained, "checkpoints", "40", "state")), "r+b") as f:
    f.write(bytes(16))  # same size, other bytes
  workdir = tmp_path / "finetune"
  with pytest.raises(RunError, match="init_from=.* checkpoint 40 is damaged: .*checksum"):
    trainer.run(tiny_config(data_dir, init_from=trained), str(workdir))
  assert not workdir.exists()


def test_an_update_that_is_not_finite_is_never_applied(data_dir, tmp_path):
  # 1e39 is a finite setting but not a finite float32: finite gradients, infinite update.
  workdir = str(tmp_path / "run")
  with pytest.raises(RunError, match="update not finite .* at step 1; stopped without saving"):
    trainer.run(tiny_config(data_dir, train__learning_rate=1e39, train__warmup_steps=0), workdir)
  assert not os.path.exists(workdir)


def test_non_finite_parameters_are_never_saved_or_evaluated(data_dir, trained, monkeypatch):
  from bigmodel_jax import safety, steps  # pylint: disable=g-import-not-at-top

  init = steps.init_state

  def poisoned_init(rng, **kwargs):  # what a bad init_from or a corrupted restore would give
    state = init(rng, **kwargs)
    return state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))

  monkeypatch.setattr(steps, "init_state", poisoned_init)
  workdir = os.path.join(os.path.dirname(trained), "poisoned")
  with pytest.raises(RunError, match="parameters are not finite .* at step 1; not saving"):
    trainer.run(
        tiny_config(
            data_dir,
            train__steps=2,
            train__on_nan="skip",
            checkpoint__every_steps=1,
            train__eval_every=2,
        ),
        workdir,
    )
  assert not os.path.exists(workdir)
  with pytest.raises(RunError, match="evaluation gave non-finite loss, perplexity"):
    trainer.run(tiny_config(data_dir, train__steps=2, train__on_nan="skip"), workdir)
  with pytest.raises(RunError, match="not finite"):
    safety.check_finite_params({"w": np.array([1.0, np.inf], np.float32)}, 7)


def test_a_stop_during_setup_stops_at_once_and_leaves_nothing(data_dir, tmp_path, monkeypatch):
  from bigmodel_jax.tasks import lm  # pylint: disable=g-import-not-at-top

  setup = lm.Task.setup

  def setup_then_preempted(self, workdir, create):
    setup(self, workdir, create)  # (the tokenizer is written: the stop must not keep it)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # a long build: the signal must cut it short
    raise AssertionError("the signal did not stop the setup")

  monkeypatch.setattr(lm.Task, "setup", setup_then_preempted)
  workdir = tmp_path / "run"
  start = time.perf_counter()
  with pytest.raises(RunError, match="stopped by SIGTERM before training started"):
    trainer.run(tiny_config(data_dir), str(workdir))
  assert time.perf_counter() - start < 4
  assert not workdir.exists()


def test_a_stop_during_evaluation_saves_without_a_second_evaluation(
    data_dir, tmp_path, monkeypatch
):
  from bigmodel_jax.tasks import lm  # pylint: disable=g-import-not-at-top

  eval_batches, calls = lm.Task.eval_batches, []

  def preempted_while_evaluating(self, batch_size):
    calls.append(1)
    for i, batch in enumerate(eval_batches(self, batch_size)):
      if i == 1 and len(calls) == 1:  # the first evaluation, part-way
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(lm.Task, "eval_batches", preempted_while_evaluating)
  workdir = str(tmp_path / "run")
  trainer.run(tiny_config(data_dir, train__eval_every=20, train__eval_batches=4), workdir)
  assert len(calls) == 1  # stopped inside the step-20 evaluation, with no second one
  assert read_metrics(workdir, "validation") == {}  # a cut-short evaluation is not reported
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["20"]


@pytest.fixture
def tiny_disk(tmp_path):
  """A 900 KiB tmpfs: room for the tiny model's first checkpoints, not for all of them."""
  mount = tmp_path / "disk"
  mount.mkdir()
  result = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mount)],
      capture_output=True,
      text=True,
  )
  if result.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("disk_claims_space", [False, True])
def test_a_full_disk_stops_at_the_failed_save_and_keeps_the_last_good_one(
    data_dir, tiny_disk, monkeypatch, disk_claims_space
):
  import shutil  # pylint: disable=g-import-not-at-top

  if disk_claims_space:  # skip our free-space check: orbax's async write itself hits ENOSPC
    usage = shutil.disk_usage(tiny_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=2**40))
  workdir = str(tiny_disk / "run")
  with pytest.raises(RunError, match="no space left") as e:
    trainer.run(tiny_config(data_dir, checkpoint__every_steps=5), workdir)
  assert "newest good checkpoint is step" in str(e.value) and "\n" not in str(e.value)
  good = int(str(e.value).rsplit("step ", 1)[1].rstrip("."))
  assert good >= 5 and max(read_metrics(workdir)) <= good + 10  # stopped at (or next to) it
  monkeypatch.undo()
  config = tiny_config(data_dir, train__steps=good, checkpoint__every_steps=5)
  assert trainer.run(config, workdir, "eval")["loss"] > 0  # the kept one restores


def test_init_from_a_run_of_another_task_is_refused(data_dir, tmp_path):
  from bigmodel_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  tabular = str(tmp_path / "tabular")
  trainer.run(config_lib.from_command_line("tabular:tiny", {"train.steps": "2"}), tabular)
  workdir = tmp_path / "textgen"
  with pytest.raises(RunError, match=r"init_from=.* is a run of another task \('tabular:tiny'"):
    trainer.run(tiny_config(data_dir, init_from=tabular), str(workdir))
  assert not workdir.exists()


def test_flipped_bytes_in_each_kind_of_checkpoint_file_are_caught(data_dir, trained):
  latest = os.path.join(trained, "checkpoints", "40")
  config = tiny_config(data_dir)
  for name in ("state/_METADATA", "data/process_0-of-1.json", "config/metadata"):
    path = os.path.join(latest, name)
    with open(path, "rb") as f:
      good = f.read()
    with open(path, "wb") as f:  # same size, one byte changed: only a checksum can tell
      f.write(good[:-1] + bytes([good[-1] ^ 0xFF]))
    with pytest.raises(RunError, match=f"{name} does not match its checksum"):
      trainer.run(config, trained, "eval")
    with open(path, "wb") as f:
      f.write(good)
