"""The optimizer and learning-rate schedule that config.train names, with global-norm clipping and
a weight-decay mask chosen by a regex over parameter paths (train.no_decay).

Every optimizer applies weight decay the AdamW way, decoupled from its gradient statistics:
lr(step) * weight_decay * param per step, so train.weight_decay means the same for all of them.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bigmodel_jax.errors import UsageError, did_you_mean

# --- schedules: config.train -> optax.Schedule; step 0 is the first update -----------------------


def _warmup_steps(t) -> int:
  return min(t.warmup_steps, max(t.steps - 1, 0))


def _ramp(start: float, end: float, steps: int) -> optax.Schedule:
  """Linear from start to end over `steps`; a 0-step ramp is already at its end (and optax would
  log a warning for it)."""
  return optax.linear_schedule(start, end, steps) if steps > 0 else optax.constant_schedule(end)


def cosine(t) -> optax.Schedule:
  """Linear warmup from 0 to train.learning_rate, then cosine decay to min_lr_ratio of it."""
  warmup = _warmup_steps(t)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=t.learning_rate,
      warmup_steps=warmup,
      decay_steps=max(t.steps, warmup + 1),
      end_value=t.learning_rate * t.min_lr_ratio,
  )


def linear(t) -> optax.Schedule:
  """Linear warmup, then linear decay to min_lr_ratio of the peak at train.steps."""
  warmup, peak = _warmup_steps(t), t.learning_rate
  return optax.join_schedules(
      [_ramp(0.0, peak, warmup), _ramp(peak, peak * t.min_lr_ratio, t.steps - warmup)], [warmup]
  )


def constant(t) -> optax.Schedule:
  """Linear warmup, then train.learning_rate to the end."""
  warmup, peak = _warmup_steps(t), t.learning_rate
  return optax.join_schedules([_ramp(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])


def wsd(t) -> optax.Schedule:
  """Warmup-stable-decay: linear warmup, constant, then linear decay to min_lr_ratio of the peak
  over the last train.decay_fraction of the steps (never into the warmup). Until the decay the
  rate does not depend on train.steps, so a checkpoint from the stable phase can be trained on
  for longer; under cosine every step's rate depends on the run's length."""
  warmup, peak = _warmup_steps(t), t.learning_rate
  decay = min(round(t.decay_fraction * t.steps), t.steps - warmup)
  return optax.join_schedules(
      [
          _ramp(0.0, peak, warmup),
          optax.constant_schedule(peak),
          _ramp(peak, peak * t.min_lr_ratio, decay),
      ],
      [warmup, t.steps - decay],
  )


SCHEDULES = {"cosine": cosine, "linear": linear, "constant": constant, "wsd": wsd}

# --- optimizers: (config.train, schedule, decay mask) -> optax.GradientTransformation -------------


def _adamw(t, schedule, mask):
  return optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=mask)


def _sgd(t, schedule, mask):
  # optax.sgd with decoupled decay inserted where optax.adamw has it; without momentum there is
  # no trace to keep (optax.sgd does the same).
  return optax.chain(
      optax.trace(decay=t.momentum, nesterov=t.nesterov) if t.momentum else optax.identity(),
      optax.add_decayed_weights(t.weight_decay, mask),
      optax.scale_by_learning_rate(schedule),
  )


def _adafactor(t, schedule, mask):
  # optax.adafactor adds weight_decay_rate * param without the learning rate (0.1 would shrink the
  # weights 10% a step); scaled by the schedule it is AdamW's decoupled decay.
  rate = (lambda step: t.weight_decay * schedule(step)) if t.weight_decay else None
  tx = optax.adafactor(schedule, weight_decay_rate=rate, weight_decay_mask=mask)
  # tx.init sees boxed parameters (nn.Partitioned) and copies their logical axis names onto its
  # statistics: right for Adam's moments, wrong for adafactor's row, column and placeholder ones,
  # whose shapes differ (the mesh strategy fails to shard them). Built unboxed, they replicate.
  return optax.GradientTransformationExtraArgs(lambda p: tx.init(nn.meta.unbox(p)), tx.update)


OPTIMIZERS = {"adamw": _adamw, "sgd": _sgd, "adafactor": _adafactor}

# --- weight-decay mask ---------------------------------------------------------------------------


def param_path(path) -> str:
  """'h_0/attn/query/kernel' for a tree_map_with_path path. The attribute key that boxed
  parameters add (nn.Partitioned's `.value`, as tx.init sees them) is left out, so init and
  update (unboxed) see the same names."""
  return "/".join(
      str(getattr(k, "key", getattr(k, "idx", k)))
      for k in path
      if not isinstance(k, jax.tree_util.GetAttrKey)
  )


def decay_mask(params, no_decay: str):
  """True where weight decay applies: parameters whose path `no_decay` does not match
  (re.search); an empty `no_decay` decays every parameter."""
  pattern = re.compile(no_decay) if no_decay else None
  return jax.tree_util.tree_map_with_path(
      lambda path, _: pattern is None or not pattern.search(param_path(path)), params
  )


def trainable_labels(params, trainable: str, adapters: bool):
  """ "train" or "frozen" for each parameter: with `adapters` (LoRA), those under lora/ and the
  base parameters `trainable` finds (none when it is ""); without, those `trainable` finds."""
  pattern = re.compile(trainable) if trainable else None

  def label(path, _):
    name = param_path(path)
    if adapters and name.startswith("lora/"):
      return "train"
    return "train" if pattern is not None and pattern.search(name) else "frozen"

  return jax.tree_util.tree_map_with_path(label, params)


def trainable_count(params, t, adapters: bool) -> int:
  """How many scalars of `params` the optimizer of make_optimizer(t, adapters) moves."""
  if not (t.trainable or adapters):
    return sum(x.size for x in jax.tree.leaves(params))
  labels = jax.tree.leaves(trainable_labels(params, t.trainable, adapters))
  return sum(x.size for x, label in zip(jax.tree.leaves(params), labels) if label == "train")


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm, written as one multiply by min(1, max_norm / norm).

  optax's form, select(norm < max_norm, g, g / norm * max_norm) per element, is what XLA:CPU
  fuses badly: one clipped AdamW update of the bench's gpt2_small parameters (85M) took 162 ms
  with it and 98 ms this way (1.64x; mid: 1.77x), `python -m bigmodel_jax.tools.clip_bench
  --presets=mid,gpt2_small`. Below max_norm the gradients are multiplied by exactly 1; above it
  the two forms differ by rounding (PyTorch's clip_grad_norm_ multiplies, too).
  """

  def update(updates, state, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(optax.init_empty_state, update)


def make_optimizer(
    t, adapters: bool = False, clip=None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`t` is config.train; `adapters`: the params hold LoRA adapters (lora.enabled(config));
  `clip`: the gradient clipping transformation, given train.grad_clip (None: ours,
  `clip_by_global_norm`; tools/clip_bench passes optax's). Returns the transformation and its
  learning-rate schedule."""
  validate(t)  # (also for configs built in code without config.validate)
  schedule = SCHEDULES[t.schedule](t)
  parts = [(clip or clip_by_global_norm)(t.grad_clip)] if t.grad_clip > 0 else []
  parts.append(
      OPTIMIZERS[t.optimizer](t, schedule, functools.partial(decay_mask, no_decay=t.no_decay))
  )
  tx = optax.chain(*parts)
  if not (t.trainable or adapters):  # everything trains: the state of every run before LoRA
    return tx, schedule
  # Frozen parameters get a zero update (so they stay bit-identical: no decay, no clipping share,
  # no optimizer statistics kept for them); clipping sees only the trainable gradients.
  labels = functools.partial(trainable_labels, trainable=t.trainable, adapters=adapters)
  split = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  # Built from boxed parameters, multi_transform's masks leave MaskedNodes inside nn.Partitioned
  # boxes, which the mesh strategy's sharding tree cannot mirror; built unboxed, the statistics
  # of the trainable parameters are replicated under the mesh strategy (as adafactor's are).
  unboxed = lambda p: split.init(nn.meta.unbox(p))  # noqa: E731
  return optax.GradientTransformationExtraArgs(unboxed, split.update), schedule


def validate(t) -> None:
  """`t` is config.train; raises a one-line UsageError naming the first bad key."""
  for key, valid in (("optimizer", list(OPTIMIZERS)), ("schedule", list(SCHEDULES))):
    if t[key] not in valid:
      raise UsageError(
          f"train.{key}={t[key]!r} is not valid{did_you_mean(t[key], valid)}; "
          f"valid: {', '.join(valid)}"
      )
  if not 0 <= t.momentum < 1:
    raise UsageError(f"train.momentum={t.momentum} must be in [0, 1)")
  if not 0 <= t.decay_fraction <= 1:
    raise UsageError(f"train.decay_fraction={t.decay_fraction} must be in [0, 1]")
  for key in ("no_decay", "trainable"):
    try:
      re.compile(t[key])
    except re.error as e:
      raise UsageError(f"train.{key}={t[key]!r} is not a valid regex: {e}") from None
