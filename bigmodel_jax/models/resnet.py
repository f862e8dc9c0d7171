"""ResNet with basic blocks (He et al. 2016), shaped for small images (CIFAR-style stem).

  stem:    3x3 conv of model.widths[0] channels, BatchNorm, ReLU (no stride, no max-pool: the
           images are 8x8 to 32x32)
  stage i: model.stage_sizes[i] basic blocks of model.widths[i] channels; the first block of every
           stage after the first halves the resolution (stride 2) and projects its shortcut with a
           1x1 conv + BatchNorm
  head:    global average pool -> dense num_classes

A basic block is conv3x3-BN-ReLU-conv3x3-BN, added to the shortcut, then ReLU. The second BN's scale
starts at zero, so every block starts as the identity (Goyal et al. 2017).

BatchNorm statistics live in the "batch_stats" collection. Training (train=True) normalises with the
batch's statistics and updates the running averages (apply with mutable=["batch_stats"]); evaluation
uses the running averages. Under pmap each device normalises with its own slice of the batch (no
cross-device sync) and the trainer averages batch_stats over devices after each step; under the mesh
strategy the statistics are the whole batch's, so the two strategies differ slightly for this model.

Parameter tree: stem/conv, stem/bn, stage{i}_block{j}/{conv1,bn1,conv2,bn2[,proj_conv,proj_bn]},
head/{kernel,bias}.
"""

from collections.abc import Sequence
import functools

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.models import cnn


class BasicBlock(nn.Module):
  width: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    conv = functools.partial(nn.Conv, use_bias=False)
    y = conv(self.width, (3, 3), strides=self.stride, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.width, (3, 3), name="conv2")(y)
    y = norm(name="bn2", scale_init=nn.initializers.zeros_init())(y)
    if x.shape != y.shape:
      x = conv(self.width, (1, 1), strides=self.stride, name="proj_conv")(x)
      x = norm(name="proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  num_classes: int
  widths: Sequence[int]
  stage_sizes: Sequence[int]

  @nn.compact
  def __call__(self, x, train: bool = False):  # (B, H, W, C) -> (B, num_classes)
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False, name="stem_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x)
    x = nn.relu(x)
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(size):
        stride = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(width, stride, name=f"stage{i}_block{j}")(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for a ResNet and their defaults."""
  c = ml_collections.ConfigDict()
  # Channels of each stage's blocks (the stem has widths[0]): positive integers, one per stage.
  c.widths = (16, 32, 64)
  # Basic blocks per stage: positive integers, as many as widths.
  c.stage_sizes = (2, 2, 2)
  return c


def make(cfg, num_classes: int) -> ResNet:
  cnn.check_stages(cfg)
  return ResNet(
      num_classes=num_classes, widths=tuple(cfg.widths), stage_sizes=tuple(cfg.stage_sizes)
  )
