"""A small class-conditional U-Net (Ho et al. 2020's layout, shrunk) for image generation.

  in:      x (B, H, W, C) a noisy image, t (B,) the time in [0, 1], label (B,) a class id, or
           num_classes for "no class" (classifier-free guidance trains and samples with it)
  embed:   sinusoidal(t) -> layers.MLP (Dense 4w -> GELU -> Dense w) + a learned class embedding
  down:    level i: model.blocks residual blocks of model.widths[i] channels, then a stride-2 conv
           (not after the last level); every block's output is kept as a skip
  middle:  two residual blocks at the lowest resolution
  up:      level i (reversed): model.blocks + 1 residual blocks, each on [x, skip] concatenated,
           then a resize to the next skip's size and a 3x3 conv (resizing to the skip's own size,
           not x2, keeps odd sizes such as MNIST's 7x7 level exact)
  out:     GroupNorm -> SiLU -> 3x3 conv to C channels, zero-initialised (the model starts at 0)

A residual block: GroupNorm -> SiLU -> conv3x3 -> + Dense(SiLU(embedding)) -> GroupNorm -> SiLU ->
dropout -> conv3x3 (zero-initialised, so each block starts as the identity), plus the input
(through a 1x1 conv when the width changes). No attention: at 8x8 to 32x32 and this width the
3x3 convs of the lowest level already see the whole image.

Parameter tree: time_mlp/{fc,proj}, label_embed, stem, down{i}_{j}, downsample{i}, mid{0,1},
up{i}_{j}, upsample{i}, out_norm, out_conv.
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import layers


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
  """t (B,) in [0, 1] -> (B, dim) sines and cosines of t * 1000 at geometric frequencies."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = 1000.0 * t[:, None].astype(jnp.float32) * freqs[None]  # (B, half)
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _norm(channels: int, groups: int, dtype, param_dtype, name: str):
  # GroupNorm over gcd(groups, channels) groups, so any width works.
  return nn.GroupNorm(
      num_groups=math.gcd(groups, channels), dtype=dtype, param_dtype=param_dtype, name=name
  )


class ResBlock(nn.Module):
  width: int
  groups: int
  dropout: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, emb, *, train: bool):  # x (B, H, W, Cin), emb (B, E) -> (B, H, W, width)
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda w, k, name, **kw: nn.Conv(w, (k, k), name=name, **dt, **kw)  # noqa: E731
    norm = lambda c, name: _norm(c, self.groups, self.dtype, self.param_dtype, name)  # noqa: E731
    h = conv(self.width, 3, "conv1")(nn.silu(norm(x.shape[-1], "norm1")(x)))
    h = h + nn.Dense(self.width, name="emb", **dt)(nn.silu(emb))[:, None, None, :]
    h = nn.silu(norm(self.width, "norm2")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(self.width, 3, "conv2", kernel_init=nn.initializers.zeros_init())(h)
    if x.shape[-1] != self.width:
      x = conv(self.width, 1, "skip")(x)
    return x + h


class UNet(nn.Module):
  num_classes: int
  widths: Sequence[int]
  blocks: int
  groups: int
  dropout: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, t, label, *, train: bool = False):  # -> (B, H, W, C) float32
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    block = lambda w, name: ResBlock(w, self.groups, self.dropout, name=name, **dt)  # noqa: E731
    conv = lambda w, name, **kw: nn.Conv(w, (3, 3), name=name, **dt, **kw)  # noqa: E731
    w0 = self.widths[0]
    emb = layers.MLP(
        hidden_dim=4 * w0, fc_std=0.02, proj_std=0.02, dropout=0.0, name="time_mlp", **dt
    )(
        timestep_embedding(t, w0), train=train
    )  # (B, w0)
    # Row num_classes is "no class": the unconditional model of classifier-free guidance.
    emb = emb + nn.Embed(self.num_classes + 1, w0, name="label_embed", **dt)(label)

    h = conv(w0, "stem")(x.astype(self.dtype))
    skips = [h]
    for i, width in enumerate(self.widths):
      for j in range(self.blocks):
        h = block(width, f"down{i}_{j}")(h, emb, train=train)
        skips.append(h)
      if i < len(self.widths) - 1:
        h = conv(width, f"downsample{i}", strides=(2, 2))(h)
        skips.append(h)
    h = block(self.widths[-1], "mid0")(h, emb, train=train)
    h = block(self.widths[-1], "mid1")(h, emb, train=train)
    for i, width in reversed(list(enumerate(self.widths))):
      for j in range(self.blocks + 1):
        h = block(width, f"up{i}_{j}")(jnp.concatenate([h, skips.pop()], -1), emb, train=train)
      if i > 0:
        b, _, _, c = h.shape
        size = skips[-1].shape[1:3]
        h = conv(c, f"upsample{i}")(jax.image.resize(h, (b, *size, c), "nearest"))
    h = nn.silu(_norm(h.shape[-1], self.groups, self.dtype, self.param_dtype, "out_norm")(h))
    out = conv(x.shape[-1], "out_conv", kernel_init=nn.initializers.zeros_init())(h)
    return out.astype(jnp.float32)


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for a U-Net and their defaults."""
  c = layers.shared_config("dropout", "dtype", "param_dtype")
  # Channels of each resolution level (each level after the first halves the size): positive
  # integers, at least one.
  c.widths = (32, 64)
  # Residual blocks per level on the way down (the way up has one more): >= 1.
  c.blocks = 2
  # GroupNorm groups (gcd with each width, so any width works): >= 1.
  c.groups = 8
  return c


def make(cfg, num_classes: int) -> UNet:
  widths = tuple(cfg.widths)
  if not widths or min(widths) < 1:
    raise UsageError(f"model.widths={widths} must be a non-empty tuple of positive integers")
  return UNet(
      num_classes=num_classes,
      widths=widths,
      blocks=layers.positive_int(cfg, "blocks"),
      groups=layers.positive_int(cfg, "groups"),
      **layers.dropout_and_dtypes(cfg),
  )
