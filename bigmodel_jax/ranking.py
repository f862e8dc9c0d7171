"""Top-k ranking metrics over ALL items (no sampled negatives), for recommendation.

One implementation, in jax.numpy, serves the device eval step, the host-side popular baseline and
the benchmark's ALS, so every number in a comparison is computed the same way. For each user the
candidates are every item except the user's training items (`seen`); the top k by score form the
list (ties: the lower item index first, as `lax.top_k` orders them), and against the user's
held-out items (`targets`):

  recall@k    hits in the list / number of held-out items
  hit_rate@k  1 if any held-out item is in the list
  ndcg@k      DCG / ideal DCG, DCG = sum over list positions j (0-based) of hit_j / log2(j + 2);
              the ideal puts min(k, held-out) hits first (binary relevance, as sklearn's
              ndcg_score computes it)

With one held-out item per user (leave-last-out) recall@k equals hit_rate@k.
"""

import jax
import jax.numpy as jnp

K = 10
NAMES = (f"recall_at_{K}", f"ndcg_at_{K}", f"hit_rate_at_{K}")


def top_k_metrics(scores, seen, targets, k: int = K) -> dict[str, jax.Array]:
  """scores float (B, I); seen bool (B, I), excluded; targets int (B, H), -1 = none.

  -> {recall_at_k, ndcg_at_k, hit_rate_at_k: float32 (B,)}; 0 for a row without targets."""
  masked = jnp.where(seen, -jnp.inf, scores.astype(jnp.float32))
  _, top = jax.lax.top_k(masked, k)  # (B, k) item indices, best first
  valid = targets >= 0  # (B, H)
  hits = ((top[:, :, None] == targets[:, None, :]) & valid[:, None, :]).any(-1)  # (B, k)
  n = valid.sum(-1)  # (B,)
  discount = 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)  # (k,)
  dcg = (hits * discount).sum(-1)
  ideal = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(discount)])[jnp.minimum(n, k)]
  found = hits.sum(-1).astype(jnp.float32)
  return {
      f"recall_at_{k}": jnp.where(n > 0, found / jnp.maximum(n, 1), 0.0),
      f"ndcg_at_{k}": jnp.where(n > 0, dcg / jnp.where(n > 0, ideal, 1.0), 0.0),
      f"hit_rate_at_{k}": (found > 0).astype(jnp.float32),
  }
