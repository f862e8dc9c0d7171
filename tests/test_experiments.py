"""Every experiment's presets build; the big ones have the right size without allocating it."""

import jax
import numpy as np
import pytest

from bigmodel_jax import config as config_lib
from bigmodel_jax import parallel, tasks
from bigmodel_jax.models import gpt


def _param_count(config) -> int:
  vocab = 256 if config.data.tokenizer == "byte" else config.data.vocab_size
  model = gpt.make(config.model, vocab)
  tokens = jax.ShapeDtypeStruct((1, config.model.block_size), np.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))
  return gpt.param_count(shapes["params"])


@pytest.mark.parametrize("experiment", config_lib.available_experiments())
def test_every_preset_builds_and_validates(experiment):
  module = __import__(f"experiments.{experiment}", fromlist=["PRESETS"])
  for preset in [None, *module.PRESETS]:
    spec = experiment + (f":{preset}" if preset else "")
    config = config_lib.load_experiment(spec)
    config_lib.validate(config)
    assert config.task in tasks.names()
    # A dummy-sized copy of every preset builds its model (forks can't rot silently).
    config_lib.set_values(config, {"model.num_layers": 1, "model.block_size": 16}, "test")
    assert _param_count(config) > 0


def test_gpt2_124m_has_gpt2_small_parameter_count():
  config = config_lib.load_experiment("textgen:gpt2_124m")
  # 50257 padded to 50304; tied embeddings; 12 x 768 with biases; learned positions of 1024.
  d, layers, vocab, ctx = 768, 12, 50304, 1024
  per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 5 * d)
  assert _param_count(config) == vocab * d + ctx * d + layers * per_layer + 2 * d == 124_475_904


def test_1b_preset_is_about_a_billion_parameters_and_plans_fsdp():
  config = config_lib.load_experiment("textgen:1b")
  d, f, layers, vocab = 2048, 8192, 18, 50304
  per_layer = 2 * d + 4 * d * d + 2 * d * f  # no biases, rotary positions
  count = _param_count(config)
  assert count == vocab * d + layers * per_layer + d
  assert 0.95e9 < count < 1.1e9
  assert parallel.mesh_shape(8, config.parallel.fsdp, config.parallel.tensor) == (1, 8, 1)
