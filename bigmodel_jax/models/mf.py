"""Matrix factorisation: a user vector and an item vector (plus an item bias) per id.

score(u, i) = user[u] . item[i] + bias[i]. The bias lets the item vectors spend their dimensions
on taste rather than on popularity, which the bias carries.

Every recommendation model (mf, two_tower) has the same three entry points, so the task never
asks which one it has:
  users(user)  int (B,) -> float32 (B, D)
  items(item)  int (N,) -> (float32 (N, D), float32 (N,) bias)
  __call__(user, item)  -> float32 (B,) the scores of the pairs (used to initialise)

Parameter tree: user_embedding/embedding (U, D), item_embedding/embedding (I, D), item_bias (I,).
"""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import layers


class MF(nn.Module):
  num_users: int
  num_items: int
  embed_dim: int
  init_std: float

  def setup(self):
    init = nn.initializers.normal(self.init_std)
    self.user_embedding = nn.Embed(self.num_users, self.embed_dim, embedding_init=init)
    self.item_embedding = nn.Embed(self.num_items, self.embed_dim, embedding_init=init)
    self.item_bias = self.param("item_bias", nn.initializers.zeros_init(), (self.num_items,))

  def users(self, user):  # (B,) -> (B, D)
    return self.user_embedding(user)

  def items(self, item):  # (N,) -> (N, D), (N,)
    return self.item_embedding(item), self.item_bias[item]

  def __call__(self, user, item):  # (B,), (B,) -> (B,)
    vectors, bias = self.items(item)
    return jnp.sum(self.users(user) * vectors, -1) + bias


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Size of the user and item vectors: a positive integer.
  c.embed_dim = 32
  # Standard deviation of the initial vectors: > 0 (small, so the first scores are near 0).
  c.init_std = 0.1
  return c


def check(cfg) -> dict:
  """The fields mf and two_tower share, checked: {embed_dim, init_std}."""
  if not cfg.init_std > 0:
    raise UsageError(f"model.init_std={cfg.init_std} must be > 0")
  return {"embed_dim": layers.positive_int(cfg, "embed_dim"), "init_std": float(cfg.init_std)}


def make(cfg, num_users: int, num_items: int, **unused_features) -> MF:
  return MF(num_users=num_users, num_items=num_items, **check(cfg))
