"""A multilayer perceptron: Dense + ReLU for each of model.hidden_sizes, then a linear output.

For binary classification the output is one unbounded logit per row (num_outputs=1); the task
applies the sigmoid inside its loss (sigmoid binary cross-entropy on logits) and for probabilities.

Parameter tree: hidden_{i}/{kernel,bias}, out/{kernel,bias}. No logical axis names: the layers are
a few hundred parameters wide (feature counts rarely divide over a mesh axis), so the mesh strategy
replicates them.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import layers


class MLP(nn.Module):
  hidden_sizes: Sequence[int]
  num_outputs: int
  dropout: float

  @nn.compact
  def __call__(self, x, train: bool = False):  # (B, features) -> (B, num_outputs)
    for i, size in enumerate(self.hidden_sizes):
      x = nn.Dense(size, name=f"hidden_{i}")(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    return nn.Dense(self.num_outputs, name="out")(x).astype(jnp.float32)


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for an MLP and their defaults (the founding notes' 20 -> 10)."""
  c = layers.shared_config("dropout")  # after each hidden layer's ReLU
  # Width of each hidden layer, input side first: positive integers; () = a linear model.
  c.hidden_sizes = (20, 10)
  return c


def make(cfg, num_outputs: int = 1) -> MLP:
  sizes = tuple(cfg.hidden_sizes)
  if any(not isinstance(s, int) or s < 1 for s in sizes):
    raise UsageError(f"model.hidden_sizes={sizes} must be positive integers, e.g. (20, 10)")
  if not 0 <= cfg.dropout < 1:
    raise UsageError(f"model.dropout={cfg.dropout} must be in [0, 1)")
  return MLP(hidden_sizes=sizes, num_outputs=num_outputs, dropout=cfg.dropout)
