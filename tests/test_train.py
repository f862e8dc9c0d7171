"""The trainer on textgen:tiny: learning, exact resume, strategy agreement, accumulation, modes."""

import gzip
import json
import math

import jax
import numpy as np
import pytest

from bigmodel_jax import trainer
from bigmodel_jax.errors import RunError, UsageError
from tests.helpers import read_metrics, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """One 40-step tiny run shared by the tests that only read from it."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = tiny_config(data_dir)
  trainer.run(config, workdir)
  return config, workdir


def test_loss_falls(trained):
  _, workdir = trained
  train, val = read_metrics(workdir), read_metrics(workdir, "validation")
  assert train[40]["loss"] < train[10]["loss"] - 0.8
  assert val[40]["loss"] < val[20]["loss"] < math.log(256)
  for key in ("loss", "perplexity", "lr", "grad_norm", "param_norm", "tokens_per_s", "mfu"):
    assert np.isfinite(train[40][key]), key
  assert train[40]["perplexity"] == pytest.approx(math.exp(train[40]["loss"]), rel=1e-5)


def test_interrupted_run_resumes_to_the_same_metrics(trained, data_dir, tmp_path):
  config, workdir = trained
  resumed = str(tmp_path / "resumed")
  trainer.run(tiny_config(data_dir), resumed, stop_after=20)
  assert max(read_metrics(resumed)) == 20
  trainer.run(tiny_config(data_dir), resumed)
  for split in ("train", "validation"):
    a, b = read_metrics(workdir, split), read_metrics(resumed, split)
    for step in (30, 40) if split == "train" else (40,):
      assert a[step]["loss"] == b[step]["loss"], (split, step)


def test_eval_mode_reports_loss_and_perplexity(trained):
  config, workdir = trained
  values = trainer.run(config, workdir, "eval")
  assert values["loss"] == pytest.approx(read_metrics(workdir, "validation")[40]["loss"], rel=1e-5)
  assert values["perplexity"] == pytest.approx(math.exp(values["loss"]), rel=1e-5)


def test_sample_mode_continues_the_prompt(trained, capsys):
  config, workdir = trained
  config.sample.num_samples, config.sample.prompt = 2, "import "
  texts = trainer.run(config, workdir, "sample")
  assert len(texts) == 2 and all(t.startswith("import ") for t in texts)
  assert "--- sample 2/2" in capsys.readouterr().out


def test_modes_that_need_a_checkpoint_say_so(data_dir, tmp_path):
  with pytest.raises(RunError, match="no tokenizer in"):
    trainer.run(tiny_config(data_dir), str(tmp_path / "empty"), "sample")
  with pytest.raises(UsageError, match="valid: train, eval, plan, compress, sample"):
    trainer.run(tiny_config(data_dir), str(tmp_path / "empty"), "deploy")
  assert not (tmp_path / "empty").exists()


def _losses(data_dir, workdir, steps=6, **overrides):
  config = tiny_config(
      data_dir, train__steps=steps, train__log_every=1, train__eval_every=100, **overrides
  )
  trainer.run(config, workdir)
  return np.array([r["loss"] for _, r in sorted(read_metrics(workdir).items())])


def test_pmap_mesh_and_one_device_agree(data_dir, tmp_path):
  assert jax.device_count() == 8
  single = _losses(data_dir, str(tmp_path / "one"), parallel__num_devices=1)
  pmap8 = _losses(data_dir, str(tmp_path / "pmap"))
  mesh = _losses(
      data_dir,
      str(tmp_path / "mesh"),
      parallel__strategy="mesh",
      parallel__fsdp=2,
      parallel__tensor=2,
  )
  assert len(single) == 6 and single[-1] < single[0]
  np.testing.assert_allclose(pmap8, single, rtol=2e-5)
  np.testing.assert_allclose(mesh, single, rtol=2e-5)


def test_bfloat16_weights_train_on_pmap_and_mesh(data_dir, tmp_path):
  """bf16 parameters and compute: the step compiles (the NaN guard's branches agree on dtypes,
  the flat all-reduce takes mixed trees) and the loss falls on both strategies alike."""
  bf16 = dict(model__dtype="bfloat16", model__param_dtype="bfloat16", train__learning_rate=1e-2)
  pmap = _losses(data_dir, str(tmp_path / "pmap"), **bf16)
  mesh = _losses(data_dir, str(tmp_path / "mesh"), parallel__strategy="mesh", **bf16)
  assert np.isfinite(pmap).all() and pmap[-1] < pmap[0]
  np.testing.assert_allclose(mesh, pmap, rtol=2e-2)


def test_gradient_accumulation_matches_one_large_batch(data_dir, tmp_path):
  whole = _losses(data_dir, str(tmp_path / "whole"), steps=4, parallel__num_devices=1)
  accum = _losses(
      data_dir, str(tmp_path / "accum"), steps=4, parallel__num_devices=1, train__grad_accum_steps=4
  )
  np.testing.assert_allclose(accum, whole, rtol=2e-5)


def test_init_from_starts_from_another_runs_parameters(trained, data_dir, tmp_path):
  _, source = trained
  fresh = _losses(data_dir, str(tmp_path / "fresh"), steps=1)
  tuned = _losses(data_dir, str(tmp_path / "tuned"), steps=1, init_from=source)
  reinit = _losses(
      data_dir, str(tmp_path / "reinit"), steps=1, init_from=source, init_reinit=(".*",)
  )
  assert tuned[0] < fresh[0] - 0.8
  assert reinit[0] == pytest.approx(fresh[0], rel=1e-6)


def test_profile_steps_write_a_trace_of_those_steps(data_dir, tmp_path):
  workdir = tmp_path / "run"
  trainer.run(tiny_config(data_dir, train__steps=6, train__profile_steps=(3, 4)), str(workdir))
  runs = list((workdir / "tensorboard" / "plugins" / "profile").iterdir())
  assert len(runs) == 1  # one trace, of steps 3-4 only
  files = [f.name for f in runs[0].iterdir()]
  assert any(f.endswith(".xplane.pb") for f in files), files
  (perfetto,) = [f for f in runs[0].iterdir() if f.name.endswith(".trace.json.gz")]
  with gzip.open(perfetto) as f:
    events = json.load(f)["traceEvents"]
  steps = {e.get("args", {}).get("step_num") for e in events if e.get("name") == "train"}
  assert steps == {"3", "4"}, steps
