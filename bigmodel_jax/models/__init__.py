"""Models (flax linen), chosen by name: `config.model.name` -> `bigmodel_jax/models/<name>.py`.

Each model module has `default_config() -> ConfigDict`, config.model's fields for that model with
their defaults (the one place they are written; fields several models share come from
`layers.shared_config`), and `make(cfg, **task_args) -> nn.Module`, where `cfg` is config.model
and the task passes what only it knows (vocabulary size, number of classes, ...).
"""

import importlib
import pkgutil

import ml_collections

from bigmodel_jax.errors import UsageError

# Shared building blocks, not models to choose by name.
_NOT_MODELS = ("attention", "layers", "kv_cache")


def names() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_MODELS)


def _module(name: str, allowed: list[str]):
  if name not in allowed:
    raise UsageError(f"model.name={name!r} is not valid; valid: {', '.join(allowed)}")
  return importlib.import_module(f"{__name__}.{name}")


def default_config(*model_names: str) -> ml_collections.ConfigDict:
  """config.model for an experiment: name = the first of `model_names`, and the union of the
  named models' fields with their defaults, so that `model.name` can switch between them (where
  models share a field, the first model's default wins)."""
  c = ml_collections.ConfigDict()
  # Which model: bigmodel_jax/models/<name>.py; one of the names the experiment built this from.
  c.name = model_names[0]
  for name in model_names:
    for key, value in _module(name, names()).default_config().items():
      if key not in c:
        c[key] = value
  # LoRA adapters for any model (bigmodel_jax/lora.py): rank 0 -> none.
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0  # rank of each adapter pair; > 0 turns LoRA on (only the adapters train)
  c.lora.alpha = 16.0  # the merged update is a @ b * alpha / rank
  # Kernels to adapt: a regex over '/'-joined parameter paths (re.search); the default takes
  # every kernel of attention (GPT's query/key/value/out) and MLP (fc/proj) layers.
  c.lora.targets = r"(attn|mlp)/\w+/kernel$"
  return c


def make(cfg, valid: tuple[str, ...] | None = None, **task_args):
  """Builds config.model; `valid` limits the names to those the task can use."""
  return _module(cfg.name, list(valid) if valid else names()).make(cfg, **task_args)
