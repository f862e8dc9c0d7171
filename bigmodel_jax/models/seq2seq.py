"""An encoder-decoder Transformer (flax linen) for translation: pre-LayerNorm, sinusoidal
positions, the target embedding tied to the output head (as in flax's WMT example).

  model.apply(variables, src, tgt_in)             teacher forcing: logits (B, T, tgt_vocab)
  model.apply(variables, src, method="encode")    -> encoded (B, S, C), src_mask (B, S)
  model.apply(variables, tgt_in, encoded, src_mask, method="run_decoder")  -> logits (B, T, V)

Each vocabulary is a tokenizer's V ids followed by three specials: PAD = V, BOS = V + 1,
EOS = V + 2 (so the model's vocabulary is V + 3; see `special_ids`). Padding (PAD in the source)
is masked out of encoder self-attention and of cross-attention; decoder self-attention is causal.

Packed rows (`src_segments` (B, S), `tgt_segments` (B, T) int32: 1, 2, ... per pair in the row, in
the same order on both sides, 0 padding; see data/packing.py `streams`): positions restart at
each pair's start, encoder self-attention stays within a source, decoder self-attention within a
target (and causal), and a target token attends only to its own pair's source tokens, so a pair's
logits are those it gets alone (tests/test_translate_pack.py).

Parameter tree (names are kept stable: checkpoints depend on them):

  embed/embedding                         (vocab, embed)  shared vocabulary (rows padded to a
                                                           multiple of vocab_multiple); or
  src_embed/embedding, tgt_embed/embedding                 separate ones
  encoder/layer_{i}/{ln_1,ln_2}/{scale,bias}               (norm,)
  encoder/layer_{i}/attn/{query,key,value}/kernel          (embed, heads, kv), bias (heads, kv)
  encoder/layer_{i}/attn/out/kernel                        (heads, kv, embed), bias (embed,)
  encoder/layer_{i}/mlp/{fc,proj}/kernel                   (embed, mlp), (mlp, embed)
  decoder/layer_{i}/{ln_1,ln_2,ln_3}, self_attn, cross_attn, mlp  as above
  {encoder,decoder}/ln_f/{scale,bias}

Decoding with a cache: `model.clone(decode=True, decode_len=L)`. The first `run_decoder` call (with
mutable=["cache"], no cache yet) is a priming call: it creates zeroed self-attention key/value
buffers of length L and computes the cross-attention keys/values from `encoded` once; its output
is discarded. Each later call takes one new token per row (B, 1), with `encoded=None`, writes its
self-attention key/value at `cache_index` and advances it. `bigmodel_jax.beam_search` drives this.
"""

import dataclasses
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import layers
from bigmodel_jax.models.attention import packed_positions_and_mask

NUM_SPECIAL = 3


def special_ids(vocab_size: int) -> tuple[int, int, int]:
  """(PAD, BOS, EOS) of a model vocabulary of `vocab_size` (tokenizer ids + 3 specials)."""
  return vocab_size - 3, vocab_size - 2, vocab_size - 1


@dataclasses.dataclass(frozen=True)
class Settings:
  embed_dim: int
  num_heads: int
  hidden_dim: int
  dropout: float
  dtype: Any
  param_dtype: Any
  decode: bool
  decode_len: int


_init, _zeros = layers.normal, layers.zeros  # initialisers with logical axis names


def _layer_norm(cfg, name):
  return layers.layer_norm(name, dtype=cfg.dtype, param_dtype=cfg.param_dtype, epsilon=1e-6)


