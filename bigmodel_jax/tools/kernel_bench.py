"""The train step's kernels alone, ours against PyTorch's, at the bench's shapes (one CPU device):

  python -m bigmodel_jax.tools.kernel_bench --presets=mid,gpt2_small [--repeats=7]

Each Dense layer of a GPT block, forward + backward (both input gradients), and causal attention
forward + backward, as each framework's train step runs them: ours through `layers._matmul` (the
Dense layers' matmul and its custom backward) and `attention.causal_attention`; PyTorch's through
`F.linear` and `F.scaled_dot_product_attention`, eager (torch.compile hands both to the same
kernels). `dtype=bfloat16` is the autocast recipe on both sides: bf16 matmul operands, float32
accumulation; our attention stays float32 under model.matmul_dtype, PyTorch's runs on the bf16
outputs of its projections. The two alternate (ours, torch, ours, ...) and each is the median of
its repeats; before timing, each kernel's outputs and gradients are checked against the other's.

"block" sums one transformer block's kernels as each side's step runs them (ours: query, key,
value and output projections of (C, C); PyTorch's reference: one fused (C, 3C) projection and
the output one), so `layers x block` is the part of a train step these kernels account for;
`python -m bigmodel_jax.bench --sections=torch` times the whole step. Last, a bound: the
tokens/s of a step made only of its Dense matmuls, at the matmul peak measured on this device
(`metrics.measure_matmul_flops`). torch is a requirements-dev dependency.
"""

import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch.nn import functional as F

from bigmodel_jax import bench, metrics
from bigmodel_jax.models import attention, layers

# --presets and --repeats are bench.py's flags (imported with it).
FLAGS = flags.FLAGS
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Matmul operand dtype.")
_CHUNK_S = 0.2  # seconds of calls per timed chunk


def _vjp(fn):
  """fn(*inputs) -> (output, gradients of <output, cotangent> wrt every input), jitted."""

  def run(*args):
    *inputs, cotangent = args
    out, pullback = jax.vjp(fn, *inputs)
    return out, pullback(cotangent)

  return jax.jit(run)


def ours_dense(dtype: str):
  operand_dtype = None if dtype == "float32" else jnp.dtype(dtype)
  return _vjp(lambda x, w: layers._matmul(x, w, operand_dtype))


def _torch_vjp(fn, dtype: str):
  def run(*args):
    *inputs, cotangent = args
    inputs = [a.detach().requires_grad_() for a in inputs]
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bfloat16"):
      out = fn(*inputs)
    out.backward(cotangent.to(out.dtype))
    return out, [a.grad for a in inputs]

  return run


def torch_dense(dtype: str):
  return _torch_vjp(lambda x, w: F.linear(x, w.T), dtype)  # w stored (K, N) as ours


def torch_attention(dtype: str):
  def sdpa(q, k, v):  # (B, T, H, D) in and out, as ours; SDPA wants (B, H, T, D)
    if dtype == "bfloat16":  # the bf16 outputs of an autocast projection
      q, k, v = (a.to(torch.bfloat16) for a in (q, k, v))
    heads_first = [a.transpose(1, 2) for a in (q, k, v)]
    return F.scaled_dot_product_attention(*heads_first, is_causal=True).transpose(1, 2)

  return _torch_vjp(sdpa, "float32")


def _check(ours, theirs, dtype: str, what: str) -> None:
  """Both sides compute the same output and gradients (to bf16 rounding where used)."""
  tol = 2e-2 if dtype == "bfloat16" else 2e-4
  out, grads = ours
  t_out, t_grads = theirs
  for a, b in zip([out, *grads], [t_out, *t_grads]):
    a, b = np.asarray(a, np.float32), b.detach().float().numpy()
    scale = np.abs(b).max() or 1.0
    error = np.abs(a - b).max() / scale
    if error > tol:
      raise AssertionError(f"{what}: ours and PyTorch's differ by {error:.2e} (relative)")


def _chunk_ms(fn, args) -> float:
  """ms per call over about _CHUNK_S seconds of back-to-back calls."""
  calls, start = 0, time.perf_counter()
  while time.perf_counter() - start < _CHUNK_S:
    jax.block_until_ready(fn(*args))
    calls += 1
  return (time.perf_counter() - start) / calls * 1e3


def compare_kernel(ours, theirs, shapes, dtype: str, repeats: int, what: str) -> dict:
  """{"ours_ms", "torch_ms"}: one kernel's forward + backward on random inputs of `shapes` (the
  last is the output's cotangent), medians of `repeats` alternating chunks."""
  rng = np.random.default_rng(0)
  arrays = [rng.standard_normal(s, np.float32) * 0.1 for s in shapes]
  ours_args = [jnp.asarray(a) for a in arrays]
  torch_args = [torch.from_numpy(a) for a in arrays]
  _check(ours(*ours_args), theirs(*torch_args), dtype, what)
  times = {"ours_ms": [], "torch_ms": []}
  for _ in range(repeats):
    times["ours_ms"].append(_chunk_ms(ours, ours_args))
    times["torch_ms"].append(_chunk_ms(theirs, torch_args))
  return {key: statistics.median(v) for key, v in times.items()}


