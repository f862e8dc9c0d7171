"""Magnitude pruning during training (`config.prune`), as the last link of the optimizer chain.

Zhu & Gupta 2017 (arXiv:1710.01878): between prune.start_step and prune.end_step the sparsity of
each pruned tensor follows the cubic ramp

  s(t) = target * (1 - (1 - (t - start) / (end - start))^3)

and at each step the s(t) * size smallest-magnitude weights of the tensor are masked; from
end_step on the masks stay as they are. With pattern "N:M" (e.g. 2:4) every group of M
consecutive weights along a kernel's input side (lora.split_axes's rows, the axis a matmul sums
over) keeps its N largest from start_step on.

The masks live in the optimizer state (a `PruneState` after the wrapped optimizer's), so they
are part of the train state: checkpoints hold them and a resume restores them exactly. The
update this link emits is `mask * update - (1 - mask) * params`, so after `apply_updates` a
pruned weight is exactly zero, and stays zero whatever the optimizer's moments say. The step
`t` is the count of applied updates (a step skipped for NaN does not advance the ramp).

Which parameters: those whose '/'-joined path prune.params finds (default: every kernel, so not
embeddings, norm scales or biases) and that have 2+ axes.
"""

import math
import os
import re
from typing import NamedTuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bigmodel_jax import json_files, lora, optim
from bigmodel_jax.errors import UsageError

_NM = re.compile(r"^(\d+):(\d+)$")


def enabled(config) -> bool:
  return "prune" in config and config.prune.target > 0 or _is_nm(config)


def _is_nm(config) -> bool:
  return "prune" in config and config.prune.pattern != "unstructured"


def validate(cfg, train_steps: int) -> None:
  """`cfg` is config.prune; a one-line UsageError names the first bad field."""
  if not 0 <= cfg.target < 1:
    raise UsageError(f"prune.target={cfg.target} must be in [0, 1) (0: no pruning)")
  if cfg.pattern != "unstructured":
    m = _NM.match(cfg.pattern)
    if not m:
      raise UsageError(f"prune.pattern={cfg.pattern!r} is not valid; valid: unstructured, N:M")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
      raise UsageError(f"prune.pattern={cfg.pattern!r}: N:M needs 0 < N < M (keep N of every M)")
  end = cfg.end_step or train_steps
  if cfg.start_step < 0 or end <= cfg.start_step:
    raise UsageError(
        f"prune.start_step={cfg.start_step}, end_step={cfg.end_step}: need 0 <= start_step < "
        f"end_step (0: train.steps={train_steps})"
    )
  try:
    re.compile(cfg.params)
  except re.error as e:
    raise UsageError(f"prune.params={cfg.params!r} is not a valid regex: {e}") from None


def sparsity_at(step, target: float, start: int, end: int):
  """The cubic ramp: 0 before `start`, `target` from `end` on."""
  frac = jnp.clip((step - start) / (end - start), 0.0, 1.0)
  return target * (1.0 - (1.0 - frac) ** 3)


def magnitude_mask(w, sparsity):
  """A bool mask of w's shape with floor(sparsity * size) of its smallest |w| False (exactly
  that many: ties broken by position)."""
  flat = jnp.abs(w.astype(jnp.float32)).ravel()
  k = jnp.floor(sparsity * flat.size).astype(jnp.int32)
  ranks = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)  # 0 = smallest
  return (ranks >= k).reshape(w.shape)


def nm_mask(w, n: int, m: int):
  """A bool mask keeping the n largest |w| of every m consecutive rows of w seen as a matrix."""
  rows = math.prod(w.shape[: lora.split_axes(w.shape)])
  mat = jnp.abs(w.astype(jnp.float32)).reshape(rows // m, m, -1)  # (groups, m, cols)
  ranks = jnp.argsort(jnp.argsort(-mat, axis=1, stable=True), axis=1, stable=True)
  return (ranks < n).reshape(w.shape)


class PruneState(NamedTuple):
  count: jax.Array  # updates applied so far: the ramp's step
  masks: dict  # per param: bool mask of its shape, or a scalar True where it is not pruned


def targets(params, cfg) -> dict[str, tuple[int, ...]]:
  """{path: shape} of what cfg prunes; N:M skips (and logs) kernels whose rows M does not divide."""
  regex, nm = re.compile(cfg.params), _NM.match(cfg.pattern)
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]:
    name = optim.param_path(path)
    if leaf.ndim < 2 or not regex.search(name):
      continue
    rows = math.prod(leaf.shape[: lora.split_axes(leaf.shape)])
    if nm and rows % int(nm.group(2)):
      logging.warning(
          "prune: %s %s left dense: %d rows are not groups of %s",
          name,
          leaf.shape,
          rows,
          nm.group(2),
      )
      continue
    found[name] = tuple(leaf.shape)
  return found


def transform(cfg, train_steps: int) -> optax.GradientTransformation:
  """The link that keeps pruned weights at zero (see the module docstring)."""
  start, end = cfg.start_step, cfg.end_step or train_steps
  nm = _NM.match(cfg.pattern)

  def init(params):
    params = nn.meta.unbox(params)
    chosen = targets(params, cfg)

    def one(path, p):
      on = optim.param_path(path) in chosen
      return jnp.ones(p.shape, bool) if on else jnp.ones((), bool)

    return PruneState(jnp.zeros((), jnp.int32), jax.tree_util.tree_map_with_path(one, params))

  def new_masks(masks, params, count):
    def one(mask, p):
      if mask.ndim == 0:
        return mask
      if nm:
        return nm_mask(p, int(nm.group(1)), int(nm.group(2)))
      return magnitude_mask(p, sparsity_at(count, cfg.target, start, end))

    return jax.tree.map(one, masks, params)

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("pruning needs the params in tx.update")
    count = state.count + 1
    ramping = (count >= start) & (state.count < end)  # masks change up to end_step, then stay
    masks = jax.lax.cond(
        ramping, lambda: new_masks(state.masks, params, count), lambda: state.masks
    )
    out = jax.tree.map(
        lambda u, p, mk: jnp.where(mk, u, -p).astype(u.dtype), updates, params, masks
    )
    return out, PruneState(count, masks)

  return optax.GradientTransformation(init, update)


def wrap(tx: optax.GradientTransformation, config) -> optax.GradientTransformation:
  """`tx`, or `tx` followed by the pruning link when config.prune asks for one."""
  if "prune" not in config:
    return tx
  validate(config.prune, config.train.steps)
  return optax.chain(tx, transform(config.prune, config.train.steps)) if enabled(config) else tx


def sparsity(params, cfg) -> dict[str, float]:
  """{path: fraction of exact zeros} of what cfg prunes (for reports and tests)."""
  chosen = targets(params, cfg)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]:
    name = optim.param_path(path)
    if name in chosen:
      out[name] = float(jnp.mean(leaf == 0))
  return out


def with_saved(config, workdir: str):
  """`config` with the prune section of the run saved in `workdir` (its config.json), so that
  eval, sample, compress, ... restore a pruned run's state (masks and all) without the prune
  flags of its training command."""
  path = os.path.join(workdir, "config.json")
  if "prune" not in config or not os.path.exists(path):
    return config
  saved = json_files.read_json(path, "run config").get("prune")
  if not saved or saved == config.prune.to_dict():
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for key, value in saved.items():
      if key in config.prune:
        config.prune[key] = value
  return config
