"""A Hugging Face config.json <-> config.model's fields, for GPT-2 and Llama.

`read(folder)` -> HFModel: the architecture ("gpt2" | "llama"), the vocabulary size and the
config.model fields that reproduce it; an unsupported or inconsistent config.json is a one-line
UsageError. `to_hf(model)` is the reverse, for export.
"""

import dataclasses
import json
import os
from typing import Any

from bigmodel_jax.errors import UsageError

ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",  # Llama's layout; only without a sliding window (checked)
}
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both the tanh approximation


@dataclasses.dataclass
class HFModel:
  arch: str  # "gpt2" | "llama"
  vocab_size: int
  fields: dict[str, Any]  # config.model key -> value
  max_positions: int  # the longest context the checkpoint was made for


def read(folder: str) -> HFModel:
  path = os.path.join(folder, "config.json")
  try:
    with open(path) as f:
      c = json.load(f)
  except FileNotFoundError:
    raise UsageError(f"{folder} is not a Hugging Face model folder: no config.json") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UsageError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(c, dict):
    raise UsageError(f"{path} does not hold a JSON object")
  names = c.get("architectures") or []
  arch = next((ARCHITECTURES[n] for n in names if n in ARCHITECTURES), None)
  if arch is None:
    raise UsageError(
        f"{path}: architecture {names or c.get('model_type')!r} is not supported; "
        f"supported: {', '.join(ARCHITECTURES)}"
    )
  try:
    return (_gpt2 if arch == "gpt2" else _llama)(c, path)
  except (KeyError, TypeError, ValueError) as e:
    raise UsageError(f"{path}: missing or malformed field {e}") from None


def _positive(c: dict, key: str, path: str) -> int:
  value = c[key]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise UsageError(f"{path}: {key}={value!r} must be a positive integer")
  return value


def _gpt2(c: dict, path: str) -> HFModel:
  if c.get("activation_function", "gelu_new") not in GPT2_ACTIVATIONS:
    raise UsageError(
        f"{path}: activation_function={c['activation_function']!r} is not supported; "
        f"supported: {', '.join(GPT2_ACTIVATIONS)}"
    )
  if c.get("scale_attn_by_inverse_layer_idx") or c.get("scale_attn_weights") is False:
    raise UsageError(
        f"{path}: only GPT-2's standard 1/sqrt(head size) attention scaling is supported"
    )
  width, heads = _positive(c, "n_embd", path), _positive(c, "n_head", path)
  if width % heads:
    raise UsageError(f"{path}: n_embd={width} is not divisible by n_head={heads}")
  positions = _positive(c, "n_positions", path)
  fields = dict(
      num_layers=_positive(c, "n_layer", path),
      num_heads=heads,
      num_kv_heads=0,
      embed_dim=width,
      mlp_dim=c.get("n_inner") or 4 * width,
      block_size=positions,  # the learned position table has exactly this many rows
      positions="learned",
      use_bias=True,
      norm="layernorm",
      norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
      mlp_type="gelu",
      rope_theta=10000.0,
      rope_scaling=(),
      tie_embeddings=bool(c.get("tie_word_embeddings", True)),
  )
  return HFModel("gpt2", _positive(c, "vocab_size", path), fields, positions)


def _rope(c: dict, path: str) -> tuple[float, tuple]:
  """(rope_theta, rope_scaling) from transformers 5's rope_parameters or the older top-level
  rope_theta / rope_scaling."""
  p = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
  theta = float(p.get("rope_theta", c.get("rope_theta", 10000.0)))
  kind = p.get("rope_type", p.get("type", "default"))
  if kind == "default":
    return theta, ()
  if kind == "llama3":
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return theta, tuple(float(p[k]) for k in keys)
  raise UsageError(f"{path}: rope_type={kind!r} is not supported; supported: default, llama3")


