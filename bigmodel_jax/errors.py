"""Errors meant for people: one line, no traceback.

`UsageError` is a bad flag, key, value, path or mode (exit code 2);
`RunError` is a failure at run time that the user can act on (exit code 1).
run.py catches both and prints `error: <message>`.
"""

import difflib


class UsageError(ValueError):
  """The command line or config asks for something invalid (exit code 2)."""

  exit_code = 2


class RunError(RuntimeError):
  """The run could not go on for a reason the user can fix (exit code 1)."""

  exit_code = 1


def did_you_mean(word: str, choices) -> str:
  """' (did you mean a, b?)' for the choices close to `word`, or ''."""
  close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
  return f" (did you mean {', '.join(close)}?)" if close else ""
