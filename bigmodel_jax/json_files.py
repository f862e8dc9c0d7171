"""Reading the small JSON files a run keeps beside its checkpoints (dataset facts, preprocessing,
tokenizer metadata, the saved config), with one-line errors when one is damaged."""

import json
from typing import Any

from bigmodel_jax.errors import RunError


def read_json(path: str, what: str, expect: type = dict) -> Any:
  """The JSON object in `path`; a file that is not valid JSON of type `expect` is a RunError
  naming the file and `what` it holds. A missing file raises FileNotFoundError (callers say what
  to do about that)."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
    value = None
  if not isinstance(value, expect):
    raise RunError(
        f"{path} is damaged: it is not the JSON {what} this code writes. Restore it "
        "from a copy, or start again in a fresh workdir"
    )
  return value
