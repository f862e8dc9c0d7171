"""Tasks, chosen by name (`config.task`): each owns its loss, metrics, batch layout and showcase.

A task is the class `Task` in `bigmodel_jax/tasks/<name>.py`, a subclass of `base.Task`, whose
docstrings are the contract the trainer relies on.
"""

import importlib
import inspect
import pkgutil

from bigmodel_jax.errors import UsageError
from bigmodel_jax.tasks import base

_NOT_TASKS = ("base",)


def names() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_TASKS)


def get(name: str) -> type[base.Task]:
  if name not in names():
    raise UsageError(f"task={name!r} is not valid; valid: {', '.join(names())}")
  cls = importlib.import_module(f"{__name__}.{name}").Task
  if not issubclass(cls, base.Task) or inspect.isabstract(cls):
    missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ()))) or "subclassing base.Task"
    raise TypeError(f"tasks/{name}.py: Task does not meet the task contract (missing: {missing})")
  return cls
