"""Every experiment's presets build and are documented; the big ones have the right size without
allocating it."""

import importlib
import os
import re

import jax
import numpy as np
import pytest

from bigmodel_jax import config as config_lib
from bigmodel_jax import parallel, tasks
from bigmodel_jax.models import gpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _param_count(config) -> int:
  vocab = 256 if config.data.tokenizer == "byte" else config.data.vocab_size
  model = gpt.make(config.model, vocab)
  tokens = jax.ShapeDtypeStruct((1, config.model.block_size), np.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))
  return gpt.param_count(shapes["params"])


@pytest.mark.parametrize("experiment", config_lib.available_experiments())
def test_every_preset_builds_and_validates(experiment):
  """Every preset's config validates and its task builds its model, shapes only (so forks and
  presets cannot rot silently). Presets that name real datasets build on the offline default's
  data source, since those datasets are not prepared here."""
  module = __import__(f"experiments.{experiment}", fromlist=["PRESETS"])
  offline_data = config_lib.load_experiment(experiment).data
  for preset in [None, *module.PRESETS]:
    config = config_lib.load_experiment(experiment + (f":{preset}" if preset else ""))
    config_lib.validate(config)
    if str(config.data.get("source", "")).startswith("tfds:"):
      config.data = offline_data
    task = tasks.get(config.task)(config)
    shapes = jax.eval_shape(task.init_variables, jax.random.key(0))
    assert gpt.param_count(shapes["params"]) > 0, preset


def test_gpt2_124m_has_gpt2_small_parameter_count():
  config = config_lib.load_experiment("textgen:gpt2_124m")
  # 50257 rows, as GPT-2's checkpoint; tied embeddings; 12 x 768 with biases; learned positions
  # of 1024: GPT-2 small's exact count, so its Hugging Face weights load (tests/test_interop.py).
  d, layers, vocab, ctx = 768, 12, 50257, 1024
  per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 5 * d)
  assert _param_count(config) == vocab * d + ctx * d + layers * per_layer + 2 * d == 124_439_808


def test_1b_preset_is_about_a_billion_parameters_and_plans_fsdp():
  config = config_lib.load_experiment("textgen:1b")
  d, f, layers, vocab = 2048, 8192, 18, 50304
  per_layer = 2 * d + 4 * d * d + 2 * d * f  # no biases, rotary positions
  count = _param_count(config)
  assert count == vocab * d + layers * per_layer + d
  assert 0.95e9 < count < 1.1e9
  assert parallel.mesh_shape(8, config.parallel.fsdp, config.parallel.tensor) == (1, 8, 1)


def test_7b_preset_is_the_6_6b_parameters_the_docs_say():
  count = _param_count(config_lib.load_experiment("textgen:7b"))
  assert 6.55e9 < count < 6.65e9  # "6.6B" in experiments/textgen.py and README.md


@pytest.mark.parametrize("experiment", config_lib.available_experiments())
def test_every_preset_is_listed_in_its_experiments_docstring(experiment):
  module = importlib.import_module(f"experiments.{experiment}")
  listed = module.__doc__.split("\nPresets (", 1)[1]
  for preset in module.PRESETS:
    assert re.search(rf"^  {re.escape(preset)} ", listed, re.M), preset


def test_readme_lists_every_textgen_preset():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  listed = readme.split("textgen has", 1)[1].split("\n- ", 1)[0]
  module = importlib.import_module("experiments.textgen")
  for preset in module.PRESETS:
    assert f"`{preset}`" in listed, preset
