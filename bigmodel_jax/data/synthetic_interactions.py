"""The offline default of `recsys`: generated interactions with planted structure and skew.

A deterministic (data.seed) stand-in for a catalog's logs, built so that a model has something
real to learn and a popularity ranking is a fair but beatable baseline:

  - items belong to one of data.topics topics; users like a few topics (Dirichlet(0.3) weights,
    so most users have one or two favourites);
  - taste within a topic: user and item vectors in 8 dimensions, a dot product on top;
  - popularity: item i's base rate follows a Zipf law, rank^-data.popularity_exponent over a
    shuffled item order (the default data: the top 1% of items get 9.7% of the training
    interactions, the top 10% 39%, the top half 80%; a long tail as in MovieLens);
  - user u picks item i with probability proportional to
      exp(log topic_weight[u, topic[i]] + 1.5 * taste[u] . taste[i] + log popularity[i]),
    without replacement, data.interactions_per_user on average (at least 5; lognormal
    spread, as activity is long-tailed), in a random order that becomes their timestamps.

Side features, for models that use them (two_tower): an item's topic as a one-hot vector (right
for 90% of items, a random topic otherwise, as catalog metadata is noisy) and a user's favourite
topic as a one-hot vector (right for 70% of users: what a user says they like is a weaker signal).
"""

import numpy as np

from bigmodel_jax.data import interactions
from bigmodel_jax.errors import UsageError

TASTE_DIM = 8
TASTE_SCALE = 1.5  # how much within-topic taste weighs against topic and popularity


def generate(d) -> interactions.Interactions:
  for key in ("num_users", "num_items", "topics", "interactions_per_user"):
    if d[key] < 1:
      raise UsageError(f"data.{key}={d[key]} must be a positive integer")
  if d.interactions_per_user >= d.num_items:
    raise UsageError(
        f"data.interactions_per_user={d.interactions_per_user} must be below "
        f"data.num_items={d.num_items}"
    )
  if d.popularity_exponent < 0:
    raise UsageError(f"data.popularity_exponent={d.popularity_exponent} must be >= 0")
  rng = np.random.default_rng(d.seed)
  num_users, num_items, topics = d.num_users, d.num_items, d.topics

  # --- planted structure --------------------------------------------------------------------
  item_topic = rng.integers(topics, size=num_items)
  topic_weight = rng.dirichlet(np.full(topics, 0.3), size=num_users)  # (U, topics)
  user_taste = rng.normal(size=(num_users, TASTE_DIM)) / np.sqrt(TASTE_DIM)
  item_taste = rng.normal(size=(num_items, TASTE_DIM))
  popularity = rng.permutation(np.arange(1, num_items + 1) ** -float(d.popularity_exponent))
  logits = (
      np.log(topic_weight[:, item_topic] + 1e-6)
      + TASTE_SCALE * user_taste @ item_taste.T
      + np.log(popularity)
  )  # (U, I)

  # --- sampling -----------------------------------------------------------------------------
  # Lognormal activity (sigma 0.8), mean interactions_per_user, at least 5, below num_items.
  mean = d.interactions_per_user
  counts = rng.lognormal(np.log(mean) - 0.32, 0.8, size=num_users)
  counts = np.clip(np.round(counts), min(5, num_items - 1), num_items - 1).astype(int)
  # Gumbel top-k: k items without replacement, each draw proportional to exp(logit).
  gumbel = logits + rng.gumbel(size=logits.shape)
  ranked = np.argsort(-gumbel, axis=1)
  users = np.repeat(np.arange(num_users, dtype=np.int32), counts)
  items = np.concatenate([rng.permutation(ranked[u, : counts[u]]) for u in range(num_users)])
  times = np.concatenate([np.arange(c, dtype=np.float64) for c in counts])

  # --- noisy side features ------------------------------------------------------------------
  listed_topic = np.where(
      rng.random(num_items) < 0.9, item_topic, rng.integers(topics, size=num_items)
  )
  favourite = np.where(
      rng.random(num_users) < 0.7,
      topic_weight.argmax(1),
      rng.integers(topics, size=num_users),
  )
  eye = np.eye(topics, dtype=np.float32)
  return interactions.Interactions(
      users=users,
      items=items.astype(np.int32),
      times=times,
      user_ids=[f"u{u}" for u in range(num_users)],
      item_ids=[f"i{i}" for i in range(num_items)],
      description=(
          f"synthetic: {len(users)} interactions of {num_users} users with {num_items} items "
          f"in {topics} topics (Zipf popularity exponent {d.popularity_exponent}, seed {d.seed})"
      ),
      user_features=eye[favourite],
      item_features=eye[listed_topic],
  )
