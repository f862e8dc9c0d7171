"""Config loading, presets, overrides and their one-line errors (no jax work here)."""

import pytest

from bigmodel_jax import config as config_lib
from bigmodel_jax.errors import UsageError


def test_default_and_presets_load():
  default = config_lib.load_experiment("textgen")
  tiny = config_lib.load_experiment("textgen:tiny")
  big = config_lib.load_experiment("textgen:gpt2_124m")
  assert default.model.num_layers > tiny.model.num_layers
  assert big.model.block_size == 1024 and big.model.dtype == "bfloat16"
  assert big.model.param_dtype == "float32"
  assert config_lib.load_experiment("textgen:1b").parallel.strategy == "mesh"
  assert tiny.experiment == "textgen:tiny"


def test_overrides_parse_by_field_type():
  c = config_lib.load_experiment("textgen:tiny")
  config_lib.apply_overrides(
      c,
      {
          "model.num_layers": "3",
          "train.learning_rate": "1e-4",
          "model.use_bias": "false",
          "sample.prompt": "class ",
          "train.batch_size": "16",
          "init_reinit": "wte,ln_f",
      },
  )
  assert c.model.num_layers == 3 and isinstance(c.model.num_layers, int)
  assert c.train.learning_rate == pytest.approx(1e-4)
  assert c.model.use_bias is False
  assert c.sample.prompt == "class "
  assert c.init_reinit == ("wte", "ln_f")
  # An int given for a float field stays a float.
  config_lib.apply_overrides(c, {"train.weight_decay": "0"})
  assert isinstance(c.train.weight_decay, float)


@pytest.mark.parametrize(
    "spec, overrides, message",
    [
        ("textgenn", {}, "unknown experiment 'textgenn' (did you mean textgen, imagegen?)"),
        ("textgen:tinyy", {}, "unknown preset 'tinyy' (did you mean tiny?)"),
        ("textgen", {"model.num_layer": "2"}, "did you mean model.num_layers"),
        ("textgen", {"model.num_layers": "two"}, "expected int"),
        ("textgen", {"model.use_bias": "maybe"}, "expected bool"),
        ("textgen", {"model": "2"}, "'model' is a group"),
        ("textgen", {"train.steps": "-5"}, "train.steps=-5 must be a positive integer"),
        ("textgen", {"train.batch_size": "0"}, "train.batch_size=0 must be a positive integer"),
        ("textgen", {"train.grad_accum_steps": "3"}, "must be divisible by train.grad_accum_steps"),
        ("textgen", {"parallel.strategy": "ddp"}, "valid: pmap, mesh"),
        ("textgen", {"train.learning_rate": "-1"}, "train.learning_rate=-1.0 must be >= 0"),
        ("textgen", {"train.profile_steps": "5,3"}, "train.profile_steps=(5, 3) must be"),
        ("textgen", {"train.profile_steps": "0,3"}, "1 <= first <= last"),
    ],
)
def test_bad_configs_are_one_line_usage_errors(spec, overrides, message):
  with pytest.raises(UsageError) as e:
    config_lib.from_command_line(spec, overrides)
  assert message in str(e.value)
  assert "\n" not in str(e.value)


def test_a_preset_typo_fails_like_a_command_line_typo():
  c = config_lib.load_experiment("textgen")
  with pytest.raises(UsageError, match="unknown config key 'model.num_layerz'"):
    config_lib.apply_preset(c, "bad", {"bad": {"model.num_layerz": 1}})


def test_command_line_overrides_come_back_from_the_parser():
  rest, overrides = config_lib.split_overrides(
      ["run.py", "--config.model.num_layers=3", "--mode=eval", "--config.sample.prompt", "def "]
  )
  assert rest == ["run.py", "--mode=eval"]
  assert overrides == {"model.num_layers": "3", "sample.prompt": "def "}
  with pytest.raises(UsageError, match="needs a value"):
    config_lib.split_overrides(["run.py", "--config.model.num_layers"])


def test_a_validated_config_is_locked_against_new_fields():
  c = config_lib.from_command_line("textgen:tiny", {"model.num_layers": "3"})
  assert c.model.num_layers == 3
  c.model.num_layers = 4  # existing fields still change
  with pytest.raises(AttributeError):
    c.model.num_layerz = 4  # a misspelt field in code fails instead of being added
