"""Errors meant for people: one line, no traceback.

`UsageError` is a bad flag, key, value, path or mode (exit code 2);
`RunError` is a failure at run time that the user can act on (exit code 1).
run.py catches both and prints `error: <message>`.
"""


class UsageError(ValueError):
  """The command line or config asks for something invalid (exit code 2)."""

  exit_code = 2


class RunError(RuntimeError):
  """The run could not go on for a reason the user can fix (exit code 1)."""

  exit_code = 1
