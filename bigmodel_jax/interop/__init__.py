"""Hugging Face folders in and out: `config.init_from=hf:<dir>`, `data.tokenizer=hf:<dir>` and
`--mode=export_hf`. Read and written with `safetensors`, `tokenizers` and numpy only; torch and
transformers are test and benchmark references, never imported at run time.

  folders.py    "hf:<dir>" -> a local folder (hf:<org>/<name> downloads through huggingface_hub)
  hf_config.py  config.json <-> config.model's fields (GPT-2 and Llama architectures)
  weights.py    safetensors (single file or sharded) <-> our parameter tree
  tokenizer.py  tokenizer.json through the `tokenizers` library, saved with the run
  pretrained.py init_from=hf:<dir>: config.model from config.json, the weights as our tree
  lm.py         what tasks/lm.py calls (the modules above imported only when a config asks)
  export.py     a trained run -> a folder transformers' from_pretrained loads
  bench.py      generation speed against transformers' generate (python -m ...interop.bench)
"""

PREFIX = "hf:"


def is_hf(spec: str) -> bool:
  """Whether a config value (init_from, data.tokenizer) names a Hugging Face folder."""
  return isinstance(spec, str) and spec.startswith(PREFIX)
