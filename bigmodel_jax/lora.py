"""LoRA (Hu et al. 2021, arXiv:2106.09685) for any model, as a transformation of its parameters.

With `model.lora.rank` > 0, every kernel whose '/'-joined path (`h_0/attn/query/kernel`) the regex
`model.lora.targets` finds gets two adapters, stored beside the base parameters under the
top-level key "lora" with the kernel's own path:

  lora/<path>/a   (rows, rank)  normal(0, 1/sqrt(rows)), the input side
  lora/<path>/b   (rank, cols)  zeros, so training starts from the base model exactly

and the task's loss, its modes and its showcase see the merged kernel

  W + reshape(a @ b) * alpha / rank

so no model file knows about LoRA. A kernel of more than two axes is viewed as a (rows, cols)
matrix split at the axis that makes the two sides closest in size (log scale): (embed | heads*kv)
for an attention projection's DenseGeneral (embed, heads, kv), (heads*kv | embed) for its output
(heads, kv, embed), (h*w*in | out) for a convolution. Which parameters the optimizer moves is
optim.py's business (only the adapters, unless train.trainable names more); the adapters are part
of the params tree, so checkpoints hold them and a resume restores them. `merge(params)` gives the
plain parameters of the fine-tuned model (for export).
"""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax import optim
from bigmodel_jax.errors import UsageError
from bigmodel_jax.tasks import base

KEY = "lora"  # top-level key of the adapters in the params tree


def enabled(config) -> bool:
  """Whether config.model asks for adapters (experiments without a model.lora group never do)."""
  return "model" in config and "lora" in config.model and config.model.lora.rank > 0


def validate(cfg) -> None:
  """`cfg` is config.model.lora; a one-line UsageError names the first bad field."""
  if cfg.rank < 0:
    raise UsageError(f"model.lora.rank={cfg.rank} must be >= 0 (0: no adapters)")
  if cfg.alpha <= 0:
    raise UsageError(f"model.lora.alpha={cfg.alpha} must be > 0")
  try:
    re.compile(cfg.targets)
  except re.error as e:
    raise UsageError(f"model.lora.targets={cfg.targets!r} is not a valid regex: {e}") from None


def split_axes(shape: tuple[int, ...]) -> int:
  """The number of leading axes that form the rows when `shape` is viewed as a matrix."""
  if len(shape) < 2:
    raise ValueError(f"a LoRA target must have at least 2 axes, not {shape}")
  gap = lambda i: abs(math.log(np.prod(shape[:i]) / np.prod(shape[i:])))  # noqa: E731
  return min(range(1, len(shape)), key=gap)


def _matrix_shape(shape) -> tuple[int, int]:
  i = split_axes(tuple(shape))
  return int(np.prod(shape[:i])), int(np.prod(shape[i:]))


def targets(params, pattern: str) -> dict[str, tuple[int, ...]]:
  """{path: shape} of the kernels (2+ axes) whose path `pattern` finds; boxed params are fine."""
  regex = re.compile(pattern)
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]:
    name = optim.param_path(path)
    if len(leaf.shape) >= 2 and regex.search(name):
      found[name] = tuple(leaf.shape)
  return found


def init(rng, params, cfg) -> dict:
  """The adapters for `params` (a nested dict mirroring the targets' paths); at least one target
  must match, or model.lora.targets is wrong for this model: a one-line UsageError listing what
  can be targeted."""
  found = targets(params, cfg.targets)
  if not found:
    names = sorted(targets(params, ""))
    raise UsageError(
        f"model.lora.targets={cfg.targets!r} matches no kernel of this model; its kernels: "
        f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
    )
  tree = {}
  for i, (name, shape) in enumerate(sorted(found.items())):
    rows, cols = _matrix_shape(shape)
    a = jax.random.normal(jax.random.fold_in(rng, i), (rows, cfg.rank), jnp.float32)
    node = tree
    for part in name.split("/"):
      node = node.setdefault(part, {})
    node.update(a=a / np.sqrt(rows), b=jnp.zeros((cfg.rank, cols), jnp.float32))
  return tree


def merge(params, alpha: float | None = None) -> dict:
  """The plain parameters of the adapted model: each target W + reshape(a @ b) * alpha / rank,
  without the adapters. `params` without adapters come back as they are. `alpha` is
  model.lora.alpha (the rank is the adapters' own)."""
  if KEY not in params:
    return params
  if alpha is None:
    raise ValueError("merge needs model.lora.alpha for params that hold adapters")
  adapters = params[KEY]
  plain = {k: v for k, v in params.items() if k != KEY}

  def merged(path, w):
    node = adapters
    for part in optim.param_path(path).split("/"):
      if not isinstance(node, dict) or part not in node:
        return w
      node = node[part]
    a, b = node["a"], node["b"]
    delta = (a @ b) * (alpha / a.shape[1])  # (rows, cols) float32
    return (w.astype(jnp.float32) + delta.reshape(w.shape)).astype(w.dtype)

  return jax.tree_util.tree_map_with_path(merged, plain)


def wrap(task: base.Task, config) -> base.Task:
  """`task` as it is, or, with model.lora.rank > 0, a task whose params hold adapters."""
  if "model" in config and "lora" in config.model:
    validate(config.model.lora)
  return LoraTask(task, config.model.lora) if enabled(config) else task


class LoraTask(base.WrappedTask):
  """The wrapped task with adapters in its params, merged into the kernels before its model."""

  def __init__(self, inner: base.Task, cfg):
    super().__init__(inner)
    self.cfg = cfg

  def plain_params(self, params):
    return merge(params, self.cfg.alpha)

  def init_variables(self, rng):
    variables = dict(self.inner.init_variables(rng))  # the base model as it would be without
    params = dict(variables["params"])
    params[KEY] = init(jax.random.fold_in(rng, 1), params, self.cfg)
    return {**variables, "params": params}
