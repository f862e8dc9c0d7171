"""Safetensors weights <-> our GPT parameter tree (models/gpt.py names the paths).

Import reads one tensor at a time (`safe_open`, numpy), so peak host memory stays near the size
of the converted tree. GPT-2 stores Conv1D weights as (in, out) and fuses q, k, v into c_attn;
Llama stores torch Linear weights as (out, in), one matrix each.
"""

from collections.abc import Callable
import json
import os

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from bigmodel_jax.errors import UsageError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# Buffers some exporters save that are not parameters: GPT-2's causal masks, rotary tables.
_IGNORED = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def _files(folder: str) -> dict[str, str]:
  """{tensor name: file} from the sharded index, or from model.safetensors's own header."""
  index = os.path.join(folder, INDEX)
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise UsageError(f"{index} is not a safetensors index (weight_map): {e}") from None
    missing = sorted(
        {f for f in weight_map.values() if not os.path.exists(os.path.join(folder, f))}
    )
    if missing:
      raise UsageError(f"{index} names shard(s) missing from {folder}: {', '.join(missing[:3])}")
    return {k: os.path.join(folder, v) for k, v in weight_map.items()}
  path = os.path.join(folder, SINGLE)
  if not os.path.exists(path):
    raise UsageError(f"{folder} holds no weights: neither {SINGLE} nor {INDEX}")
  with _open(path) as f:
    return {k: path for k in f.keys()}


def _open(path: str):
  try:
    return safe_open(path, framework="np")
  except Exception as e:  # noqa: BLE001 (safetensors raises its own error types for bad headers)
    raise UsageError(f"{path} is not a readable safetensors file: {e}") from None


class Reader:
  """Tensors by name as float arrays in `dtype`, each checked against the shape it must have."""

  def __init__(self, folder: str, dtype):
    self.files, self.dtype, self.used = _files(folder), dtype, set()
    self._handles = {}
    # A Hugging Face checkpoint may or may not carry its base model's prefix ("transformer.").
    self.prefix = ""

  def get(self, name: str, shape: tuple) -> np.ndarray:
    key = self.prefix + name if self.prefix + name in self.files else name
    if key not in self.files:
      raise UsageError(f"the checkpoint has no tensor {self.prefix + name} (needed for this model)")
    path = self.files[key]
    if path not in self._handles:
      self._handles[path] = _open(path).__enter__()
    try:
      x = self._handles[path].get_tensor(key)
    except Exception as e:  # noqa: BLE001
      raise UsageError(f"{path}: tensor {key} cannot be read: {e}") from None
    if tuple(x.shape) != tuple(shape):
      raise UsageError(
          f"tensor {key} has shape {tuple(x.shape)} but config.json implies {tuple(shape)}"
      )
    self.used.add(key)
    return x.astype(self.dtype, copy=False)  # one conversion (bf16 files: via ml_dtypes)

  def check_all_used(self) -> None:
    extra = sorted(k for k in self.files if k not in self.used and not k.endswith(_IGNORED))
    if extra:
      raise UsageError(
          f"the checkpoint has {len(extra)} tensor(s) this config.json does not account for, "
          f"e.g. {', '.join(extra[:3])}"
      )


