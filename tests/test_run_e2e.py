"""run.py as a user runs it: train, resume, sample, eval, and one-line errors."""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(*args, check=True):
  result = subprocess.run(
      [sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  if check and result.returncode:
    raise AssertionError(f"run.py {args} exited {result.returncode}:\n{result.stderr[-3000:]}")
  return result


def test_train_resume_sample_eval(tmp_path):
  workdir, data = str(tmp_path / "run"), f"--config.data.tfds_data_dir={tmp_path / 'tfds'}"
  first = run_py("--experiment=textgen:tiny", f"--workdir={workdir}", data)
  assert "step 40/40" in first.stderr and "--- sample 1/1" in first.stdout
  for name in ("checkpoints", "metrics.jsonl", "tensorboard", "config.json", "tokenizer"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(f"{workdir}/tensorboard"))

  more = run_py(
      "--experiment=textgen:tiny", f"--workdir={workdir}", data, "--config.train.steps=50"
  )
  assert "Resumed from" in more.stderr and "step 50/50" in more.stderr
  assert "step 10/" not in more.stderr

  sample = run_py(
      "--experiment=textgen:tiny",
      f"--workdir={workdir}",
      data,
      "--mode=sample",
      "--config.sample.prompt=class ",
      "--config.sample.num_samples=2",
      "--config.sample.top_k=5",
      "--config.sample.seed=3",
  )
  assert sample.stdout.count("--- sample") == 2 and "\nclass " in sample.stdout

  evaluated = run_py("--experiment=textgen:tiny", f"--workdir={workdir}", data, "--mode=eval")
  assert "step 50:" in evaluated.stdout and "perplexity" in evaluated.stdout


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r.get("split") == "train"}


def test_bf16_matmuls_train_and_resume_in_float32(tmp_path):
  """model.matmul_dtype (autocast's recipe) through run.py; it is a runtime key, so the
  checkpoint resumes without it."""
  workdir, data = str(tmp_path / "run"), f"--config.data.tfds_data_dir={tmp_path / 'tfds'}"
  args = ["--experiment=textgen:tiny", f"--workdir={workdir}", data]
  first = run_py(*args, "--config.model.matmul_dtype=bfloat16", "--config.train.steps=20")
  assert "step 20/20" in first.stderr
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["matmul_dtype"] == "bfloat16"
  more = run_py(*args, "--config.train.steps=30")
  assert "Resumed from" in more.stderr and "step 30/30" in more.stderr
  loss = _losses(workdir)
  assert loss[30] < loss[20] < loss[10] < math.log(256), loss  # below uniform over bytes


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--experiment=textgen:tiny", "--config.model.num_layer=2"],
            "did you mean model.num_layers",
        ),
        (["--experiment=textgen:tiny", "--config.train.steps=abc"], "expected int"),
        (["--experiment=textgen:huge"], "unknown preset 'huge'"),
        (["--experiment=textgen:tiny", "--mode=deploy"], "--mode='deploy' is not valid"),
        (
            [
                "--experiment=textgen:tiny",
                "--config.model.embed_dim=30",
                "--config.model.num_heads=4",
            ],
            "model.embed_dim=30 must be divisible by model.num_heads=4",
        ),
        (["--experiment=textgen:tiny", "--config.train.batch_size=12"], "does not divide over 8"),
        (["--experiment=textgen:tiny", "--config.parallel.fsdp=2"], "need parallel.strategy=mesh"),
    ],
)
def test_usage_errors_are_one_line_exit_2_and_write_nothing(tmp_path, args, message):
  workdir = tmp_path / "run"
  result = run_py(*args, f"--workdir={workdir}", check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert message in result.stderr and "Traceback" not in result.stderr
  assert not workdir.exists()


def test_the_benchmark_takes_run_py_config_overrides(tmp_path):
  """One override syntax for every command: --config.a.b=v, checked the same way."""
  bench = [
      sys.executable,
      "-m",
      "bigmodel_jax.bench",
      "--presets=tiny",
      "--sections=train",
      "--repeats=1",
      "--chunk=2",
      f"--out={tmp_path / 'bench.json'}",
  ]
  bad = subprocess.run(
      [*bench, "--config.model.num_layer=1"], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert bad.returncode == 2 and "did you mean model.num_layers" in bad.stderr.splitlines()[-1]
  subprocess.run(
      [*bench, "--config.model.num_layers=1"],
      cwd=REPO,
      check=True,
      timeout=300,
      capture_output=True,
  )
  with open(tmp_path / "bench.json") as f:
    (result,) = json.load(f)["train"]
  from bigmodel_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from bigmodel_jax import tasks

  config = config_lib.from_command_line("textgen:tiny", {"model.num_layers": "1"})
  expected = tasks.get("lm")(config).flops_per_unit
  assert result["model_flops_per_s"] / result["tokens_per_s"] == pytest.approx(expected)
