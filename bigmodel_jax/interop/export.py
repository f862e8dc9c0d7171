"""`--mode=export_hf`: a run's parameters -> a folder `transformers` loads with from_pretrained.

Export takes a plain parameter tree (adapters, if a run has any, are merged before it is called).
The folder is written aside and renamed into place, so an interrupted export leaves nothing.
"""

import json
import os
import shutil

import jax
import numpy as np

from bigmodel_jax.interop import hf_config, weights


def export(params, model, folder: str, tokenizer=None) -> str:
  """Writes config.json, model.safetensors and (for a Hugging Face tokenizer) its files."""
  arch = hf_config.arch_of(model)  # a UsageError before anything is written
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  tensors = weights.to_hf(params, arch, model)
  partial = folder.rstrip("/") + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  with open(os.path.join(partial, "config.json"), "w") as f:
    json.dump(hf_config.to_hf(model, arch), f, indent=2)
  weights.save(tensors, partial)
  if getattr(tokenizer, "kind", None) == "hf":
    tokenizer.export(partial)
  shutil.rmtree(folder, ignore_errors=True)
  os.replace(partial, folder)
  return folder
