"""A Vision Transformer (Dosovitskiy et al. 2021): images as sequences of patches.

Input: normalised float images (B, H, W, C), H and W multiples of model.patch_size. Output: logits
(B, num_classes), or with num_classes=0 the pooled features (B, embed_dim) (the encoder that ssl
pretrains and imagecls fine-tunes).

  patches (p x p x C, flattened) -> patch_embed (Dense) [+ cls] + pos_embed -> dropout
  -> num_layers x [x + attn(ln(x)), x + mlp(ln(x))] -> ln_f -> pool -> dropout -> head

The blocks are text_encoder.Block: the same pre-LayerNorm bidirectional Transformer block the text
classifiers use, with every position attending to every other (an all-true mask). Pooling:
"first" prepends a learned class token and reads its output (as ViT and BERT); "mean" averages
the patch outputs.

Parameter tree (names kept stable: checkpoints depend on them):

  patch_embed/kernel (p*p*C, embed), bias (embed,)
  cls                (embed,)                      pooling "first" only
  pos_embed          (patches [+ 1], embed)        learned positions
  block_{i}/...      as text_encoder.Block (ln_1, attn/{query,key,value,out}, ln_2, mlp/{fc,proj})
  ln_f/{scale,bias}  (norm,)
  head/kernel (embed, classes), bias (classes,)    num_classes > 0 only
"""

from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import layers
from bigmodel_jax.models.text_encoder import Block

POOLING = ("first", "mean")


class ViT(nn.Module):
  """images float (B, H, W, C) -> logits (B, num_classes), or features (B, embed) if 0 classes."""

  num_classes: int
  patch_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int  # 0 -> 4 * embed_dim
  dropout: float
  pooling: str  # "first" | "mean"
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, train: bool = False, frozen: bool = False):
    """`frozen` (a linear probe): no gradient flows into anything before the head."""
    b, h, w, c = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise UsageError(
          f"model.patch_size={p} does not divide the {h}x{w} images; valid: a divisor of both "
          f"({', '.join(str(d) for d in range(1, min(h, w) + 1) if not h % d and not w % d)})"
      )
    patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, (h // p) * (w // p), p * p * c)  # (B, N, p*p*C)
    x = nn.Dense(
        self.embed_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=layers.normal(0.02, (None, "embed")),
        bias_init=layers.zeros(("embed",)),
        dot_general=layers.flat_dot_general,
        name="patch_embed",
    )(
        patches
    )  # (B, N, C')
    if self.pooling == "first":
      cls = self.param("cls", layers.normal(0.02, ("embed",)), (self.embed_dim,), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), x[:, :1].shape), x], axis=1)
    pos = self.param(
        "pos_embed", layers.normal(0.02, ("length", "embed")), x.shape[1:], self.param_dtype
    )
    x = nn.Dropout(self.dropout, deterministic=not train)(x + pos.astype(x.dtype))
    mask = jnp.ones(x.shape[:2], bool)  # (B, T): every token sees every other
    for i in range(self.num_layers):
      x = Block(
          num_heads=self.num_heads,
          hidden_dim=self.mlp_dim or 4 * self.embed_dim,
          dropout=self.dropout,
          residual_std=0.02 / (2 * self.num_layers) ** 0.5,
          rotary=False,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"block_{i}",
      )(
          x, mask[:, None, None, :], jnp.arange(x.shape[1]), train=train
      )  # (B, T, C')
    x = layers.layer_norm("ln_f", dtype=self.dtype, param_dtype=self.param_dtype)(x)
    pooled = x[:, 0] if self.pooling == "first" else x.mean(1)  # (B, C')
    if frozen:
      pooled = jax.lax.stop_gradient(pooled)
    if not self.num_classes:
      return pooled.astype(jnp.float32)
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    logits = nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=layers.normal(0.02, ("embed", None)),
        bias_init=layers.zeros((None,)),
        name="head",
    )(pooled)
    return logits.astype(jnp.float32)  # (B, num_classes)


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for a ViT and their defaults (sized for the 8x8 digits)."""
  c = layers.shared_config("mlp_dim", "dropout", "dtype", "param_dtype")
  # Side of the square patches: > 0, dividing the image's height and width.
  c.patch_size = 2
  # Transformer blocks: > 0.
  c.num_layers = 2
  # Attention heads per block: > 0, dividing embed_dim.
  c.num_heads = 4
  # Width of the patch embedding and of every block: > 0.
  c.embed_dim = 64
  # What the head reads: first (a learned class token) | mean (of the patch outputs).
  c.pooling = "first"
  return c


def make(cfg, num_classes: int) -> ViT:
  """Builds a ViT from config.model; num_classes=0 gives the encoder (pooled features)."""
  ints = {
      k: layers.positive_int(cfg, k) for k in ("patch_size", "num_layers", "num_heads", "embed_dim")
  }
  if ints["embed_dim"] % ints["num_heads"]:
    raise UsageError(
        f"model.embed_dim={ints['embed_dim']} must be divisible by "
        f"model.num_heads={ints['num_heads']}"
    )
  if cfg.pooling not in POOLING:
    raise UsageError(f"model.pooling={cfg.pooling!r} is unknown; valid: {', '.join(POOLING)}")
  return ViT(
      num_classes=num_classes,
      mlp_dim=layers.mlp_dim(cfg),
      pooling=cfg.pooling,
      **ints,
      **layers.dropout_and_dtypes(cfg),
  )
