"""A decoder's causal self-attention: the math (rotary positions, written-out attention for CPU,
the library kernel elsewhere, packed-row masks) and GPT's attention layer with its KV cache.

models/gpt.py builds its blocks from `CausalSelfAttention`; models/text_encoder.py and
models/seq2seq.py share `apply_rotary` and `packed_positions_and_mask`.
"""

import dataclasses
import functools
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.models import kv_cache, layers

_init, _zeros = layers.normal, layers.zeros  # initialisers with logical axis names


@dataclasses.dataclass(frozen=True)
class Settings:
  """What GPT's layers (this attention, gpt.Block) need from GPT (a plain dataclass: a parent
  Module can't be a child's field)."""

  embed_dim: int
  num_heads: int
  hidden_dim: int
  dropout: float
  positions: str
  use_bias: bool
  dtype: Any
  param_dtype: Any
  attention_impl: str | None
  decode: bool
  residual_std: float  # GPT-2: residual projections get 0.02 / sqrt(2 * num_layers)
  num_kv_heads: int
  norm: str
  norm_eps: float
  mlp_type: str
  rope_theta: float
  rope_scaling: tuple
  kv_cache: str  # decoding cache storage: "float" | "int8" (models/kv_cache.py)
  matmul_dtype: Any  # the Dense matmuls' operand dtype; None: dtype


