"""Two ways to run the one pure train step: `pmap` (data parallel, replicated state) and `mesh`
(`jax.jit` with NamedSharding over a data / fsdp / tensor Mesh, from logical axis names).

Both expose the same small interface to the trainer: init_state, compile, put_batch, and the
conversions a checkpoint needs (to_host_layout for saving, abstract/from_restored for restoring).
"""

import os
import socket
import time

from absl import logging
import flax.linen as nn
import jax
import jax.flatten_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from bigmodel_jax.errors import RunError, UsageError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXIS = "batch"  # pmap's axis name, for lax.pmean/psum inside the train step


# XLA:CPU ends the process (SIGABRT: "Termination timeout for `all reduce ...` exceeded") when a
# device's thread has waited at a collective longer than its terminate timeout (40 s by default
# here) for the other devices to arrive. CPU devices share the cores, so on a host busy with other
# jobs one device can lag that long with nothing wrong: CPU runs and the tests wait 30 minutes
# instead (a real hang still ends).
CPU_COLLECTIVE_TIMEOUT_S = 1800
_CPU_COLLECTIVE_FLAGS = (
    "xla_cpu_collective_call_terminate_timeout_seconds",
    "xla_cpu_collective_timeout_seconds",
)


def patient_cpu_collectives() -> None:
  """Sets XLA_FLAGS' XLA:CPU collective timeouts (those not set already) to
  CPU_COLLECTIVE_TIMEOUT_S. Only has an effect before JAX's CPU backend starts."""
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f"--{f}={CPU_COLLECTIVE_TIMEOUT_S}" for f in _CPU_COLLECTIVE_FLAGS if f not in flags]
  os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def initialize_distributed(cfg) -> None:
  """Starts JAX's multi-process runtime when config.distributed asks for it.

  `coordinator` "host:port" with `num_processes` and `process_id` starts it explicitly (each
  process of the job runs the same command with its own process_id); `auto` lets JAX detect the
  cluster (Cloud TPU, SLURM, Kubernetes, MPI). On CPU the collectives go through gloo.
  """
  if not (cfg.coordinator or cfg.auto):
    return
  if cfg.coordinator and not (cfg.num_processes > 0 and 0 <= cfg.process_id < cfg.num_processes):
    raise UsageError(
        f"distributed.coordinator={cfg.coordinator!r} needs distributed.num_processes"
        f" > 0 and 0 <= distributed.process_id < num_processes (got "
        f"{cfg.num_processes} and {cfg.process_id})"
    )
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if not cfg.coordinator:
    try:
      jax.distributed.initialize(initialization_timeout=cfg.timeout_s)
    except ValueError as e:
      raise RunError(
          f"distributed.auto=true but JAX found no cluster here ({e}); set "
          "distributed.coordinator, num_processes and process_id instead"
      ) from None
    return
  host, port = coordinator_address(cfg.coordinator)
  if cfg.process_id != 0:  # process 0 serves the coordinator; the others must reach it
    _wait_for(host, port, cfg.timeout_s)
  # (JAX aborts the process, uncatchably, when its own timeout runs out: hence the probe above.)
  jax.distributed.initialize(
      cfg.coordinator, cfg.num_processes, cfg.process_id, initialization_timeout=cfg.timeout_s
  )


