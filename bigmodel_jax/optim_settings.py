"""The names config.train may give its optimizer and schedule, and the checks on their settings.

These live apart from optim.py, which builds what they name, because optim.py imports optax (and
so jax, ~1 s) and config.validate runs these checks: config errors come back without jax (run.py).
tests/test_optim.py keeps these names and optim.py's registries in step.
"""

import re

from bigmodel_jax.errors import UsageError, did_you_mean

OPTIMIZERS = ("adamw", "sgd", "adafactor")
SCHEDULES = ("cosine", "linear", "constant", "wsd")


def validate(t) -> None:
  """`t` is config.train; raises a one-line UsageError naming the first bad key."""
  for key, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
    if t[key] not in valid:
      raise UsageError(
          f"train.{key}={t[key]!r} is not valid{did_you_mean(t[key], valid)}; "
          f"valid: {', '.join(valid)}"
      )
  if not 0 <= t.momentum < 1:
    raise UsageError(f"train.momentum={t.momentum} must be in [0, 1)")
  if not 0 <= t.decay_fraction <= 1:
    raise UsageError(f"train.decay_fraction={t.decay_fraction} must be in [0, 1]")
  try:
    re.compile(t.no_decay)
  except re.error as e:
    raise UsageError(f"train.no_decay={t.no_decay!r} is not a valid regex: {e}") from None
