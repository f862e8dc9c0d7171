"""GPT: a decoder-only Transformer in flax linen (pre-norm; by default GPT-2's architecture, and
with config.model's options Llama's: RMSNorm, SwiGLU, rotary with rope_theta and Llama-3 scaling,
grouped-query attention, untied output head, no biases).

Read top to bottom: block (its attention, with the optional KV cache, is models/attention.py's;
its MLP layers.py's), model, then `default_config` (config.model's fields and defaults), `make`
(config -> model), `param_count` and `flops_per_token`.

Parameter tree (names are kept stable: checkpoints depend on them):

  wte/embedding                      (vocab, embed)   token embedding, also the output head
  wpe/embedding                      (length, embed)  learned positions only
  h_{i}/ln_1/{scale,bias}            (norm,)
  h_{i}/attn/query/kernel            (embed, heads, kv), bias (heads, kv)
  h_{i}/attn/{key,value}/kernel      (embed, kv_heads, kv), bias (kv_heads, kv)
  h_{i}/attn/out/kernel              (heads, kv, embed), bias (embed,)
  h_{i}/ln_2/{scale,bias}            (norm,)
  h_{i}/mlp/fc/kernel                (embed, mlp), bias (mlp,)
  h_{i}/mlp/gate/kernel              (embed, mlp), bias (mlp,)   SwiGLU only
  h_{i}/mlp/proj/kernel              (mlp, embed), bias (embed,)
  ln_f/{scale,bias}                  (norm,)
  lm_head                            (embed, vocab)   untied output head only

Decoding with a KV cache: clone the model with `decode=True` and initialise the "cache" collection
from a (B, block_size) input; zeros of the right shapes are all it needs, so do it shape-first:

  decoder = model.clone(decode=True, dropout=0.0)
  shapes = jax.eval_shape(decoder.init, rng, jnp.zeros((B, decoder.block_size), jnp.int32))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
  logits, upd = decoder.apply({"params": params, "cache": cache}, prompt, mutable=["cache"])
  logits, upd = decoder.apply({"params": params, **upd}, next_token[:, None], mutable=["cache"])

Each call with tokens (B, L) writes keys/values at positions [i, i+L) of the cache, where
i = cache/cache_index, and advances the index by L. The caller keeps i + L <= block_size
(`bigmodel_jax.generate` checks it); past that, the writes would be clamped and silently wrong.
With kv_cache="int8" the cache holds int8 keys/values and per-token scales (models/kv_cache.py).
"""

from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import kv_cache, layers
from bigmodel_jax.models.attention import CausalSelfAttention, Settings, packed_positions_and_mask

POSITIONS = ("learned", "rotary")
ATTENTION_IMPLS = {"xla": None, "cudnn": "cudnn"}
# "full" recomputes the whole block in the backward pass; "dots" keeps the weight matmuls' outputs
# and recomputes the rest (attention scores, which are batched dots, included).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


_init = layers.normal  # an initialiser with logical axis names


def _layer_norm(cfg, name):
  return layers.norm(
      cfg.norm,
      name,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      epsilon=cfg.norm_eps,
      use_bias=cfg.use_bias,
  )


class Block(nn.Module):
  cfg: Settings

  @nn.compact
  def __call__(self, x, positions, train, mask=None):  # x (B, T, C); positional for nn.remat
    x = x + CausalSelfAttention(self.cfg, name="attn")(
        _layer_norm(self.cfg, "ln_1")(x), positions, train=train, mask=mask
    )
    cfg = self.cfg
    mlp = layers.MLP(
        cfg.hidden_dim,
        fc_std=0.02,
        proj_std=cfg.residual_std,
        dropout=cfg.dropout,
        use_bias=cfg.use_bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kind=cfg.mlp_type,
        matmul_dtype=cfg.matmul_dtype,
        name="mlp",
    )
    x = x + mlp(_layer_norm(cfg, "ln_2")(x), train=train)
    return x  # (B, T, C)


