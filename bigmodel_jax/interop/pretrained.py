"""`config.init_from=hf:<dir>` for the language-model task: the folder's config.json decides the
architecture (config.model's fields are set from it), its safetensors become the parameters.
"""

import os

from absl import logging
import jax
import numpy as np

from bigmodel_jax import config as config_lib
from bigmodel_jax import interop
from bigmodel_jax.errors import UsageError
from bigmodel_jax.interop import folders, hf_config, weights


class Pretrained:
  """A Hugging Face folder named by config.init_from, read (config.json only) at construction."""

  def __init__(self, spec: str):
    self.folder = folders.resolve(spec, "config.init_from")
    self.hf = hf_config.read(self.folder)

  def configure(self, config) -> None:
    """Sets config.model to the checkpoint's architecture, exactly its vocabulary (no padding
    rows: they would be sampled), and data.tokenizer to the folder's unless another hf: one is
    named (a folder without tokenizer.json keeps the configured one). Rotary models keep
    config.model.block_size, capped at the checkpoint's context."""
    fields = dict(self.hf.fields, vocab_multiple=1)
    if self.hf.arch == "llama":
      fields["block_size"] = min(config.model.block_size, self.hf.max_positions)
    changed = {k: v for k, v in fields.items() if config.model[k] != v}
    if changed:
      logging.info("config.model from %s/config.json: %s", self.folder, changed)
    config_lib.set_values(config, {f"model.{k}": v for k, v in fields.items()}, "config.json")
    has_tokenizer = os.path.exists(os.path.join(self.folder, "tokenizer.json"))
    if has_tokenizer and not interop.is_hf(config.data.tokenizer):
      config.data.tokenizer = config.init_from

  def check_tokenizer(self, tokenizer) -> None:
    if tokenizer.vocab_size > self.hf.vocab_size:
      raise UsageError(
          f"the tokenizer has {tokenizer.vocab_size} tokens but {self.folder}'s embedding has "
          f"{self.hf.vocab_size} rows (config.json vocab_size): they do not belong together"
      )

  def params(self, abstract, dtype) -> dict:
    """The folder's weights as our tree, in `dtype`, checked against the model's `abstract`."""
    params = weights.load(self.folder, self.hf.arch, self.hf.fields, self.hf.vocab_size, dtype)
    want = jax.tree.map(lambda s: s.shape, abstract)
    have = jax.tree.map(lambda a: a.shape, params)
    if jax.tree.structure(want) != jax.tree.structure(have) or want != have:
      raise UsageError(
          f"{self.folder}'s weights do not fit the configured model; set no model fields "
          "that contradict its config.json"
      )
    return jax.tree.map(np.asarray, params)
