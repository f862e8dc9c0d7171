"""Models (flax linen), chosen by name: `config.model.name` -> `bigmodel_jax/models/<name>.py`.

Each model module has `make(cfg, **task_args) -> nn.Module`, where `cfg` is config.model and the
task passes what only it knows (vocabulary size, number of classes, ...).
"""

import importlib
import pkgutil

from bigmodel_jax.errors import UsageError


def names() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__))


def make(cfg, valid: tuple[str, ...] | None = None, **task_args):
  """Builds config.model; `valid` limits the names to those the task can use."""
  allowed = list(valid) if valid else names()
  if cfg.name not in allowed:
    raise UsageError(f"model.name={cfg.name!r} is not valid; valid: {', '.join(allowed)}")
  return importlib.import_module(f"{__name__}.{cfg.name}").make(cfg, **task_args)