def apply_rotary(x, positions, base=10000.0, scaling=()):
  """RoPE (half-split form, as in HF Llama) on x (B, T, H, D) at integer positions (T,) or,
  packed, (B, T)."""
  freq = layers.rope_frequencies(x.shape[-1], base, scaling)  # (D/2,)
  angles = positions.astype(jnp.float32)[..., None] * freq  # (T, D/2) or (B, T, D/2)
  angles = angles if angles.ndim == 3 else angles[None]  # (1 or B, T, D/2)
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # (B, T, H, D/2) each
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def attention(q, k, v, mask):
  """softmax(q k^T / sqrt(D), where mask) v; q (B, T, H, D), k and v (B, S, H, D), mask (T, S)
  or (B, 1, T, S).

  jax.nn.dot_product_attention's XLA computation written out, with float32 scores: XLA:CPU runs
  this form's forward + backward ~5x faster (0.6 vs 2.9 ms per baby-GPT layer).
  """
  scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
  scores = jnp.where(mask, scores / np.float32(np.sqrt(q.shape[-1])), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhts,bshd->bthd", probs, v)


def causal_attention(q, k, v, max_blocks: int = 8, min_block: int = 64):
  """attention() with a causal mask over q, k, v (B, T, H, D), computed in query blocks.

  Query block i only meets keys up to its own end, so the upper triangle of the scores is never
  computed or normalised: at T = 256, 4 blocks run ~25% faster than one on XLA:CPU. Contexts
  shorter than two blocks of `min_block`, or not divisible, go in one piece.
  """
  T = q.shape[1]
  size = max(min_block, T // max_blocks)
  if T < 2 * size or T % size:
    return attention(q, k, v, jnp.tril(jnp.ones((T, T), bool)))
  outs = []
  for end in range(size, T + 1, size):
    mask = jnp.arange(end)[None, :] <= jnp.arange(end - size, end)[:, None]  # (size, end)
    outs.append(attention(q[:, end - size : end], k[:, :end], v[:, :end], mask))
  return jnp.concatenate(outs, axis=1)


def attend(q, k, v, mask=None, implementation=None):
  """The model's attention: causal over q, k, v (B, T, H, D) when mask is None, else with a
  (T, S) or (B, 1, T, S) mask. With `implementation` None: on CPU the written-out forms above,
  elsewhere jax.nn.dot_product_attention's XLA path (with its bf16 matmul precisions); "cudnn"
  goes to cuDNN's fused kernel."""
  library = functools.partial(
      jax.nn.dot_product_attention,
      is_causal=mask is None,
      implementation=implementation,
      mask=None if mask is None else jnp.broadcast_to(mask, (q.shape[0], 1) + mask.shape[-2:]),
  )
  if implementation is not None:
    return library(q, k, v)
  cpu = causal_attention if mask is None else lambda q, k, v: attention(q, k, v, mask)
  return jax.lax.platform_dependent(q, k, v, cpu=cpu, default=library)


class CausalSelfAttention(nn.Module):
  cfg: Settings

  @nn.compact
  def __call__(self, x, positions, *, train, mask=None):
    # x (B, T, C), positions (T,) or (B, T); mask (B, 1, T, T) for packed rows, else causal
    cfg = self.cfg
    head_dim = cfg.embed_dim // cfg.num_heads
    dense = lambda name, heads: nn.DenseGeneral(  # noqa: E731
        (heads, head_dim),
        use_bias=cfg.use_bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_init(0.02, ("embed", "heads", "kv")),
        bias_init=_zeros(("heads", "kv")),
        dot_general=layers.dense_dot_general(cfg.matmul_dtype),
        name=name,
    )
    q = dense("query", cfg.num_heads)(x)  # (B, T, H, D)
    k, v = dense("key", cfg.num_kv_heads)(x), dense("value", cfg.num_kv_heads)(x)  # (B, T, K, D)
    if cfg.positions == "rotary":
      rope = functools.partial(apply_rotary, base=cfg.rope_theta, scaling=cfg.rope_scaling)
      q, k = rope(q, positions), rope(k, positions)
    # Grouped-query attention: each of the K key/value heads serves H / K query heads. The cache
    # keeps the K heads; they are repeated only for the attention product.
    groups = functools.partial(jnp.repeat, repeats=cfg.num_heads // cfg.num_kv_heads, axis=2)

    if not cfg.decode or not self.has_variable("cache", "cached_key"):
      if cfg.decode:  # model.init(..., decode=True): the cache takes the init input's shapes
        kv_cache.declare(self, cfg.kv_cache, k, "key")
        kv_cache.declare(self, cfg.kv_cache, v, "value")
      k, v = groups(k), groups(v)  # (B, T, H, D)
      y = attend(q, k, v, mask, implementation=cfg.attention_impl)  # (B, T, H, D)
    else:
      # Write this call's keys/values at [i, i+T); query j (at position i+j) sees keys <= i+j.
      # cuDNN kernels target training shapes, so decoding steps (T = 1 against the cache) use XLA.
      # An int8 cache (cfg.kv_cache) quantizes what it writes and dequantizes what it reads.
      start = positions[0]
      k = kv_cache.write_and_read(self, cfg.kv_cache, k, start, "key")  # (B, S, K, D)
      v = kv_cache.write_and_read(self, cfg.kv_cache, v, start, "value")
      k, v = groups(k), groups(v)  # (B, S, H, D), S = block_size
      mask = jnp.arange(k.shape[1])[None, :] <= positions[:, None]  # (T, S)
      y = attend(q, k, v, mask)  # (B, T, H, D)

    y = nn.DenseGeneral(
        cfg.embed_dim,
        axis=(-2, -1),
        use_bias=cfg.use_bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_init(cfg.residual_std, ("heads", "kv", "embed")),
        bias_init=_zeros(("embed",)),
        dot_general=layers.dense_dot_general(cfg.matmul_dtype),
        name="out",
    )(y)
    return nn.Dropout(cfg.dropout, deterministic=not train)(y)


def packed_positions_and_mask(segment_ids):
  """segment_ids (B, T), equal within an example and different between neighbours ->
  (positions (B, T) counted from each example's first token, causal same-segment mask
  (B, 1, T, T))."""
  T = segment_ids.shape[1]
  index = jnp.arange(T, dtype=jnp.int32)
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
  )
  first = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)  # (B, T) start of each segment
  same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
  mask = same & (index[None, :] <= index[:, None])
  return index - first, mask[:, None]