class GPT(nn.Module):
  """Decoder-only Transformer: tokens int32 (B, T) -> logits float32 (B, T, vocab_size)."""

  # Set by `make` from config.model (default_config says what each is), dtypes as jnp types.
  vocab_size: int
  block_size: int  # context length
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int  # 0 -> 4 * embed_dim
  dropout: float
  positions: str  # "learned" | "rotary"
  use_bias: bool
  dtype: Any  # compute dtype
  param_dtype: Any  # weight dtype
  attention_impl: str | None  # jax.nn.dot_product_attention(implementation=...)
  remat: str  # "none" | "full" | "dots", see REMAT_POLICIES
  num_kv_heads: int = 0  # 0 -> num_heads
  norm: str = "layernorm"  # | "rmsnorm"
  norm_eps: float = 1e-5
  mlp_type: str = "gelu"  # | "swiglu"
  rope_theta: float = 10000.0
  rope_scaling: tuple = ()  # () | (factor, low_freq_factor, high_freq_factor, original_context)
  tie_embeddings: bool = True
  decode: bool = False  # set by model.clone(decode=True) for cached decoding, never by config
  kv_cache: str = "float"  # the decoding cache's storage: "float" | "int8" (models/kv_cache.py)
  matmul_dtype: Any = None  # the Dense matmuls' operands (None: dtype), as jnp type

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, segment_ids=None):
    """segment_ids int32 (B, T) (packed rows, not when decoding): tokens attend only within their
    own segment and count positions from its start, so each example sees what it would alone."""
    T = tokens.shape[1]  # tokens (B, T)
    cfg = Settings(
        embed_dim=self.embed_dim,
        num_heads=self.num_heads,
        hidden_dim=self.mlp_dim or 4 * self.embed_dim,
        dropout=self.dropout,
        positions=self.positions,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        attention_impl=self.attention_impl,
        decode=self.decode,
        residual_std=0.02 / np.sqrt(2 * self.num_layers),
        num_kv_heads=self.num_kv_heads or self.num_heads,
        norm=self.norm,
        norm_eps=self.norm_eps,
        mlp_type=self.mlp_type,
        rope_theta=self.rope_theta,
        rope_scaling=tuple(self.rope_scaling),
        kv_cache=self.kv_cache,
        matmul_dtype=self.matmul_dtype,
    )
    wte = nn.Embed(
        self.vocab_size,
        self.embed_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        embedding_init=_init(0.02, ("vocab", "embed")),
        name="wte",
    )

    # Positions of this call's tokens: 0..T-1, or, decoding, cache_index..cache_index+T-1.
    positions = jnp.arange(T, dtype=jnp.int32)
    if self.decode:
      initialized = self.has_variable("cache", "cache_index")
      index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      if initialized:
        positions = positions + index.value
        index.value = index.value + T
    mask = None  # causal
    if segment_ids is not None:
      positions, mask = packed_positions_and_mask(segment_ids)  # (B, T), (B, 1, T, T)

    x = wte(tokens)  # (B, T, C)
    if self.positions == "learned":
      wpe = nn.Embed(
          self.block_size,
          self.embed_dim,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          embedding_init=_init(0.02, ("length", "embed")),
          name="wpe",
      )
      pe = wpe(positions)  # (T, C) or (B, T, C)
      x = x + (pe if pe.ndim == 3 else pe[None])  # (B, T, C)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)

    block = Block
    if REMAT_POLICIES.get(self.remat) is not None:
      block = nn.remat(Block, policy=REMAT_POLICIES[self.remat], static_argnums=(3,))
    for i in range(self.num_layers):
      x = block(cfg, name=f"h_{i}")(x, positions, train, mask)  # (B, T, C)
    x = _layer_norm(cfg, "ln_f")(x)

    # Output head (the token embedding when tied), in float32 whatever the compute dtype.
    head = wte.embedding.T
    if not self.tie_embeddings:
      head = self.param(
          "lm_head",
          _init(0.02, ("embed", "vocab")),
          (self.embed_dim, self.vocab_size),
          self.param_dtype,
      )
    logits = layers.flat_dot_general(  # (B, T, V)
        x.astype(jnp.float32), head.astype(jnp.float32), (((2,), (0,)), ((), ()))
    )
    return logits


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for a GPT and their defaults (the baby GPT of experiments/textgen)."""
  c = layers.shared_config(
      "mlp_dim", "dropout", "positions", "dtype", "param_dtype", "vocab_multiple"
  )
  # Transformer blocks: > 0.
  c.num_layers = 4
  # Attention heads per block: > 0, dividing embed_dim.
  c.num_heads = 4
  # Width of the residual stream (and of the token embedding): > 0.
  c.embed_dim = 128
  # Context length in tokens: > 0.
  c.block_size = 256
  # Biases in the attention and MLP projections and the LayerNorms: True | False.
  c.use_bias = True
  # Attention kernel: xla (jax.nn.dot_product_attention's XLA path) | cudnn (fused, GPU only).
  c.attention_impl = "xla"
  # Recompute in the backward pass to save memory: none | full | dots (REMAT_POLICIES).
  c.remat = "none"
  # The KV cache of decoding (--mode=sample, serve, export): float (the compute dtype) | int8
  # (per token and head absmax scales; ~3.8x smaller than float32 at head size 64).
  c.kv_cache = "float"
  # The operands of the attention and MLP projections' matmuls (forward and backward), rounded
  # to this dtype with float32 accumulation while activations stay model.dtype, as PyTorch's
  # autocast does: "" (model.dtype) | bfloat16 | float16. On a CPU with AVX512-BF16, float32
  # with bfloat16 here trains 1.3-1.5x faster than float32 (README "## Parallelism").
  c.matmul_dtype = ""
  c.update(layers.decoder_config())
  return c


def make(cfg, vocab_size: int) -> GPT:
  """Builds a GPT from `config.model`; vocab is rounded up to a multiple of `vocab_multiple`."""
  ints = {
      k: layers.positive_int(cfg, k) for k in ("num_layers", "num_heads", "embed_dim", "block_size")
  }
  heads, width = ints["num_heads"], ints["embed_dim"]
  if width % heads:
    raise UsageError(f"model.embed_dim={width} must be divisible by model.num_heads={heads}")
  positions = cfg.positions
  if positions not in POSITIONS:
    raise UsageError(f"model.positions={positions!r} is unknown; valid: {', '.join(POSITIONS)}")
  if positions == "rotary" and (width // heads) % 2:
    raise UsageError(
        f"model.positions='rotary' needs an even head size, but model.embed_dim="
        f"{width} / model.num_heads={heads} = {width // heads}"
    )
  mlp_dim = layers.mlp_dim(cfg)
  settings = layers.dropout_and_dtypes(cfg)
  dropout, dtypes = settings.pop("dropout"), settings
  impl = cfg.attention_impl
  if impl not in ATTENTION_IMPLS:
    raise UsageError(
        f"model.attention_impl={impl!r} is unknown; valid: {', '.join(ATTENTION_IMPLS)}"
    )
  head_dim = width // heads
  if impl == "cudnn" and (dtypes["dtype"] == jnp.float32 or head_dim % 8 or head_dim > 256):
    raise UsageError(  # cuDNN's fused attention has no float32 kernel and fixed head sizes
        f"model.attention_impl='cudnn' needs model.dtype bfloat16 or float16 and a head size "
        f"(model.embed_dim / model.num_heads = {head_dim}) that is a multiple of 8 and <= 256"
    )
  remat = cfg.remat
  if remat not in REMAT_POLICIES:
    raise UsageError(f"model.remat={remat!r} is unknown; valid: {', '.join(REMAT_POLICIES)}")
  arch = layers.decoder_options(cfg, heads, positions)
  if cfg.kv_cache not in kv_cache.KINDS:
    valid = ", ".join(kv_cache.KINDS)
    raise UsageError(f"model.kv_cache={cfg.kv_cache!r} is unknown; valid: {valid}")
  multiple = layers.vocab_multiple(cfg)
  matmul_dtype = cfg.matmul_dtype
  if matmul_dtype and matmul_dtype not in layers.DTYPES:
    valid = ", ".join(['""', *layers.DTYPES])
    raise UsageError(f"model.matmul_dtype={matmul_dtype!r} is unknown; valid: {valid}")
  if vocab_size <= 0:
    raise UsageError(f"vocab_size={vocab_size} must be positive")
  return GPT(
      vocab_size=-(-vocab_size // multiple) * multiple,
      mlp_dim=mlp_dim,
      dropout=dropout,
      positions=positions,
      use_bias=bool(cfg.use_bias),
      attention_impl=ATTENTION_IMPLS[impl],
      remat=remat,
      kv_cache=cfg.kv_cache,
      matmul_dtype=layers.DTYPES.get(matmul_dtype),
      **arch,
      **ints,
      **dtypes,
  )


def param_count(params) -> int:
  """Number of scalars in a params tree (arrays, ShapeDtypeStructs or boxed values)."""
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(params)))


def flops_per_token(model: GPT) -> float:
  """Training FLOPs per token (forward + backward), as in the PaLM paper (appendix B):

    6 * N + 12 * num_layers * block_size * embed_dim

  where N = non-embedding parameters + vocab_size * embed_dim (the tied lm-head matmul; the
  embedding lookups themselves cost nothing), and the second term is the attention scores and
  weighted sum (QK^T and AV) over a full context.
  """
  shapes = jax.eval_shape(
      model.clone(decode=False).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32)
  )["params"]
  embedding = param_count({k: v for k, v in shapes.items() if k in ("wte", "wpe", "lm_head")})
  n = param_count(shapes) - embedding + model.vocab_size * model.embed_dim
  return float(6 * n + 12 * model.num_layers * model.block_size * model.embed_dim)
