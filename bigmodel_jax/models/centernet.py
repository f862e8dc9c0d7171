"""CenterNet (Zhou et al. 2019, "Objects as Points"): an anchor-free detector on a small ResNet.

  stem:     3x3 conv of model.widths[0] channels, stride 2, BatchNorm, ReLU        -> stride 2
  stage i:  model.stage_sizes[i] basic blocks (resnet.BasicBlock) of model.widths[i] channels; the
            first block of every stage after the first halves the resolution      -> stride 2^(i+1)
  neck:     top-down merge (as in an FPN) back to stride 4, the output stride: each deeper map is
            upsampled 2x (nearest) and added to a 1x1 projection of the stage above it, then a
            3x3 conv + BN + ReLU; every stage's output thus reaches the heads (receptive field)
  heads:    on the stride-4 map, each a 3x3 conv of model.head_width + ReLU and a 1x1 conv:
            heatmap  num_classes logits per cell (sigmoid: "an object of class c is centred here");
                     the bias starts at -log((1 - 0.01) / 0.01) so every cell starts at p = 0.01,
                     as in the paper and RetinaNet (else the many empty cells swamp the first steps)
            size     log(width), log(height) of the box in output cells
            offset   where the centre lies inside its cell, (dx, dy) in cells

The paper's backbones are much larger (DLA-34, Hourglass-104); for 64x64 canvases on a CPU two or
three small stages are enough. Parameter tree: stem_conv, stem_bn, stage{i}_block{j} (as resnet),
lateral{i}, merge{i}_conv, merge{i}_bn, {heatmap,size,offset}_{hidden,out}; BatchNorm statistics in
"batch_stats" (see resnet.py for how the trainer treats them).
Inputs normalised float images (B, H, W, C), H and W multiples of 2^len(widths); outputs
{"heatmap": (B, H/4, W/4, num_classes), "size": (B, H/4, W/4, 2), "offset": (B, H/4, W/4, 2)}.
"""

from collections.abc import Sequence
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import cnn, resnet

STRIDE = 4  # input pixels per output cell
PRIOR = 0.01  # the heatmap's starting probability


class CenterNet(nn.Module):
  num_classes: int
  widths: Sequence[int]
  stage_sizes: Sequence[int]
  head_width: int

  @nn.compact
  def __call__(self, x, train: bool = False) -> dict:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    x = nn.Conv(self.widths[0], (3, 3), strides=2, use_bias=False, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))  # (B, H/2, W/2, widths[0])
    features = []  # stage i: (B, H/2^(i+1), W/2^(i+1), widths[i])
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(size):
        x = resnet.BasicBlock(width, 2 if i > 0 and j == 0 else 1, name=f"stage{i}_block{j}")(
            x, train
        )
      features.append(x)
    # Top-down, from the deepest stage to stage 1 (stride 4).
    for i in range(len(features) - 2, 0, -1):
      b, h, w, c = x.shape
      up = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
      lateral = nn.Conv(c, (1, 1), name=f"lateral{i}")(features[i])
      x = nn.Conv(self.widths[i], (3, 3), use_bias=False, name=f"merge{i}_conv")(up + lateral)
      x = nn.relu(norm(name=f"merge{i}_bn")(x))  # (B, H/4 at i=1, W/4, widths[i])

    def head(name, features, bias_init=None):
      y = nn.relu(nn.Conv(self.head_width, (3, 3), name=f"{name}_hidden")(x))
      init = bias_init or nn.initializers.zeros_init()
      return nn.Conv(features, (1, 1), bias_init=init, name=f"{name}_out")(y)

    prior = nn.initializers.constant(-math.log((1 - PRIOR) / PRIOR))
    return {
        "heatmap": head("heatmap", self.num_classes, prior).astype(jnp.float32),
        "size": head("size", 2).astype(jnp.float32),
        "offset": head("offset", 2).astype(jnp.float32),
    }


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for CenterNet and their defaults."""
  c = ml_collections.ConfigDict()
  # Channels of each stage (the stem has widths[0]): positive integers, at least two stages (the
  # output is stage 1's resolution, stride 4).
  c.widths = (16, 32, 64)
  # Basic blocks per stage: positive integers, as many as widths.
  c.stage_sizes = (1, 2, 2)
  # Channels of the 3x3 conv in each head: >= 1.
  c.head_width = 64
  return c


def make(cfg, num_classes: int) -> CenterNet:
  cnn.check_stages(cfg)
  if len(cfg.widths) < 2 or cfg.head_width < 1:
    raise UsageError(
        f"model.widths={tuple(cfg.widths)} needs at least 2 stages (the output is stride 4) "
        f"and model.head_width={cfg.head_width} must be >= 1"
    )
  return CenterNet(
      num_classes=num_classes,
      widths=tuple(cfg.widths),
      stage_sizes=tuple(cfg.stage_sizes),
      head_width=cfg.head_width,
  )