def coordinator_address(address: str) -> tuple[str, int]:
  """ "host:port" -> (host, port), or a one-line UsageError."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise UsageError(
        f"distributed.coordinator={address!r} must be host:port with a port in "
        "1-65535, e.g. 10.0.0.1:1234"
    )
  return host.strip("[]"), int(port)


def _wait_for(host: str, port: int, timeout_s: int) -> None:
  """Retries a TCP connection to the coordinator until it answers or timeout_s runs out."""
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      socket.create_connection((host, port), timeout=min(5.0, timeout_s)).close()
      return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise RunError(
            f"could not reach the coordinator {host}:{port} within "
            f"distributed.timeout_s={timeout_s} s ({e.strerror or e}); is process 0 "
            "running, and is the address right?"
        ) from None
      time.sleep(0.5)


def configure_cpu_devices(config) -> None:
  """Splits the host CPU into `config.parallel.cpu_devices` JAX devices (see base_config).

  Must run before JAX starts its backends. An explicit device count (XLA_FLAGS'
  --xla_force_host_platform_device_count or JAX_NUM_CPU_DEVICES) wins. No effect on GPU/TPU.
  """
  n = config.parallel.cpu_devices
  explicit = (
      "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or "JAX_NUM_CPU_DEVICES" in os.environ
  )
  if n == 0 or explicit or (n == -1 and config.distributed.auto):
    return  # (with auto-detected processes the per-process batch isn't known yet)
  if n == -1:
    n = _devices_per_core(config)
    if n is None:
      return  # nothing fits: parallel.make will say why with JAX's default devices
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # JAX already started (e.g. in a test): keep its devices
    log = logging.warning if config.parallel.cpu_devices > 0 else logging.info
    log("parallel.cpu_devices=%d not applied: JAX's CPU backend is already running", n)


def _devices_per_core(config) -> int | None:
  """The most devices, at most one per core, that split the per-process micro-batch evenly and
  that the mesh's fsdp x tensor axes divide."""
  t, p = config.train, config.parallel
  per_process = t.batch_size // t.grad_accum_steps // max(config.distributed.num_processes, 1)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  model_axes = max(p.fsdp, 1) * max(p.tensor, 1)
  fits = [d for d in range(1, (cores or 1) + 1) if per_process % d == 0 and d % model_axes == 0]
  return max(fits) if fits else None


def pmean(tree, axis_name: str):
  """lax.pmean over pmap's axis; on CPU as one flat buffer (XLA:CPU all-reduces one array much
  faster than ~50 small ones). Elsewhere XLA combines and overlaps the all-reduces itself.
  Over one device it is the identity (the flat buffer's copies took 1.6% of a one-device
  gpt2_small step in `python -m bigmodel_jax.bench --sections=profile`)."""
  if jax.lax.axis_size(axis_name) == 1:
    return tree
  if jax.default_backend() != "cpu":
    return jax.lax.pmean(tree, axis_name)
  flat, unflatten = jax.flatten_util.ravel_pytree(tree)
  return unflatten(jax.lax.pmean(flat, axis_name))


def check_rules(rules) -> None:
  """parallel.logical_rules: (logical name, mesh axes) pairs, the axes None, one mesh axis name
  or a tuple of them. Checked for every strategy, so a typo does not wait for a mesh run."""
  for rule in rules:
    pair = isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
    axes = rule[1] if pair else None
    if not pair or not (
        axes is None
        or axes in MESH_AXES
        or (isinstance(axes, (tuple, list)) and all(a in MESH_AXES for a in axes))
    ):
      raise UsageError(
          f"parallel.logical_rules: {rule!r} is not a (logical name, mesh axes) "
          f"pair; mesh axes are None, one of {', '.join(MESH_AXES)}, or a tuple of "
          "them"
      )


def make(config):
  """The strategy named by config.parallel.strategy, checked against the devices present."""
  p, batch = config.parallel, config.train.batch_size
  check_rules(p.logical_rules)
  n = p.num_devices or jax.device_count()
  if n > jax.device_count() or n < 0:
    raise UsageError(
        f"parallel.num_devices={p.num_devices} but there are {jax.device_count()} "
        "devices; use 0 for all of them"
    )
  if p.strategy == "pmap":
    if p.fsdp not in (1,) or p.tensor != 1:
      raise UsageError(
          f"parallel.fsdp={p.fsdp} and parallel.tensor={p.tensor} need "
          "parallel.strategy=mesh; pmap is data parallel only (both must be 1)"
      )
    micro = batch // config.train.grad_accum_steps
    if micro % n:
      raise UsageError(
          f"train.batch_size={batch} (per micro-batch {micro}) does not divide over "
          f"{n} devices; use a multiple of {n * config.train.grad_accum_steps}"
      )
    return PmapStrategy(jax.local_devices()[:n])
  return MeshStrategy(
      mesh_shape(n, p.fsdp, p.tensor),
      batch,
      config.train.grad_accum_steps,
      jax.devices()[:n],
      p.logical_rules,
  )


