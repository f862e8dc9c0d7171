"""Resolving `hf:<dir>` to a local Hugging Face model folder."""

import os
import re

from bigmodel_jax import interop
from bigmodel_jax.errors import UsageError


def resolve(spec: str, key: str) -> str:
  """`hf:<dir>` (or `hf:<org>/<name>` on a machine with internet) -> a local folder.

  `key` names the config field for the error message. A local path wins over a hub name.
  """
  path = os.path.expanduser(spec[len(interop.PREFIX) :])
  if not path:
    raise UsageError(f"{key}={spec!r} names no folder; use {key}=hf:<dir>")
  if os.path.isdir(path):
    return path
  if re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not os.path.exists(os.path.dirname(path)):
    return _download(path, key)
  raise UsageError(f"{key}={spec!r}: no such folder {path!r}")


def _download(name: str, key: str) -> str:  # untested here: no machine in CI reaches the hub
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top (optional, only for downloads)
  except ImportError:
    raise UsageError(
        f"{key}=hf:{name} is not a local folder, and downloading it needs huggingface_hub "
        "(pip install huggingface-hub); or give a local folder"
    ) from None
  try:
    return huggingface_hub.snapshot_download(
        name, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]
    )
  except Exception as e:  # noqa: BLE001 (network, auth, missing repo: one line either way)
    raise UsageError(f"{key}=hf:{name}: download failed: {str(e).splitlines()[0]}") from None
