"""Inputs longer than a model reads are cut (or refused) out loud, never silently.

A person's own input (`predict.input`, `decode.input`) longer than the model reads is, by the
task's `on_long_input` setting, cut with a warning on stderr that gives both lengths (`warn`, the
default: a prediction from the first part is often what was wanted) or refused with a one-line
UsageError (`error`: for scripts where a prediction from part of the text would be wrong).
A data split is many inputs, none of them the person's: its over-long examples are counted and
logged once per split, not once per row.
"""

from absl import logging

from bigmodel_jax.errors import UsageError

POLICIES = ("warn", "error")  # valid values of predict.on_long_input / decode.on_long_input


def check_policy(key: str, value: str) -> None:
  if value not in POLICIES:
    raise UsageError(f"{key}={value!r} is not valid; valid: {', '.join(POLICIES)}")


def check_input(key: str, tokens: int, used: int, limit: str, policy_key: str, policy: str) -> None:
  """Warns (or, with policy "error", raises) when the input `key` of `tokens` tokens is longer
  than the `used` tokens the model reads; `limit` names the setting, e.g. "model.max_len=40"."""
  if tokens <= used:
    return
  if policy == "error":
    raise UsageError(
        f"{key} is {tokens} tokens long but the model reads {used} ({limit}); "
        f"shorten it, or set {policy_key}=warn to use its first {used} tokens"
    )
  logging.warning(
      "%s is %d tokens long but the model reads %d (%s): only its first %d tokens "
      "were used; %s=error refuses such input",
      key,
      tokens,
      used,
      limit,
      used,
      policy_key,
  )


def log_split(split: str, count: int, total: int, what: str, limit: str, action: str) -> None:
  """Once per split: how many of its `total` examples were longer than `limit` (and `action`)."""
  if count:
    logging.warning(
        "%s split: %d of %d %s are longer than %s and were %s",
        split,
        count,
        total,
        what,
        limit,
        action,
    )


class RowCounter:
  """Over-long rows of a batch-prediction file: counted, and with policy "error" the first one
  refused naming its file and line; `warn` logs the count once at the end."""

  def __init__(self, used: int, limit: str, policy_key: str, policy: str):
    self.used, self.limit, self.policy_key, self.policy = used, limit, policy_key, policy
    self.count = 0

  def check(self, batch, lengths) -> None:
    """`batch`: (path, records.Row) pairs; `lengths`: each row's length in tokens."""
    for (path, row), n in zip(batch, lengths):
      if n > self.used:
        self.count += 1
        if self.policy == "error":
          check_input(
              f"{path} line {row.line}", int(n), self.used, self.limit, self.policy_key, "error"
          )

  def warn(self, key: str, rows: int, what: str) -> None:
    if self.count:
      logging.warning(
          "%s: %d of %d %s are longer than the model reads (%s): cut to their first %d tokens",
          key,
          self.count,
          rows,
          what,
          self.limit,
          self.used,
      )