def mesh_shape(n: int, fsdp: int, tensor: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes; an axis set to -1 takes all devices the others leave."""
  if fsdp == -1:
    fsdp = n // tensor
  if tensor == -1:
    tensor = n // fsdp
  if fsdp * tensor == 0 or n % (fsdp * tensor):
    raise UsageError(
        f"parallel.fsdp={fsdp} x parallel.tensor={tensor} does not divide the {n} devices"
    )
  return n // (fsdp * tensor), fsdp, tensor


class PmapStrategy:
  """Replicated state on every local device; each device takes an equal slice of the batch."""

  name = "pmap"
  axis_name = BATCH_AXIS

  def __init__(self, devices):
    self.devices = devices
    self.num_devices = len(devices)

  def init_state(self, init_fn, rng):
    return self.place(jax.jit(lambda r: nn.meta.unbox(init_fn(r)))(rng))

  def compile(self, step_fn, *, train: bool = True):
    """train: step_fn(state, batch, rng) -> (state, metrics), state donated; else -> metrics."""
    return jax.pmap(
        step_fn,
        axis_name=BATCH_AXIS,
        donate_argnums=(0,) if train else (),
        in_axes=(0, 0, None),
        devices=self.devices,
    )

  def put_batch(self, batch):
    n = self.num_devices
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)

  def metrics_to_host(self, metrics):
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], metrics)

  def to_host_layout(self, state):
    """The single-copy state that checkpoints hold, as host numpy arrays (device 0's copy)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], state)

  def abstract(self, init_fn, rng):
    device = self.devices[0]
    shapes = jax.eval_shape(lambda r: nn.meta.unbox(init_fn(r)), rng)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(
            s.shape, s.dtype, sharding=jax.sharding.SingleDeviceSharding(device)
        ),
        shapes,
    )

  def place(self, state):
    """A single-copy state (restored or built on the host) -> one copy per local device.

    The copies get the sharding pmap gives its own outputs (a 1-D mesh named by the pmap axis);
    with any other layout the train step would compile a second time at step 2.
    """
    devices = self.devices
    sharding = NamedSharding(jax.sharding.Mesh(np.array(devices), (BATCH_AXIS,)), P(BATCH_AXIS))

    def replicate(x):
      x = np.asarray(x)
      return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape), sharding)

    return jax.tree.map(replicate, state)


class MeshStrategy:
  """`jax.jit` over a (data, fsdp, tensor) Mesh; parameters are sharded by their logical names,
  which `rules` (config.parallel.logical_rules) map to mesh axes."""

  name = "mesh"
  axis_name = None  # XLA's SPMD partitioner inserts the collectives

  def __init__(self, shape: tuple[int, int, int], batch_size: int, accum: int, devices, rules):
    self.mesh = jax.make_mesh(
        shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices
    )
    self.num_devices = self.mesh.size
    shards = shape[0] * shape[1]
    if (batch_size // accum) % shards:
      raise UsageError(
          f"train.batch_size={batch_size} (per micro-batch {batch_size // accum}) "
          f"does not divide over the {shards} data x fsdp shards of mesh {shape}"
      )
    self.batch_sharding = NamedSharding(self.mesh, P(("data", "fsdp")))
    self.replicated = NamedSharding(self.mesh, P())
    self.state_sharding = None
    self.rules = rules

  def shardings(self, init_fn, rng):
    specs = nn.get_partition_spec(jax.eval_shape(init_fn, rng))
    return nn.logical_to_mesh_sharding(specs, self.mesh, self.rules)

  def init_state(self, init_fn, rng):
    self.state_sharding = self.shardings(init_fn, rng)
    init = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=self.state_sharding)
    return init(rng)

  def compile(self, step_fn, *, train: bool = True):
    """train: step_fn(state, batch, rng) -> (state, metrics), state donated; else -> metrics."""
    return jax.jit(
        step_fn,
        donate_argnums=(0,) if train else (),
        in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
        out_shardings=(self.state_sharding, self.replicated) if train else self.replicated,
    )

  def put_batch(self, batch):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x)), batch
    )

  def metrics_to_host(self, metrics):
    return metrics

  def to_host_layout(self, state):
    return state  # orbax writes sharded arrays directly

  def abstract(self, init_fn, rng):
    self.state_sharding = self.shardings(init_fn, rng)
    shapes = jax.eval_shape(lambda r: nn.meta.unbox(init_fn(r)), rng)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes,
        self.state_sharding,
    )

  def place(self, state):
    """A single-copy state (restored or built on the host) -> this strategy's layout."""
    return jax.device_put(state, self.state_sharding)
