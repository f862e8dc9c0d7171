"""Every experiment keeps the task contract: train, eval and plan work on its tiny preset, and
its evaluations report exactly the metrics its task declares (so checkpoint.best_metric is checked
against the truth before training). A new experiment file is picked up here automatically."""

import contextlib
import io
import os

import pytest

from bigmodel_jax import config as config_lib
from bigmodel_jax import tasks, trainer
from bigmodel_jax.errors import RunError
from bigmodel_jax.tasks import base
from tests.helpers import read_metrics, tiny_config

EXPERIMENTS = config_lib.available_experiments()


def _quietly(fn, *args):
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(*args)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_every_task_subclasses_the_contract():
  for name in tasks.names():
    cls = tasks.get(name)
    assert issubclass(cls, base.Task) and not cls.__abstractmethods__, name
    assert set(cls.final_metric_names).isdisjoint(cls.eval_metrics), name


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_train_eval_and_plan_on_the_tiny_preset(experiment, data_dir, tmp_path):
  config = tiny_config(
      data_dir,
      f"{experiment}:tiny",
      train__steps=2,
      train__eval_every=1,
      train__eval_batches=1,
      train__log_every=1,
      checkpoint__every_steps=2,
  )
  task = tasks.get(config.task)
  workdir = str(tmp_path / "run")
  _quietly(trainer.run, config, workdir)
  evals = read_metrics(workdir, "validation")
  assert set(evals[1]) - {"step", "split"} == set(task.eval_metrics)
  final = set(task.eval_metrics) | set(task.final_metric_names)
  assert set(evals[2]) - {"step", "split"} == final
  values = _quietly(trainer.run, config, workdir, "eval")
  assert set(values) == final
  for name in task.eval_metrics:
    assert values[name] == pytest.approx(evals[2][name], rel=1e-4, abs=1e-6), name
  _damaged_side_files_are_one_line_errors(config, workdir)
  report = _quietly(trainer.run, config, str(tmp_path / "never_written"), "plan")
  assert report["parameters"] > 0 and report["flops_per_step_per_device"] > 0
  assert not (tmp_path / "never_written").exists()


def _damaged_side_files_are_one_line_errors(config, workdir):
  """Every JSON file a run reads back (tokenizer metadata, dataset facts, preprocessing, the
  checkpoint's config), when damaged, stops eval with a RunError naming it, not a traceback."""
  read_back = [
      os.path.join(root, name)
      for root, _, names in os.walk(workdir)
      for name in names
      if name.endswith(".json")
      and name != "config.json"
      and "tensorboard" not in root
      and f"{os.sep}checkpoints{os.sep}" not in root
  ]
  read_back.append(os.path.join(workdir, "checkpoints", "2", "config", "metadata"))
  for path in read_back:
    with open(path, "rb") as f:
      good = f.read()
    with open(path, "wb") as f:
      f.write(good[: len(good) // 2])  # a torn write
    try:
      with pytest.raises(RunError, match="is damaged") as e:
        _quietly(trainer.run, config, workdir, "eval")
      assert "\n" not in str(e.value)
    finally:
      with open(path, "wb") as f:
        f.write(good)
