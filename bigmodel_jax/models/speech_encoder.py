"""A speech encoder for CTC: convolutional subsampling + Transformer (or Conformer-style) blocks.

Input: normalised log-mel features float32 (B, T, M) and real frame counts (B,). Output: float32
logits (B, T', vocab) over CTC labels (0 = blank) at T' = T / time_stride frames (rounded up),
with the real output frame counts (B,).

  2 x [Conv 3x3, GELU], strides 2 in frequency and 2 x time_stride / 2 in time
  -> (B, T', M/4, C) -> Dense(embed)
  -> num_layers x [text_encoder.Block (pre-LN self-attention + MLP, rotary positions, padding mask)
                   (+ conv_kernel > 0: x + ConvModule(ln(x)), the Conformer's convolution module)]
  -> ln_f -> head

The Transformer blocks are models/text_encoder.py's, shared, not copied. CTC needs at least one
output frame per character (two for a doubled one): fast eSpeak speech (230 words/min) runs at
~45 ms a character, so time_stride 2 (20 ms frames from 10 ms ones) is the default; 4 halves the
encoder's work for slower speech. Rotary positions give attention relative offsets, so any input
length works.

Parameter tree: subsample_{0,1}/{kernel,bias}, input/{kernel,bias}, block_{i}/... (as in
text_encoder), conv_{i}/{ln,pointwise_in,depthwise,pointwise_out}/..., ln_f, head/{kernel,bias}.
"""

from typing import Any

from flax import linen as nn
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import layers
from bigmodel_jax.models.text_encoder import Block

TIME_STRIDES = (2, 4)


def output_frames(frames, time_stride: int):
  """Frames after subsampling (SAME padding: ceil(T / stride) per convolution)."""
  frames = (frames + 1) // 2
  return (frames + 1) // 2 if time_stride == 4 else frames


class ConvModule(nn.Module):
  """Conformer (Gulati et al. 2020) convolution module: pointwise + GLU, depthwise conv over
  time, LayerNorm (for BatchNorm: no batch statistics to carry), swish, pointwise."""

  kernel: int
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, mask):  # x (B, T, C), mask (B, T)
    width = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = layers.layer_norm("ln", **kw)(x)
    y = nn.glu(nn.Dense(2 * width, name="pointwise_in", **kw)(y))  # (B, T, C)
    y = jnp.where(mask[..., None], y, 0)  # padding must not leak into real frames
    y = nn.Conv(width, (self.kernel,), feature_group_count=width, name="depthwise", **kw)(y)
    y = nn.swish(layers.layer_norm("ln_conv", **kw)(y))
    return x + nn.Dense(width, name="pointwise_out", **kw)(y)


class SpeechEncoder(nn.Module):
  """features (B, T, M), lengths (B,) -> (logits (B, T', vocab), lengths (B,))."""

  vocab_size: int  # CTC labels including the blank 0
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int  # 0 -> 4 * embed_dim
  conv_channels: int
  time_stride: int  # 2 | 4
  conv_kernel: int  # 0: Transformer blocks only
  dropout: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, features, lengths, *, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = features[..., None].astype(self.dtype)  # (B, T, M, 1)
    for i, stride in enumerate(((2, 2), (self.time_stride // 2, 2))):
      x = nn.gelu(nn.Conv(self.conv_channels, (3, 3), stride, name=f"subsample_{i}", **kw)(x))
    b, t, m, c = x.shape  # (B, T', M/4, C)
    x = nn.Dense(self.embed_dim, name="input", **kw)(x.reshape(b, t, m * c))  # (B, T', E)
    lengths = output_frames(lengths, self.time_stride)
    mask = jnp.arange(t)[None, :] < lengths[:, None]  # (B, T')
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.num_layers):
      x = Block(
          num_heads=self.num_heads,
          hidden_dim=self.mlp_dim or 4 * self.embed_dim,
          dropout=self.dropout,
          residual_std=0.02 / (2 * self.num_layers) ** 0.5,
          rotary=True,
          name=f"block_{i}",
          **kw,
      )(
          x, mask[:, None, None, :], jnp.arange(t), train=train
      )  # keys: the valid frames
      if self.conv_kernel:
        x = ConvModule(self.conv_kernel, name=f"conv_{i}", **kw)(x, mask)
    x = layers.layer_norm("ln_f", **kw)(x)
    logits = nn.Dense(self.vocab_size, name="head", **kw)(x)
    return logits.astype(jnp.float32), lengths  # (B, T', V), (B,)


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for a SpeechEncoder and their defaults."""
  c = layers.shared_config("mlp_dim", "dropout", "dtype", "param_dtype")
  # Transformer blocks: > 0.
  c.num_layers = 4
  # Attention heads per block: > 0, dividing embed_dim.
  c.num_heads = 4
  # Width of every block: > 0.
  c.embed_dim = 96
  # Channels of the two subsampling convolutions: > 0.
  c.conv_channels = 16
  # Input frames per output frame: 2 | 4 (see the module docstring).
  c.time_stride = 2
  # Frames of the depthwise convolution of a Conformer module after every block; 0: none.
  c.conv_kernel = 15
  return c


def make(cfg, vocab_size: int) -> SpeechEncoder:
  for key in ("num_layers", "num_heads", "embed_dim", "conv_channels"):
    layers.positive_int(cfg, key)
  if cfg.embed_dim % cfg.num_heads:
    raise UsageError(
        f"model.embed_dim={cfg.embed_dim} must be divisible by model.num_heads={cfg.num_heads}"
    )
  if cfg.time_stride not in TIME_STRIDES:
    raise UsageError(f"model.time_stride={cfg.time_stride} is not valid; valid: 2, 4")
  if cfg.conv_kernel < 0:
    raise UsageError(f"model.conv_kernel={cfg.conv_kernel} must be >= 0 (0: no conv modules)")
  return SpeechEncoder(
      vocab_size=vocab_size,
      num_layers=cfg.num_layers,
      num_heads=cfg.num_heads,
      embed_dim=cfg.embed_dim,
      mlp_dim=layers.mlp_dim(cfg),
      conv_channels=cfg.conv_channels,
      time_stride=int(cfg.time_stride),
      conv_kernel=int(cfg.conv_kernel),
      **layers.dropout_and_dtypes(cfg),
  )
