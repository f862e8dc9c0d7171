"""A Transformer encoder that classifies token sequences (pre-LayerNorm, bidirectional attention).

Input: int32 tokens (B, T) where 0 is padding (ids are the tokenizer's + 1; the task shifts them),
padding only at the end. Output: float32 logits (B, num_classes).

Packed rows (`segment_ids` int32 (B, T), 1, 2, ... per review in the row, 0 padding; see
data/packing.py): attention stays within a segment, positions (learned or rotary) restart at each
segment's start, and each segment is pooled on its own, giving logits (B, num_segments,
num_classes) with segment s + 1 in slot s (empty slots are pooled from nothing: the task weights
them 0). With pooling "first" each segment's first position is its [CLS] slot (the task leaves a
token there whose id is ignored). A review's logits are then those it gets alone, unpacked.

  embed tokens (+ learned positions) -> dropout -> num_layers x [x + attn(ln(x)), x + mlp(ln(x))]
  -> ln_f -> pool -> dropout -> head

Attention sees only real tokens (a padding mask on the keys). Positions: "learned" (an embedding
added to the tokens) or "rotary" (queries and keys rotated by position, as in
models/attention.py, so attention scores depend on relative offsets; on the sentiment reviews it
learned negation and clause order several times faster than learned positions). Pooling: "mean"
averages the real tokens' outputs; "first" prepends a learned [CLS] vector and classifies from
its output (as BERT).

Parameter tree (names kept stable: checkpoints depend on them):

  tok_embed/embedding                  (vocab, embed)    vocab rounded up to a multiple of 64
  pos_embed/embedding                  (length, embed)   learned positions only; length =
                                                         max_len (+ 1 with "first")
  cls                                  (embed,)          pooling "first" only
  block_{i}/ln_1, ln_2/{scale,bias}    (norm,)
  block_{i}/attn/{query,key,value}/kernel (embed, heads, kv), bias (heads, kv)
  block_{i}/attn/out/kernel            (heads, kv, embed), bias (embed,)
  block_{i}/mlp/fc/kernel              (embed, mlp), bias (mlp,)
  block_{i}/mlp/proj/kernel            (mlp, embed), bias (embed,)
  ln_f/{scale,bias}                    (norm,)
  head/kernel                          (embed, classes), bias (classes,)
"""

from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import layers
from bigmodel_jax.models.attention import apply_rotary, packed_positions_and_mask

POOLING = ("mean", "first")
POSITIONS = ("learned", "rotary")
# The embedding table is padded to a multiple of this, so that it shards over any mesh axis (the
# extra rows are never looked up).
VOCAB_MULTIPLE = 64


_init, _zeros = layers.normal, layers.zeros  # initialisers with logical axis names


def _layer_norm(module, name):
  return layers.layer_norm(name, dtype=module.dtype, param_dtype=module.param_dtype)


