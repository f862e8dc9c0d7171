"""A Hugging Face tokenizer.json through the `tokenizers` library, with the interface of
data/tokenizers.py (`vocab_size`, `encode`, `encode_many`, `decode`, `save`, `load`).

encode and decode use the library's defaults: special tokens the tokenizer adds (Llama-3's
<|begin_of_text|>) are added, and skipped when decoding. `chat_template` is the folder's
tokenizer_config.json "chat_template" string, or None.
"""

import json
import os
import shutil

import numpy as np
import tokenizers

from bigmodel_jax.errors import UsageError

TOKENIZER_FILE = "tokenizer.json"  # in a Hugging Face folder
CONFIG_FILE = "tokenizer_config.json"
SAVED_FILE = "hf_tokenizer.json"  # in a run's tokenizer/ folder, whose tokenizer.json is our meta


class HFTokenizer:
  kind = "hf"

  def __init__(self, path: str, config_path: str | None):
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 (the library raises a bare Exception on bad files)
      raise UsageError(f"{path} is not a tokenizers tokenizer.json: {str(e)[:200]}") from None
    self.path, self.config_path = path, config_path
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.chat_template = None
    if config_path:
      try:
        with open(config_path) as f:
          template = json.load(f).get("chat_template")
      except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise UsageError(f"{config_path} is not a JSON object: {e}") from None
      # Some folders hold a list of named templates; the one named "default" is the chat one.
      if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
      self.chat_template = template if isinstance(template, str) else None

  @classmethod
  def from_folder(cls, folder: str) -> "HFTokenizer":
    path = os.path.join(folder, TOKENIZER_FILE)
    if not os.path.exists(path):
      raise UsageError(f"{folder} has no {TOKENIZER_FILE} (a Hugging Face fast tokenizer)")
    config = os.path.join(folder, CONFIG_FILE)
    return cls(path, config if os.path.exists(config) else None)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text).ids, np.int32)

  def encode_many(self, texts) -> list[np.ndarray]:
    return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(list(texts))]

  def decode(self, ids) -> str:
    """Decodes ids; ids outside the vocabulary (e.g. padded embedding rows) are skipped."""
    ids = np.asarray(ids).reshape(-1)
    ids = ids[(ids >= 0) & (ids < self.vocab_size)]
    return self._tok.decode(ids.tolist())

  def save(self, directory: str) -> None:
    """Copies the tokenizer files into a run's tokenizer/ folder, next to our metadata."""
    os.makedirs(directory, exist_ok=True)
    shutil.copyfile(self.path, os.path.join(directory, SAVED_FILE))
    if self.config_path:
      shutil.copyfile(self.config_path, os.path.join(directory, CONFIG_FILE))
    with open(os.path.join(directory, "tokenizer.json"), "w") as f:
      json.dump({"kind": self.kind, "vocab_size": self.vocab_size}, f, indent=2)

  def export(self, folder: str) -> None:
    """Writes the Hugging Face files (tokenizer.json, tokenizer_config.json) into `folder`."""
    shutil.copyfile(self.path, os.path.join(folder, TOKENIZER_FILE))
    if self.config_path:
      shutil.copyfile(self.config_path, os.path.join(folder, CONFIG_FILE))

  @classmethod
  def load(cls, directory: str, meta: dict) -> "HFTokenizer":
    del meta
    config = os.path.join(directory, CONFIG_FILE)
    return cls(os.path.join(directory, SAVED_FILE), config if os.path.exists(config) else None)

  def matches(self, vocab_size: int, model_type: str) -> bool:
    del model_type
    return self.vocab_size == vocab_size