def _gpt2(read: Callable, f: dict, vocab: int) -> dict:
  """Our tree from GPT-2's tensors; `read(name, shape)`."""
  C, H, L, M = f["embed_dim"], f["num_heads"], f["num_layers"], f["mlp_dim"]
  D = C // H
  ln = lambda name: {"scale": read(f"{name}.weight", (C,)), "bias": read(f"{name}.bias", (C,))}  # noqa: E731
  p = {
      "wte": {"embedding": read("wte.weight", (vocab, C))},
      "wpe": {"embedding": read("wpe.weight", (f["block_size"], C))},
      "ln_f": ln("ln_f"),
  }
  for i in range(L):
    h = f"h.{i}"
    qkv_w = read(f"{h}.attn.c_attn.weight", (C, 3 * C)).reshape(C, 3, H, D)
    qkv_b = read(f"{h}.attn.c_attn.bias", (3 * C,)).reshape(3, H, D)
    attn = {
        name: {"kernel": qkv_w[:, j], "bias": qkv_b[j]}
        for j, name in enumerate(("query", "key", "value"))
    }
    attn["out"] = {
        "kernel": read(f"{h}.attn.c_proj.weight", (C, C)).reshape(H, D, C),
        "bias": read(f"{h}.attn.c_proj.bias", (C,)),
    }
    mlp = {
        "fc": {
            "kernel": read(f"{h}.mlp.c_fc.weight", (C, M)),
            "bias": read(f"{h}.mlp.c_fc.bias", (M,)),
        },
        "proj": {
            "kernel": read(f"{h}.mlp.c_proj.weight", (M, C)),
            "bias": read(f"{h}.mlp.c_proj.bias", (C,)),
        },
    }
    p[f"h_{i}"] = {"ln_1": ln(f"{h}.ln_1"), "attn": attn, "ln_2": ln(f"{h}.ln_2"), "mlp": mlp}
  return p


def _llama(read: Callable, f: dict, vocab: int) -> dict:
  """Our tree from Llama's tensors (torch Linear: (out, in), transposed here)."""
  C, H, L, M = f["embed_dim"], f["num_heads"], f["num_layers"], f["mlp_dim"]
  K, D, bias = f["num_kv_heads"] or H, C // H, f["use_bias"]

  def linear(name, n_in, out_shape):  # -> {"kernel": (n_in, *out_shape), "bias": out_shape}
    n_out = int(np.prod(out_shape))
    d = {"kernel": read(f"{name}.weight", (n_out, n_in)).T.reshape(n_in, *out_shape)}
    if bias:
      d["bias"] = read(f"{name}.bias", (n_out,)).reshape(out_shape)
    return d

  p = {
      "wte": {"embedding": read("model.embed_tokens.weight", (vocab, C))},
      "ln_f": {"scale": read("model.norm.weight", (C,))},
  }
  if not f["tie_embeddings"]:
    p["lm_head"] = read("lm_head.weight", (vocab, C)).T
  for i in range(L):
    h = f"model.layers.{i}"
    out = read(f"{h}.self_attn.o_proj.weight", (C, H * D)).T.reshape(H, D, C)
    attn = {
        "query": linear(f"{h}.self_attn.q_proj", C, (H, D)),
        "key": linear(f"{h}.self_attn.k_proj", C, (K, D)),
        "value": linear(f"{h}.self_attn.v_proj", C, (K, D)),
        "out": {
            "kernel": out,
            **({"bias": read(f"{h}.self_attn.o_proj.bias", (C,))} if bias else {}),
        },
    }
    mlp = {
        "fc": linear(f"{h}.mlp.up_proj", C, (M,)),
        "gate": linear(f"{h}.mlp.gate_proj", C, (M,)),
        "proj": linear(f"{h}.mlp.down_proj", M, (C,)),
    }
    p[f"h_{i}"] = {
        "ln_1": {"scale": read(f"{h}.input_layernorm.weight", (C,))},
        "attn": attn,
        "ln_2": {"scale": read(f"{h}.post_attention_layernorm.weight", (C,))},
        "mlp": mlp,
    }
  return p


def load(folder: str, arch: str, fields: dict, vocab: int, dtype) -> dict:
  """Our parameter tree (numpy, `dtype`) from the folder's safetensors."""
  reader = Reader(folder, dtype)
  if arch == "gpt2" and any(k.startswith("transformer.") for k in reader.files):
    reader.prefix = "transformer."
  params = (_gpt2 if arch == "gpt2" else _llama)(reader.get, fields, vocab)
  if arch == "gpt2" and not fields["tie_embeddings"]:
    reader.prefix = ""
    params["lm_head"] = reader.get("lm_head.weight", (vocab, fields["embed_dim"])).T
  if fields["tie_embeddings"]:
    reader.used.add("lm_head.weight")  # some exporters write the tied head out as well
  reader.check_all_used()
  return params


