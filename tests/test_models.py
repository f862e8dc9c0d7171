"""Model config defaults are written once: in each model's `default_config` (shared fields in
`layers.shared_config`); experiments and presets only change values, never add or drop keys."""

import importlib

import pytest

from bigmodel_jax import config as config_lib
from bigmodel_jax import models
from bigmodel_jax.errors import UsageError

MODEL_NAMES = models.names()


def _specs(experiment):
  module = importlib.import_module(f"experiments.{experiment}")
  return module, [experiment] + [f"{experiment}:{p}" for p in module.PRESETS]


@pytest.mark.parametrize("experiment", config_lib.available_experiments())
def test_every_preset_has_exactly_its_models_default_keys(experiment):
  module, specs = _specs(experiment)
  expected = set(models.default_config(*module.MODELS))
  for spec in specs:
    config = config_lib.load_experiment(spec)
    assert config.model.name in module.MODELS, spec
    assert set(config.model) == expected, (
        f"{spec}: stray {sorted(set(config.model) - expected)}, "
        f"missing {sorted(expected - set(config.model))}"
    )
    # The model the preset runs declares every field its make reads (the rest are the others').
    own = models.default_config(config.model.name)
    assert set(own) <= set(config.model), spec


def test_a_field_shared_by_models_has_one_type():
  """Where two models declare a field (sentiment and imagecls switch models over one config),
  it is the same kind of value, so a value set for one model is valid for the other."""
  seen = {}
  for name in MODEL_NAMES:
    for key, value in models.default_config(name).items():
      kind = (type(value), type(value[0]) if isinstance(value, tuple) and value else None)
      first = seen.setdefault(key, (name, kind))
      if first[1][1] is None or kind[1] is None:  # an empty tuple's items can be of any type
        first, kind = (first[0], first[1][:1]), kind[:1]
      assert first[1] == kind, f"model.{key}: {first[0]} {first[1]}, {name} {kind}"


def test_default_config_is_the_union_with_the_first_model_named():
  both = models.default_config("cnn", "resnet")
  cnn, resnet = models.default_config("cnn"), models.default_config("resnet")
  assert both.name == "cnn" and set(both) == set(cnn) | set(resnet)
  assert both.widths == cnn.widths == (32, 64) != resnet.widths  # the first model's default
  assert models.default_config("resnet", "cnn").widths == (16, 32, 64)
  with pytest.raises(UsageError, match="model.name='bert' is not valid"):
    models.default_config("bert")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_make_reads_every_field_without_fallbacks(name):
  """A config without any one of the model's fields fails in make: make keeps no second, hidden
  default, and default_config declares no field that nothing reads (rnn's max_len is read by the
  classify_text task, which truncates texts to it; every model's lora group is read by lora.py,
  which adapts any model's parameters)."""
  task_args = {
      "gpt": dict(vocab_size=40),
      "seq2seq": dict(src_vocab_size=40, tgt_vocab_size=40, share_embeddings=True),
      "mlp": dict(num_outputs=1),
      "speech_encoder": dict(vocab_size=40),
      "mf": dict(num_users=5, num_items=7),
      "two_tower": dict(num_users=5, num_items=7),
  }
  args = task_args.get(
      name,
      dict(vocab_size=40, num_classes=3)
      if name in ("text_encoder", "rnn")
      else dict(num_classes=3),
  )
  cfg = models.default_config(name)
  models.make(cfg, **args)  # the defaults build
  for key in sorted(set(cfg) - {"lora"} - ({"max_len"} if name == "rnn" else set())):
    partial = models.default_config(name)
    del partial[key]
    with pytest.raises((AttributeError, KeyError)):
      models.make(partial, **args)
