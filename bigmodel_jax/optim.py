"""Optimizer: AdamW with linear warmup + cosine decay, global-norm clipping, a weight-decay mask."""

import jax
import optax


def learning_rate_schedule(t) -> optax.Schedule:
  """Linear warmup from 0 to train.learning_rate, then cosine decay to min_lr_ratio of it."""
  warmup = min(t.warmup_steps, max(t.steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=warmup,
      decay_steps=max(t.steps, warmup + 1), end_value=t.learning_rate * t.min_lr_ratio)


def decay_mask(params, decay_embeddings: bool = False):
  """True where weight decay applies: matrices, not biases, norms or (by default) embeddings."""

  def decays(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    if name in ("bias", "scale"):
      return False
    if name == "embedding" or any("wte" in str(p) or "wpe" in str(p) for p in path):
      return decay_embeddings
    return True

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(t) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`t` is config.train. Returns the transformation and its learning-rate schedule."""
  schedule = learning_rate_schedule(t)
  parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
  parts.append(optax.adamw(
      schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay,
      mask=lambda p: decay_mask(p, t.decay_embeddings)))
  return optax.chain(*parts), schedule
