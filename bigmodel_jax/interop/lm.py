"""What the language-model task (tasks/lm.py) needs from interop, behind one small interface,
with the heavier modules imported only when a config names a Hugging Face folder."""

import os

from bigmodel_jax import interop

EXPORT_DIR = "export_hf"  # --mode=export_hf writes <workdir>/export_hf


def pretrained(config):
  """-> interop.pretrained.Pretrained for config.init_from=hf:<dir> (config.model and
  data.tokenizer set from it), else None."""
  if not interop.is_hf(config.init_from):
    return None
  from bigmodel_jax.interop import pretrained as lib  # pylint: disable=g-import-not-at-top

  p = lib.Pretrained(config.init_from)
  p.configure(config)
  return p


def tokenizer(config):
  """The tokenizer of data.tokenizer=hf:<dir>, else None."""
  if not interop.is_hf(config.data.tokenizer):
    return None
  from bigmodel_jax.interop import folders  # pylint: disable=g-import-not-at-top
  from bigmodel_jax.interop.tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top

  return HFTokenizer.from_folder(folders.resolve(config.data.tokenizer, "data.tokenizer"))


def save_tokenizer(tok, directory: str) -> None:
  """Saved aside and renamed: a stop part-way never leaves half a tokenizer."""
  import shutil  # pylint: disable=g-import-not-at-top

  partial = directory.rstrip("/") + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  tok.save(partial)
  os.replace(partial, directory)


def export(params, model, folder: str, tokenizer) -> str:
  from bigmodel_jax.interop import export as lib  # pylint: disable=g-import-not-at-top

  return lib.export(params, model, folder, tokenizer)
