"""`--mode=plan`: compile the train step ahead of time for the configured mesh, run nothing, and
report per-device memory and FLOPs, so a user knows before renting 64 GPUs whether it fits.

On a CPU it plans for however many (fake) devices JAX sees, e.g. with
XLA_FLAGS=--xla_force_host_platform_device_count=8. The pmap strategy is planned as the equivalent
data-parallel mesh (replicated state, the batch split over all devices).
"""

import functools
import math
import time

import jax
import numpy as np

from bigmodel_jax import lora, optim, parallel, steps
from bigmodel_jax.compress import prune
from bigmodel_jax.errors import UsageError


def shard_bytes(tree) -> int:
  """Bytes one device holds of `tree` (ShapeDtypeStructs or arrays with shardings)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def available_bytes_per_device() -> int | None:
  """Memory one device can use: the accelerator's own limit, or on a CPU the host's available
  memory shared by its CPU devices; None when unknown."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  try:
    with open("/proc/meminfo") as f:
      info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024 // jax.local_device_count()
  except (OSError, KeyError, ValueError):
    return None


def check_fits(abstract_state) -> None:
  """Refuses, before anything is allocated, a model whose parameters and optimizer state alone
  exceed what a device has (activations come on top: --mode=plan measures those)."""
  need = shard_bytes(abstract_state.params) + shard_bytes(abstract_state.opt_state)
  have = available_bytes_per_device()
  if have is not None and need > have:
    raise UsageError(
        f"the model needs {need / 2**30:,.1f} GiB per device for parameters and "
        f"optimizer state, but a device has {have / 2**30:,.1f} GiB available; use a "
        "smaller model, parallel.strategy=mesh with parallel.fsdp, or more devices"
    )


def plan(config, task) -> dict[str, float]:
  p, t = config.parallel, config.train
  n = p.num_devices or jax.device_count()
  shape = parallel.mesh_shape(n, p.fsdp, p.tensor) if p.strategy == "mesh" else (n, 1, 1)
  strategy = parallel.MeshStrategy(
      shape, t.batch_size, t.grad_accum_steps, jax.devices()[:n], p.logical_rules
  )
  tx, schedule = optim.make_optimizer(t, lora.enabled(config))
  tx = prune.wrap(tx, config)  # as the trainer's: pruning masks are optimizer state too
  init_fn = functools.partial(steps.init_state, task=task, tx=tx)
  rng = jax.random.key(config.seed)
  state = strategy.abstract(init_fn, rng)
  batch = {
      k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=strategy.batch_sharding)
      for k, v in task.batch_spec(t.batch_size).items()
  }
  step_fn = strategy.compile(
      functools.partial(
          steps.train_step,
          task=task,
          tx=tx,
          schedule=schedule,
          accum=t.grad_accum_steps,
          axis_name=None,
      )
  )
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report = {
      "devices": n,
      "mesh_data": shape[0],
      "mesh_fsdp": shape[1],
      "mesh_tensor": shape[2],
      "parameters": sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)),
      "param_bytes_per_device": shard_bytes(state.params),
      "optimizer_bytes_per_device": shard_bytes(state.opt_state),
      "batch_bytes_per_device": shard_bytes(batch),
      "activation_bytes_per_device": memory.temp_size_in_bytes,
      "total_bytes_per_device": (
          memory.argument_size_in_bytes
          + memory.output_size_in_bytes
          - memory.alias_size_in_bytes
          + memory.temp_size_in_bytes
      ),
      "flops_per_step_per_device": float(cost.get("flops", 0.0)),
      "compile_seconds": compile_s,
      "platform": jax.devices()[0].platform,
  }
  _print(config, report)
  return report


def _print(config, r) -> None:
  gib = lambda b: f"{b / 2**30:,.3f} GiB"
  print(
      f"plan for {config.experiment}: {r['parameters']:,} parameters on {r['devices']} devices, "
      f"mesh data={r['mesh_data']} fsdp={r['mesh_fsdp']} tensor={r['mesh_tensor']}, global "
      f"batch {config.train.batch_size} (accumulation {config.train.grad_accum_steps})"
  )
  rows = [
      ("parameters", gib(r["param_bytes_per_device"])),
      ("optimizer state", gib(r["optimizer_bytes_per_device"])),
      ("batch", gib(r["batch_bytes_per_device"])),
      ("activations and temporaries", gib(r["activation_bytes_per_device"])),
      ("total (XLA's buffer assignment)", gib(r["total_bytes_per_device"])),
      ("FLOPs per step", f"{r['flops_per_step_per_device']:.4g}"),
      ("compile time", f"{r['compile_seconds']:.1f} s"),
  ]
  for name, value in rows:
    print(f"  per device  {name:<32} {value:>16}")
  if r["platform"] == "cpu" and config.get("model", {}).get("remat", "none") != "none":
    print(
        f"  note: model.remat={config.model.remat!r} is not in these CPU figures. XLA:CPU's buffer "
        "assignment keeps the forward activations as if nothing were recomputed (measured: "
        "equal for none, dots and full), so read them as the no-remat memory; plan on the "
        "GPU/TPU itself for the rematerialised figure"
    )
