"""Post-training int8 weight quantization for any model, as a transformation of its parameters.

Every floating kernel of two or more axes (dense, attention, convolution, embedding tables) is
stored as

  <path>/int8    int8, the kernel's shape        round(W / scale), clipped to [-127, 127]
  <path>/scale   the kernel's dtype, broadcastable to it: one scale per output channel
                 (absmax / 127 over the input axes), per row for an embedding table

so the checkpoint on disk and the state in memory hold int8 arrays; biases, norms and
non-parameter collections (BatchNorm statistics) stay as they were. The task's loss, modes and
showcase see the dequantized kernel int8 * scale in the kernel's dtype, computed inside the
jitted step (like lora.py's merge, so no model file knows about quantization).

Why not qwix or aqtp: both quantize by intercepting the model's own layers (qwix swaps linen
modules' dot_general/einsum via a provider at apply time; aqtp needs its dot_general injected
into every layer), which means touching each of our model files and, for qwix, its own
weight-tree layout. Dequantize-on-load is model-agnostic, keeps the int8 storage the issue asks
for, and its numerics are what int8 weight-only quantization is; the matmuls themselves run in
the model's dtype (an int8 matmul kernel is the next step, where an accelerator has one).

A quantized workdir carries MARKER (JSON, {"quantize": "int8", "source": <workdir>}); the
trainer wraps the task with `QuantTask` whenever it finds one, whatever the command line says.
"""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bigmodel_jax import json_files, lora, optim
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import base

MARKER = "quantized.bigmodel.json"
Q, SCALE = "int8", "scale"  # the two leaves a quantized kernel becomes
_ROW_SCALED = re.compile(r"(^|/)embedding$|wte|wpe")  # tables read by row: one scale per row


def is_quantized(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, MARKER))


def check_not_quantized(workdir: str, mode: str) -> None:
  """Quantizing int8 weights again would quantize their rounding error, and int8 weights do not
  train: refuse both in one line."""
  if is_quantized(workdir):
    info = json_files.read_json(os.path.join(workdir, MARKER), "quantization marker")
    source = info.get("source", "?")
    raise UsageError(
        f"--mode={mode}: {workdir} already holds an {info.get('quantize', 'int8')}-quantized "
        f"checkpoint; {mode} the float workdir it came from ({source}) instead"
    )


def _kept_axes(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """Axes that keep their own scale: the output channels (lora.split_axes's column side), or
  the rows of an embedding table."""
  if _ROW_SCALED.search(name):
    return (0,)
  return tuple(range(lora.split_axes(shape), len(shape)))


def quantize_array(w, name: str = ""):
  """-> {int8: int8 array of w's shape, scale: w.dtype, broadcastable}: symmetric absmax."""
  keep = _kept_axes(name, tuple(w.shape))
  reduce = tuple(i for i in range(w.ndim) if i not in keep)
  w32 = w.astype(jnp.float32)
  absmax = jnp.max(jnp.abs(w32), axis=reduce, keepdims=True)
  scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)  # an all-zero channel stays zero
  q = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
  return {Q: q, SCALE: scale.astype(w.dtype)}


def _quantizable(leaf) -> bool:
  return leaf.ndim >= 2 and jnp.issubdtype(leaf.dtype, jnp.floating)


def quantize(params) -> dict:
  """The params tree with every floating kernel of 2+ axes replaced by {int8, scale}.

  A boxed kernel (nn.Partitioned, as the model's init returns it) keeps its logical axis names
  on the int8 array, and on the scale where it has the kernel's size (its reduced axes are 1:
  None), so a mesh strategy shards the int8 kernels as it would the float ones."""
  if is_quantized_tree(params):
    raise UsageError("these parameters are already int8-quantized; quantize the float ones")

  def one(path, leaf):
    box = leaf if isinstance(leaf, nn.meta.AxisMetadata) else None
    value = box.unbox() if box is not None else leaf
    if not _quantizable(value):
      return leaf
    name = optim.param_path(path)
    q = quantize_array(value, name)
    if not isinstance(box, nn.Partitioned):  # unboxed (a restored state), or unknown metadata
      return q
    keep = _kept_axes(name, tuple(value.shape))
    names = tuple(n if i in keep else None for i, n in enumerate(box.names))
    return {Q: box.replace(value=q[Q]), SCALE: box.replace(value=q[SCALE], names=names)}

  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
  return jax.tree_util.tree_map_with_path(one, params, is_leaf=is_box)


def _is_qnode(node) -> bool:
  return isinstance(node, dict) and set(node) == {Q, SCALE}


def is_quantized_tree(params) -> bool:
  found = []
  jax.tree.map(lambda n: found.append(_is_qnode(n)), params, is_leaf=_is_qnode)
  return any(found)


def dequantize(params) -> dict:
  """The plain params: each {int8, scale} becomes int8 * scale in the scale's dtype."""
  return jax.tree.map(
      lambda n: n[Q].astype(n[SCALE].dtype) * n[SCALE] if _is_qnode(n) else n,
      params,
      is_leaf=_is_qnode,
  )


def wrap(task: base.Task, workdir: str) -> base.Task:
  """`task`, or, when `workdir` holds a quantized checkpoint, a QuantTask around it."""
  return QuantTask(task) if workdir and is_quantized(workdir) else task


def frozen_optimizer() -> optax.GradientTransformation:
  """A quantized state's optimizer: no moments (nothing trains int8 weights), so the checkpoint
  holds only the weights."""
  return optax.set_to_zero()


class QuantTask(base.WrappedTask):
  """The wrapped task with int8 kernels in its params, dequantized before its model."""

  def plain_params(self, params):
    return dequantize(params)

  def setup(self, workdir, create):
    if create:
      raise RunError("a quantized workdir cannot be trained; train the float workdir it came from")
    self.inner.setup(workdir, create)

  def init_variables(self, rng):
    variables = dict(self.inner.init_variables(rng))
    return {**variables, "params": quantize(variables["params"])}