def compare(name: str, dtype: str, repeats: int) -> list[dict]:
  """Rows of {"kernel", "ours_ms", "torch_ms", "gflops"} for preset `name`, the last one "block"."""
  config = bench.preset_config(name, {})
  m, batch = config.model, config.train.batch_size
  C, T, H = m.embed_dim, m.block_size, m.num_heads
  tokens, hidden = batch * T, layers.mlp_dim(m) or 4 * C
  rows = []
  dense_shapes = {"C x C": (C, C), "C x 3C (torch's fused qkv)": (C, 3 * C)}
  dense_shapes.update({"C x 4C (mlp fc)": (C, hidden), "4C x C (mlp proj)": (hidden, C)})
  for label, (k, n) in dense_shapes.items():
    r = compare_kernel(
        ours_dense(dtype),
        torch_dense(dtype),
        [(tokens, k), (k, n), (tokens, n)],
        dtype,
        repeats,
        f"dense {label}",
    )
    rows.append({"kernel": f"dense {label}", **r, "gflops": 3 * 2 * tokens * k * n / 1e9})
  shape = (batch, T, H, C // H)
  r = compare_kernel(
      # ours stays float32 in both recipes (see the module docstring)
      _vjp(attention.causal_attention),
      torch_attention(dtype),
      [shape] * 4,
      dtype,
      repeats,
      "attention",
  )
  rows.append({"kernel": "causal attention", **r, "gflops": None})
  by = {row["kernel"]: row for row in rows}
  mlp = [by["dense C x 4C (mlp fc)"], by["dense 4C x C (mlp proj)"], by["causal attention"]]
  ours_block = 4 * by["dense C x C"]["ours_ms"] + sum(row["ours_ms"] for row in mlp)
  torch_block = (
      by["dense C x 3C (torch's fused qkv)"]["torch_ms"]
      + by["dense C x C"]["torch_ms"]
      + sum(row["torch_ms"] for row in mlp)
  )
  rows.append({"kernel": "block", "ours_ms": ours_block, "torch_ms": torch_block, "gflops": None})
  return rows


def step_bound(name: str, rows: list[dict], peak: float) -> dict:
  """The least a train step of preset `name` can take: its blocks' Dense matmuls at `peak`
  FLOP/s and nothing else (no attention, norms, activations, loss or optimizer update).
  Attention is left out because alone it costs more than inside a step, where XLA lays out the
  projections' outputs for it (attention with the heads transposed first ran 1.2-1.3x faster
  alone and 0.97-1.02x in the step)."""
  config = bench.preset_config(name, {})
  by = {row["kernel"]: row for row in rows}
  dense = [by["dense C x C"]] * 4 + [by["dense C x 4C (mlp fc)"], by["dense 4C x C (mlp proj)"]]
  dense_gflop = config.model.num_layers * sum(row["gflops"] for row in dense)
  dense_ms = dense_gflop / peak * 1e12
  tokens = config.train.batch_size * config.model.block_size
  return {"dense_gflop": dense_gflop, "dense_ms": dense_ms, "tokens_per_s": tokens / dense_ms * 1e3}


def main(argv):
  del argv
  jax.config.update("jax_platforms", "cpu")
  print(
      f"{'preset':<12}{'kernel (' + _DTYPE.value + ')':<32}{'ours ms':>9}{'torch ms':>9}"
      f"{'ratio':>7}{'ours GFLOP/s':>14}"
  )
  peak = metrics.measure_matmul_flops(1024, 20, _DTYPE.value, budget_s=5.0)
  bounds = {}
  for name in FLAGS.presets:
    rows = compare(name, _DTYPE.value, FLAGS.repeats)
    for r in rows:
      rate = f"{r['gflops'] / r['ours_ms'] * 1e3:>14.0f}" if r["gflops"] else ""
      print(
          f"{name:<12}{r['kernel']:<32}{r['ours_ms']:>9.2f}{r['torch_ms']:>9.2f}"
          f"{r['torch_ms'] / r['ours_ms']:>6.2f}x{rate}",
          flush=True,
      )
    bounds[name] = step_bound(name, rows, peak)
  print(f"\nat the measured {_DTYPE.value} matmul peak, {peak / 1e9:,.0f} GFLOP/s:")
  for name, b in bounds.items():
    print(
        f"{name:<12}a step's Dense matmuls, {b['dense_gflop']:,.1f} GFLOP, take "
        f"{b['dense_ms']:,.0f} ms: with nothing else, {b['tokens_per_s']:,.0f} tokens/s"
    )


if __name__ == "__main__":
  app.run(main)