# --- export -----------------------------------------------------------------------------------


def to_hf(params, arch: str, model) -> dict[str, np.ndarray]:
  """{Hugging Face tensor name: float32 array} from our (host, unboxed) tree."""
  p = params
  f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))  # noqa: E731
  C, out = model.embed_dim, {}
  if arch == "gpt2":
    out["transformer.wte.weight"] = f32(p["wte"]["embedding"])
    out["transformer.wpe.weight"] = f32(p["wpe"]["embedding"])
    for k in ("scale", "bias"):
      out[f"transformer.ln_f.{_LN[k]}"] = f32(p["ln_f"][k])
    for i in range(model.num_layers):
      b, h = p[f"h_{i}"], f"transformer.h.{i}"
      a = b["attn"]
      out[f"{h}.attn.c_attn.weight"] = f32(
          np.concatenate([f32(a[n]["kernel"]).reshape(C, C) for n in ("query", "key", "value")], 1)
      )
      out[f"{h}.attn.c_attn.bias"] = f32(
          np.concatenate([f32(a[n]["bias"]).reshape(-1) for n in ("query", "key", "value")])
      )
      out[f"{h}.attn.c_proj.weight"] = f32(a["out"]["kernel"]).reshape(C, C)
      out[f"{h}.attn.c_proj.bias"] = f32(a["out"]["bias"])
      for ours, theirs in (("fc", "c_fc"), ("proj", "c_proj")):
        out[f"{h}.mlp.{theirs}.weight"] = f32(b["mlp"][ours]["kernel"])
        out[f"{h}.mlp.{theirs}.bias"] = f32(b["mlp"][ours]["bias"])
      for ln in ("ln_1", "ln_2"):
        for k in ("scale", "bias"):
          out[f"{h}.{ln}.{_LN[k]}"] = f32(b[ln][k])
  else:
    out["model.embed_tokens.weight"] = f32(p["wte"]["embedding"])
    out["model.norm.weight"] = f32(p["ln_f"]["scale"])
    for i in range(model.num_layers):
      b, h = p[f"h_{i}"], f"model.layers.{i}"
      names = {
          "self_attn.q_proj": b["attn"]["query"],
          "self_attn.k_proj": b["attn"]["key"],
          "self_attn.v_proj": b["attn"]["value"],
          "mlp.up_proj": b["mlp"]["fc"],
          "mlp.gate_proj": b["mlp"]["gate"],
      }
      for name, d in names.items():
        kernel = f32(d["kernel"])
        out[f"{h}.{name}.weight"] = f32(kernel.reshape(kernel.shape[0], -1).T)
        if "bias" in d:
          out[f"{h}.{name}.bias"] = f32(d["bias"]).reshape(-1)
      out[f"{h}.self_attn.o_proj.weight"] = f32(f32(b["attn"]["out"]["kernel"]).reshape(-1, C).T)
      out[f"{h}.mlp.down_proj.weight"] = f32(f32(b["mlp"]["proj"]["kernel"]).T)
      for name, d in (("self_attn.o_proj", b["attn"]["out"]), ("mlp.down_proj", b["mlp"]["proj"])):
        if "bias" in d:
          out[f"{h}.{name}.bias"] = f32(d["bias"])
      out[f"{h}.input_layernorm.weight"] = f32(b["ln_1"]["scale"])
      out[f"{h}.post_attention_layernorm.weight"] = f32(b["ln_2"]["scale"])
  if not model.tie_embeddings:
    out["lm_head.weight"] = f32(f32(params["lm_head"]).T)
  return out


_LN = {"scale": "weight", "bias": "bias"}


def save(tensors: dict[str, np.ndarray], folder: str) -> None:
  save_file(tensors, os.path.join(folder, SINGLE), metadata={"format": "pt"})


_ = ml_dtypes  # registers bfloat16 with numpy, so bf16 checkpoints read as arrays