def _llama(c: dict, path: str) -> HFModel:
  if c.get("hidden_act", "silu") != "silu":
    raise UsageError(f"{path}: hidden_act={c['hidden_act']!r} is not supported; supported: silu")
  if c.get("sliding_window") is not None:
    raise UsageError(f"{path}: sliding_window={c['sliding_window']} attention is not supported")
  width, heads = _positive(c, "hidden_size", path), _positive(c, "num_attention_heads", path)
  kv = c.get("num_key_value_heads") or heads
  if width % heads or heads % kv:
    raise UsageError(
        f"{path}: hidden_size={width}, num_attention_heads={heads} and num_key_value_heads={kv} "
        "must divide evenly"
    )
  if c.get("head_dim") not in (None, width // heads):
    raise UsageError(
        f"{path}: head_dim={c['head_dim']} differs from hidden_size / num_attention_heads = "
        f"{width // heads}; not supported"
    )
  bias = bool(c.get("attention_bias", False))
  if bool(c.get("mlp_bias", False)) != bias:
    raise UsageError(f"{path}: attention_bias={bias} with a different mlp_bias is not supported")
  theta, scaling = _rope(c, path)
  fields = dict(
      num_layers=_positive(c, "num_hidden_layers", path),
      num_heads=heads,
      num_kv_heads=kv,
      embed_dim=width,
      mlp_dim=_positive(c, "intermediate_size", path),
      positions="rotary",
      use_bias=bias,
      norm="rmsnorm",
      norm_eps=float(c.get("rms_norm_eps", 1e-6)),
      mlp_type="swiglu",
      rope_theta=theta,
      rope_scaling=scaling,
      tie_embeddings=bool(c.get("tie_word_embeddings", False)),
  )
  max_positions = _positive(c, "max_position_embeddings", path)
  return HFModel("llama", _positive(c, "vocab_size", path), fields, max_positions)


# --- export -----------------------------------------------------------------------------------


def arch_of(model) -> str:
  """Which Hugging Face architecture a GPT module is, or a UsageError saying why neither."""
  gpt2 = dict(positions="learned", norm="layernorm", mlp_type="gelu", use_bias=True, num_kv_heads=0)
  llama = dict(positions="rotary", norm="rmsnorm", mlp_type="swiglu")
  for name, want in (("gpt2", gpt2), ("llama", llama)):
    if all(getattr(model, k) == v for k, v in want.items()):
      return name
  have = {k: getattr(model, k) for k in ("positions", "norm", "mlp_type", "use_bias")}
  raise UsageError(
      f"this model ({', '.join(f'model.{k}={v!r}' for k, v in have.items())}) is neither GPT-2 "
      "(learned, layernorm, gelu, biases) nor Llama (rotary, rmsnorm, swiglu): "
      "--mode=export_hf has no Hugging Face architecture for it"
  )


def to_hf(model, arch: str) -> dict:
  """config.json for a GPT module of architecture `arch` (see arch_of)."""
  common = {"vocab_size": model.vocab_size, "tie_word_embeddings": model.tie_embeddings}
  # No special-token ids: transformers would otherwise assume GPT-2's 50256 for any vocabulary.
  common.update(dtype="float32", bos_token_id=None, eos_token_id=None)
  mlp = model.mlp_dim or 4 * model.embed_dim
  if arch == "gpt2":
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": model.num_layers,
        "n_head": model.num_heads,
        "n_embd": model.embed_dim,
        "n_inner": mlp,
        "n_positions": model.block_size,
        "layer_norm_epsilon": model.norm_eps,
        "activation_function": "gelu_new",
        **common,
    }
  rope = {"rope_type": "default", "rope_theta": model.rope_theta}
  if model.rope_scaling:
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    rope.update(rope_type="llama3", **dict(zip(keys, model.rope_scaling)))
    rope["original_max_position_embeddings"] = int(rope["original_max_position_embeddings"])
  # transformers checks that a scaled rope's original context fits max_position_embeddings.
  context = (
      max(model.block_size, int(model.rope_scaling[3])) if model.rope_scaling else model.block_size
  )
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "num_hidden_layers": model.num_layers,
      "num_attention_heads": model.num_heads,
      "num_key_value_heads": model.num_kv_heads or model.num_heads,
      "hidden_size": model.embed_dim,
      "head_dim": model.embed_dim // model.num_heads,
      "intermediate_size": mlp,
      "max_position_embeddings": context,
      "rms_norm_eps": model.norm_eps,
      "hidden_act": "silu",
      "attention_bias": model.use_bias,
      "mlp_bias": model.use_bias,
      "rope_parameters": rope,
      # Older transformers read these two instead of rope_parameters.
      "rope_theta": model.rope_theta,
      "rope_scaling": rope if model.rope_scaling else None,
      **common,
  }
