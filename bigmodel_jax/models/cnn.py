"""A small CNN for image classification: stages of 3x3 conv + ReLU, each ending in a 2x2 max-pool,
then a hidden dense layer and the classifier.

  stage i: model.stage_sizes[i] convs of model.widths[i] channels, then max-pool (SAME padding, so
           odd sizes round up and nothing shrinks to zero)
  head:    flatten -> dense model.hidden + ReLU -> dropout model.dropout -> dense num_classes

Parameter tree: conv{i}_{j}/{kernel,bias}, hidden/{kernel,bias}, head/{kernel,bias}.
Inputs are normalised float images (B, H, W, C); outputs logits (B, num_classes).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import layers


class CNN(nn.Module):
  num_classes: int
  widths: Sequence[int]
  stage_sizes: Sequence[int]
  hidden: int
  dropout: float

  @nn.compact
  def __call__(self, x, train: bool = False):  # (B, H, W, C) -> (B, num_classes)
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(size):
        x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}_{j}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape(x.shape[0], -1)
    if self.hidden:
      x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for a CNN and their defaults."""
  c = layers.shared_config("dropout")  # before the classifier only
  # Channels of each stage's convs: positive integers, one per stage.
  c.widths = (32, 64)
  # 3x3 convs per stage (each stage then max-pools): positive integers, as many as widths.
  c.stage_sizes = (1, 1)
  # Width of the dense layer before the classifier: >= 0; 0 = none.
  c.hidden = 128
  return c


def check_stages(cfg) -> None:
  """widths and stage_sizes: equally long tuples of positive integers (shared with resnet)."""
  widths, sizes = tuple(cfg.widths), tuple(cfg.stage_sizes)
  if not widths or len(widths) != len(sizes) or min(widths + sizes) < 1:
    raise UsageError(
        f"model.widths={widths} and model.stage_sizes={sizes} must be equally long "
        "tuples of positive integers (one width and one depth per stage)"
    )


def make(cfg, num_classes: int) -> CNN:
  check_stages(cfg)
  if cfg.hidden < 0 or not 0 <= cfg.dropout < 1:
    raise UsageError(
        f"model.hidden={cfg.hidden} must be >= 0 and model.dropout={cfg.dropout} in [0, 1)"
    )
  return CNN(
      num_classes=num_classes,
      widths=tuple(cfg.widths),
      stage_sizes=tuple(cfg.stage_sizes),
      hidden=cfg.hidden,
      dropout=cfg.dropout,
  )