class Attention(nn.Module):
  num_heads: int
  dropout: float
  residual_std: float
  rotary: bool
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, mask, positions, *, train):
    # x (B, T, C), mask (B, 1, 1 or T, T) bool: which keys each query sees, positions (T,) or (B, T)
    width = x.shape[-1]
    head_dim = width // self.num_heads
    dense = lambda name: nn.DenseGeneral(  # noqa: E731
        (self.num_heads, head_dim),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=_init(0.02, ("embed", "heads", "kv")),
        bias_init=_zeros(("heads", "kv")),
        name=name,
    )
    q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)  # (B, T, H, D) each
    if self.rotary:
      q, k = apply_rotary(q, positions), apply_rotary(k, positions)
    y = jax.nn.dot_product_attention(q, k, v, mask=mask)  # (B, T, H, D)
    y = nn.DenseGeneral(
        width,
        axis=(-2, -1),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=_init(self.residual_std, ("heads", "kv", "embed")),
        bias_init=_zeros(("embed",)),
        name="out",
    )(
        y
    )  # (B, T, C)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class Block(nn.Module):
  num_heads: int
  hidden_dim: int
  dropout: float
  residual_std: float  # GPT-2: residual projections get 0.02 / sqrt(2 * num_layers)
  rotary: bool
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, mask, positions, *, train):  # x (B, T, C), mask and positions: Attention's
    kw = dict(
        dropout=self.dropout,
        residual_std=self.residual_std,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    x = x + Attention(self.num_heads, rotary=self.rotary, name="attn", **kw)(
        _layer_norm(self, "ln_1")(x), mask, positions, train=train
    )
    mlp = layers.MLP(
        self.hidden_dim,
        fc_std=0.02,
        proj_std=self.residual_std,
        dropout=self.dropout,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="mlp",
    )
    return x + mlp(_layer_norm(self, "ln_2")(x), train=train)


class TextEncoder(nn.Module):
  """tokens int32 (B, T), 0 = padding -> logits float32 (B, num_classes); packed (segment_ids
  (B, T)) -> logits (B, num_segments, num_classes)."""

  # Set by `make` from config.model (default_config says what each is), dtypes as jnp types.
  vocab_size: int  # including the padding id 0
  num_classes: int
  max_len: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int  # 0 -> 4 * embed_dim
  dropout: float
  pooling: str  # "mean" | "first"
  positions: str  # "learned" | "rotary"
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, segment_ids=None, num_segments: int = 1):
    if segment_ids is not None:
      return self._packed(tokens, segment_ids, num_segments, train)
    mask = tokens > 0  # (B, T)
    x = self._embed(tokens)
    if self.pooling == "first":
      cls = self._cls()
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), x[:, :1].shape), x], axis=1)
      mask = jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)
    if self.positions == "learned":
      x = x + self._position_embed(jnp.arange(x.shape[1]))[None]  # (B, T, C)
    x = self._blocks(x, mask[:, None, None, :], jnp.arange(x.shape[1]), train)  # (B, T, C)

    if self.pooling == "first":
      pooled = x[:, 0]
    else:
      weights = mask.astype(x.dtype)[..., None]  # (B, T, 1)
      pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)  # (B, C)
    return self._head(pooled, train)  # (B, num_classes)

  def _packed(self, tokens, segment_ids, num_segments, train):
    """The packed forward: the same layers (and parameters) as __call__'s, per segment."""
    positions = packed_positions_and_mask(segment_ids)[0]  # (B, T) from each segment's start
    starts = (positions == 0) & (segment_ids > 0)  # (B, T): each segment's first token
    x = self._embed(tokens)
    if self.pooling == "first":
      cls = self._cls()
      x = jnp.where(starts[..., None], cls.astype(x.dtype), x)
    if self.positions == "learned":
      x = x + self._position_embed(positions)  # (B, T, C)
    # A query sees its own segment only (padding sees padding: no row of the mask is empty).
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # (B, 1, T, T)
    x = self._blocks(x, mask, positions, train)  # (B, T, C)
    slots = segment_ids[:, None, :] == jnp.arange(1, num_segments + 1)[None, :, None]  # (B, S, T)
    if self.pooling == "first":
      slots &= starts[:, None, :]
    weights = slots.astype(x.dtype)
    pooled = jnp.einsum("bst,btc->bsc", weights, x) / jnp.maximum(
        weights.sum(-1, keepdims=True), 1.0
    )  # (B, S, C)
    return self._head(pooled, train)  # (B, S, num_classes)

  # The layers both forwards share, defined once so that their parameters are the same.

  def _embed(self, tokens):  # (B, T) -> (B, T, C)
    return nn.Embed(
        self.vocab_size,
        self.embed_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        embedding_init=_init(0.02, ("vocab", "embed")),
        name="tok_embed",
    )(tokens)

  def _cls(self):  # (C,)
    return self.param("cls", _init(0.02, ("embed",)), (self.embed_dim,), self.param_dtype)

  def _position_embed(self, positions):  # (T,) or (B, T) -> (..., C)
    return nn.Embed(
        self.max_len + (self.pooling == "first"),
        self.embed_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        embedding_init=_init(0.02, ("length", "embed")),
        name="pos_embed",
    )(positions)

  def _blocks(self, x, mask, positions, train):
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.num_layers):
      x = Block(
          num_heads=self.num_heads,
          hidden_dim=self.mlp_dim or 4 * self.embed_dim,
          dropout=self.dropout,
          residual_std=0.02 / (2 * self.num_layers) ** 0.5,
          rotary=self.positions == "rotary",
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"block_{i}",
      )(
          x, mask, positions, train=train
      )  # (B, T, C)
    return _layer_norm(self, "ln_f")(x)  # (B, T, C)

  def _head(self, pooled, train):
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    logits = nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=_init(0.02, ("embed", None)),
        bias_init=_zeros((None,)),
        name="head",
    )(pooled)
    return logits.astype(jnp.float32)


def padded_vocab(vocab_size: int, num_classes: int) -> int:
  if vocab_size <= 1 or num_classes <= 1:
    raise UsageError(f"vocab_size={vocab_size} and num_classes={num_classes} must be > 1")
  return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for a TextEncoder and their defaults."""
  c = layers.shared_config("max_len", "mlp_dim", "dropout", "positions", "dtype", "param_dtype")
  # Transformer blocks: > 0.
  c.num_layers = 2
  # Attention heads per block: > 0, dividing embed_dim.
  c.num_heads = 4
  # Width of the token embedding and of every block: > 0.
  c.embed_dim = 64
  # What the classifier reads: mean (of the real tokens' outputs) | first (a learned [CLS] token).
  c.pooling = "mean"
  return c


def make(cfg, vocab_size: int, num_classes: int) -> TextEncoder:
  """Builds a TextEncoder from `config.model`; vocab_size counts the padding id 0 (the table is
  padded to a multiple of VOCAB_MULTIPLE)."""
  ints = {
      k: layers.positive_int(cfg, k) for k in ("max_len", "num_layers", "num_heads", "embed_dim")
  }
  if ints["embed_dim"] % ints["num_heads"]:
    raise UsageError(
        f"model.embed_dim={ints['embed_dim']} must be divisible by "
        f"model.num_heads={ints['num_heads']}"
    )
  mlp_dim = layers.mlp_dim(cfg)
  pooling = cfg.pooling
  if pooling not in POOLING:
    raise UsageError(f"model.pooling={pooling!r} is unknown; valid: {', '.join(POOLING)}")
  positions = cfg.positions
  if positions not in POSITIONS:
    raise UsageError(f"model.positions={positions!r} is unknown; valid: {', '.join(POSITIONS)}")
  if positions == "rotary" and (ints["embed_dim"] // ints["num_heads"]) % 2:
    raise UsageError(
        f"model.positions='rotary' needs an even head size, but model.embed_dim="
        f"{ints['embed_dim']} / model.num_heads={ints['num_heads']} is odd"
    )
  return TextEncoder(
      vocab_size=padded_vocab(vocab_size, num_classes),
      num_classes=num_classes,
      mlp_dim=mlp_dim,
      pooling=pooling,
      positions=positions,
      **ints,
      **layers.dropout_and_dtypes(cfg),
  )