def sinusoids(positions, dim: int):
  """Fixed sin/cos position features (..., T) -> (..., T, dim) ("Attention is all you need")."""
  half = dim // 2
  freq = jnp.exp(-np.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  angles = positions.astype(jnp.float32)[..., None] * freq  # (..., T, dim/2)
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Attention(nn.Module):
  """kind: "self" (encoder), "causal" (decoder self-attention, cached when decoding), "cross"."""

  cfg: Settings
  kind: str

  @nn.compact
  def __call__(self, x, context, mask, positions, *, train):
    # x (B, T, C); context (B, S, C) for cross (None once cached); mask (B, 1, T|1, S) or None;
    # positions (T,) of x's tokens (causal only)
    cfg = self.cfg
    dense = lambda name: nn.DenseGeneral(  # noqa: E731
        (cfg.num_heads, cfg.embed_dim // cfg.num_heads),
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_init(cfg.embed_dim**-0.5, ("embed", "heads", "kv")),
        bias_init=_zeros(("heads", "kv")),
        name=name,
    )
    q = dense("query")(x)  # (B, T, H, D)
    causal = self.kind == "causal" and mask is None  # packed rows pass causal same-pair masks
    if self.kind == "cross" and cfg.decode and self.has_variable("cache", "cross_key"):
      k, v = self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")
    else:
      source = context if self.kind == "cross" else x
      k, v = dense("key")(source), dense("value")(source)  # (B, S, H, D)
      if self.kind == "cross" and cfg.decode:  # priming call: computed once per source
        self.put_variable("cache", "cross_key", k)
        self.put_variable("cache", "cross_value", v)
    if causal and cfg.decode:
      if not self.has_variable("cache", "cached_key"):  # priming call: zeroed buffers
        shape = (k.shape[0], cfg.decode_len) + k.shape[2:]
        self.put_variable("cache", "cached_key", jnp.zeros(shape, k.dtype))
        self.put_variable("cache", "cached_value", jnp.zeros(shape, v.dtype))
      else:  # write at [i, i+T); query j (position i+j) sees keys <= i+j
        start = (0, positions[0], 0, 0)
        k = jax.lax.dynamic_update_slice(self.get_variable("cache", "cached_key"), k, start)
        v = jax.lax.dynamic_update_slice(self.get_variable("cache", "cached_value"), v, start)
        self.put_variable("cache", "cached_key", k)
        self.put_variable("cache", "cached_value", v)
        mask = (jnp.arange(k.shape[1])[None, :] <= positions[:, None])[None, None]  # (1,1,T,L)
        causal = False
    y = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)  # (B, T, H, D)
    y = nn.DenseGeneral(
        cfg.embed_dim,
        axis=(-2, -1),
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_init(cfg.embed_dim**-0.5, ("heads", "kv", "embed")),
        bias_init=_zeros(("embed",)),
        name="out",
    )(
        y
    )  # (B, T, C)
    return nn.Dropout(cfg.dropout, deterministic=not train)(y)


def _mlp(cfg):
  return layers.MLP(
      cfg.hidden_dim,
      fc_std=cfg.embed_dim**-0.5,
      proj_std=cfg.hidden_dim**-0.5,
      dropout=cfg.dropout,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      name="mlp",
  )


class EncoderLayer(nn.Module):
  cfg: Settings

  @nn.compact
  def __call__(self, x, mask, *, train):  # x (B, S, C), mask (B, 1, 1, S)
    x = x + Attention(self.cfg, "self", name="attn")(
        _layer_norm(self.cfg, "ln_1")(x), None, mask, None, train=train
    )
    return x + _mlp(self.cfg)(_layer_norm(self.cfg, "ln_2")(x), train=train)


class DecoderLayer(nn.Module):
  cfg: Settings

  @nn.compact
  def __call__(self, x, encoded, src_mask, positions, self_mask, *, train):  # x (B, T, C)
    x = x + Attention(self.cfg, "causal", name="self_attn")(
        _layer_norm(self.cfg, "ln_1")(x), None, self_mask, positions, train=train
    )
    x = x + Attention(self.cfg, "cross", name="cross_attn")(
        _layer_norm(self.cfg, "ln_2")(x), encoded, src_mask, None, train=train
    )
    return x + _mlp(self.cfg)(_layer_norm(self.cfg, "ln_3")(x), train=train)


class Encoder(nn.Module):
  cfg: Settings
  num_layers: int

  @nn.compact
  def __call__(self, x, mask, positions, *, train):
    # x (B, S, C) embedded tokens; mask (B, 1, 1|S, S); positions (S,) or packed (B, S)
    x = x + sinusoids(positions, self.cfg.embed_dim).astype(x.dtype)
    x = nn.Dropout(self.cfg.dropout, deterministic=not train)(x)
    for i in range(self.num_layers):
      x = EncoderLayer(self.cfg, name=f"layer_{i}")(x, mask, train=train)
    return _layer_norm(self.cfg, "ln_f")(x)  # (B, S, C)


class Decoder(nn.Module):
  cfg: Settings
  num_layers: int

  @nn.compact
  def __call__(self, x, encoded, src_mask, *, train, packed=None):
    # x (B, T, C) embedded tokens; src_mask (B, 1, 1|T, S); packed: (positions (B, T), causal
    # same-pair self-attention mask (B, 1, T, T)) of packed rows
    positions, self_mask = packed or (jnp.arange(x.shape[1], dtype=jnp.int32), None)
    if self.cfg.decode:  # this call's positions: cache_index .. cache_index + T - 1
      initialized = self.has_variable("cache", "cache_index")
      index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      if initialized:
        positions = positions + index.value
        index.value = index.value + x.shape[1]
    x = x + sinusoids(positions, self.cfg.embed_dim).astype(x.dtype)
    x = nn.Dropout(self.cfg.dropout, deterministic=not train)(x)
    for i in range(self.num_layers):
      x = DecoderLayer(self.cfg, name=f"layer_{i}")(
          x, encoded, src_mask, positions, self_mask, train=train
      )
    return _layer_norm(self.cfg, "ln_f")(x)  # (B, T, C)


class Seq2Seq(nn.Module):
  """src int32 (B, S), tgt_in int32 (B, T) (BOS + target[:-1]) -> logits float32 (B, T, V)."""

  # Set by `make` from config.model (default_config says what each is), dtypes as jnp types.
  src_vocab_size: int
  tgt_vocab_size: int
  num_encoder_layers: int
  num_decoder_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int  # 0 -> 4 * embed_dim
  share_embeddings: bool  # the task's data.shared_vocab
  dropout: float
  dtype: Any  # compute dtype
  param_dtype: Any
  vocab_multiple: int  # embedding tables are padded to a multiple of this (for sharding)
  # Set by model.clone(decode=True, decode_len=L) for beam search, never by config.
  decode: bool = False
  decode_len: int = 0  # length of the self-attention cache when decoding

  @property
  def src_pad(self) -> int:
    return special_ids(self.src_vocab_size)[0]

  @property
  def tgt_specials(self) -> tuple[int, int, int]:
    return special_ids(self.tgt_vocab_size)  # (PAD, BOS, EOS)

  def setup(self):
    self.cfg = Settings(
        embed_dim=self.embed_dim,
        num_heads=self.num_heads,
        hidden_dim=self.mlp_dim or 4 * self.embed_dim,
        dropout=self.dropout,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        decode=self.decode,
        decode_len=self.decode_len,
    )
    rows = lambda n: -(-n // self.vocab_multiple) * self.vocab_multiple  # noqa: E731
    embed = lambda n: nn.Embed(  # noqa: E731
        rows(n),
        self.embed_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        embedding_init=_init(1.0, ("vocab", "embed")),
    )
    if self.share_embeddings:
      self.embed = embed(self.tgt_vocab_size)
    else:
      self.src_embed, self.tgt_embed = embed(self.src_vocab_size), embed(self.tgt_vocab_size)
    self.encoder = Encoder(self.cfg, self.num_encoder_layers)
    self.decoder = Decoder(self.cfg, self.num_decoder_layers)

  def _embeddings(self):
    return (self.embed, self.embed) if self.share_embeddings else (self.src_embed, self.tgt_embed)

  def encode(self, src, *, train: bool = False, src_segments=None):
    x = self._embeddings()[0](src)  # (B, S, C)
    if src_segments is not None:  # packed: a token sees its own source (padding sees padding)
      positions = packed_positions_and_mask(src_segments)[0]  # (B, S)
      same = src_segments[:, :, None] == src_segments[:, None, :]  # (B, S, S)
      return self.encoder(x, same[:, None], positions, train=train), src_segments > 0
    mask = src != self.src_pad  # (B, S)
    encoded = self.encoder(x, mask[:, None, None, :], jnp.arange(src.shape[1]), train=train)
    return encoded, mask  # (B, S, C), (B, S)

  def run_decoder(self, tgt_in, encoded, src_mask, *, train: bool = False, segments=None):
    """segments: packed rows' (src_segments (B, S), tgt_segments (B, T)), else None."""
    table = self._embeddings()[1]
    packed, src_mask = None, src_mask[:, None, None, :]  # (B, 1, 1, S)
    if segments is not None:
      src_seg, tgt_seg = segments
      packed = packed_positions_and_mask(tgt_seg)
      # A target token sees its own pair's source; target padding sees all of it (a softmax
      # over nothing is undefined, and padding's outputs are never read).
      src_mask = (tgt_seg[:, :, None] == src_seg[:, None, :]) | (tgt_seg == 0)[:, :, None]
      src_mask = src_mask[:, None]  # (B, 1, T, S)
    h = self.decoder(table(tgt_in), encoded, src_mask, train=train, packed=packed)
    # Tied output head in float32, scaled like the embeddings' unit-variance init; the padding
    # rows of the table are not part of the vocabulary.
    logits = table.attend(h.astype(jnp.float32)).astype(jnp.float32) / np.sqrt(self.embed_dim)
    return logits[..., : self.tgt_vocab_size]

  def __call__(self, src, tgt_in, *, train: bool = False, src_segments=None, tgt_segments=None):
    encoded, mask = self.encode(src, train=train, src_segments=src_segments)
    segments = None if src_segments is None else (src_segments, tgt_segments)
    return self.run_decoder(tgt_in, encoded, mask, train=train, segments=segments)


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for a Seq2Seq and their defaults (the dates model of translate)."""
  c = layers.shared_config("mlp_dim", "dropout", "dtype", "param_dtype", "vocab_multiple")
  # Encoder layers (self-attention + MLP): > 0.
  c.num_encoder_layers = 2
  # Decoder layers (causal self-attention, cross-attention, MLP): > 0.
  c.num_decoder_layers = 2
  # Attention heads in every attention: > 0.
  c.num_heads = 4
  # Width of the embeddings and of every layer: > 0, a multiple of 2 * num_heads.
  c.embed_dim = 64
  return c


def make(cfg, src_vocab_size: int, tgt_vocab_size: int, share_embeddings: bool) -> Seq2Seq:
  """Builds a Seq2Seq from `config.model`; vocabularies include the 3 special ids."""
  ints = {
      k: layers.positive_int(cfg, k)
      for k in ("num_encoder_layers", "num_decoder_layers", "num_heads", "embed_dim")
  }
  if ints["embed_dim"] % (2 * ints["num_heads"]):
    raise UsageError(
        f"model.embed_dim={ints['embed_dim']} must be even and divisible by "
        f"model.num_heads={ints['num_heads']}"
    )
  mlp_dim, multiple = layers.mlp_dim(cfg), layers.vocab_multiple(cfg)
  if share_embeddings and src_vocab_size != tgt_vocab_size:
    raise UsageError(
        f"shared embeddings need one vocabulary; got source {src_vocab_size} "
        f"and target {tgt_vocab_size} ids"
    )
  return Seq2Seq(
      src_vocab_size=src_vocab_size,
      tgt_vocab_size=tgt_vocab_size,
      mlp_dim=mlp_dim,
      share_embeddings=share_embeddings,
      vocab_multiple=multiple,
      **ints,
      **layers.dropout_and_dtypes(cfg),
  )
