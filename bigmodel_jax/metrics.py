"""Metrics: host-side reduction, metrics.jsonl + TensorBoard, the progress line, and MFU's peak."""

import json
import math
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

# Peak FLOP/s per chip from the vendors' data sheets, dense (the sparse figures are 2x), as
# (FLOP/s, what it is the peak of). Keys are prefixes of `device_kind`; the longest one that
# matches wins, so "NVIDIA H100 PCIe" (756e12) is not read as the SXM part's 989e12.
PEAK_FLOPS = {
    "NVIDIA H200": (989e12, "bf16 dense"),  # SXM
    "NVIDIA H200 NVL": (835e12, "bf16 dense"),
    "NVIDIA H100": (989e12, "bf16 dense"),  # SXM ("NVIDIA H100 80GB HBM3"), and unlisted variants
    "NVIDIA H100 PCIe": (756e12, "bf16 dense"),
    "NVIDIA H100 NVL": (835e12, "bf16 dense"),
    "NVIDIA A100": (312e12, "bf16 dense"),  # SXM4 and PCIe, 40 and 80 GB alike
    "NVIDIA L4": (121e12, "bf16 dense"),
    "TPU v4": (275e12, "bf16 dense"),
    "TPU v5 lite": (197e12, "bf16 dense"),  # v5e
    "TPU v5e": (197e12, "bf16 dense"),
    "TPU v5": (459e12, "bf16 dense"),  # v5p reports "TPU v5"
    "TPU v5p": (459e12, "bf16 dense"),
    "TPU v6 lite": (918e12, "bf16 dense"),  # v6e
    "TPU v6e": (918e12, "bf16 dense"),
}


def reduce(metrics: dict[str, tuple]) -> dict[str, float]:
  """{name: (sum, count)} from the device -> {name: sum / count} on the host."""
  metrics = jax.device_get(metrics)
  return {k: float(np.sum(s)) / max(float(np.sum(n)), 1e-12) for k, (s, n) in metrics.items()}


def measure_matmul_flops(
    n: int = 1024, repeats: int = 20, dtype: str = "float32", budget_s: float = 0.25
) -> float:
  """FLOP/s of jitted n x n matmuls on the local devices at once (the best of up to `repeats`,
  at least 3, stopping after about `budget_s`), operands in `dtype` and, when that is 16-bit,
  float32 accumulation (as the models' matmuls).

  At once because how many threads one CPU device's matmul gets depends on the kernel: with one
  JAX device per core an f32 matmul on one device still used both cores, a bf16 one only its
  own. On a CPU at most one device per core takes part: more add no FLOP/s, only time (the tests'
  8 devices on 2 cores)."""
  devices = jax.local_devices()
  if devices[0].platform == "cpu":
    devices = devices[: len(os.sched_getaffinity(0))]
  a = jnp.ones((len(devices), n, n), dtype)
  f = jax.pmap(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32), devices=devices)
  f(a).block_until_ready()
  best, deadline = math.inf, time.perf_counter() + budget_s
  for i in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
    if i >= 2 and start > deadline:
      break
  return len(devices) * 2 * n**3 / best


def data_sheet_peak(kind: str) -> tuple[str, float, str] | None:
  """(PEAK_FLOPS key, FLOP/s, what it is the peak of) for a `device_kind`, or None if unlisted."""
  keys = [key for key in PEAK_FLOPS if kind.startswith(key)]
  if not keys:
    return None
  key = max(keys, key=len)
  return (key, *PEAK_FLOPS[key])


def matmul_dtype(config) -> str:
  """The dtype of a run's matmul operands: model.matmul_dtype, else model.dtype, else float32."""
  model = config.get("model", {})
  return model.get("matmul_dtype") or model.get("dtype") or "float32"


def peak_flops_per_device(dtype: str = "float32") -> tuple[float, str]:
  """(peak FLOP/s of one device, where the number came from and its dtype) for MFU. Data-sheet
  peaks are the accelerators' bf16 ones; a measured peak is of `dtype` matmuls (on CPUs with
  AVX512-BF16, bf16 runs at twice the float32 peak)."""
  device = jax.devices()[0]
  kind = device.device_kind
  found = data_sheet_peak(kind)
  if found:
    key, flops, what = found
    entry = "" if key == kind else f" (table entry {key!r})"
    return flops, f"data-sheet {what} peak for {kind!r}{entry}"
  if device.platform == "cpu":
    n = jax.local_device_count()
    return measure_matmul_flops(dtype=dtype) / max(n, 1), (
        f"measured {dtype} 1024x1024 matmuls on the CPU's {n} device(s) at once, per device"
    )
  flops = measure_matmul_flops(4096, dtype=dtype) / jax.local_device_count()
  return flops, f"measured {dtype} 4096x4096 matmuls on unknown device kind {kind!r}, per device"


class MetricWriter:
  """Writes `metrics.jsonl` (one object per line: step, split, values) and TensorBoard events.

  Only process 0 writes; other processes get a writer that does nothing. On a resume from step
  `resume_step`, lines written after that step by the interrupted run are dropped, so the file
  reads as one run.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # writes event files without TensorFlow

    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
      with open(path) as f:
        kept = [line for line in f if _step_of(line) is not None and _step_of(line) <= resume_step]
      with open(path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(path + ".tmp", path)
    self._jsonl = open(path, "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    self._jsonl.flush()
    for k, v in values.items():
      self._tb.add_scalar(f"{split}/{k}", v, step)
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """Throughput and ETA over the steps since the last report."""

  def __init__(self, total_steps: int, start_step: int):
    self.total = total_steps
    self._last_step, self._last_time = start_step, time.perf_counter()

  def update(self, step: int) -> tuple[float, float]:
    """-> (seconds per step since the last update, ETA in seconds)."""
    now = time.perf_counter()
    per_step = (now - self._last_time) / max(step - self._last_step, 1)
    self._last_step, self._last_time = step, now
    return per_step, per_step * (self.total - step)

  def exclude(self, seconds: float) -> None:
    """Leaves time spent outside training steps (eval, checkpoints) out of the throughput."""
    self._last_time += seconds

  def start_time(self) -> float:
    return self._last_time

  def line(self, step: int, values: dict[str, float], eta: float) -> str:
    parts = [f"step {step}/{self.total} ({100 * step / self.total:.0f}%)"]
    for key, fmt in (
        ("loss", "{:.4f}"),
        ("lr", "{:.2e}"),
        ("grad_norm", "{:.3f}"),
        ("tokens_per_s", "{:,.0f}"),
        ("mfu", "{:.1%}"),
    ):
      if key in values:
        parts.append(f"{key} " + fmt.format(values[key]))
    parts.append(f"ETA {_duration(eta)}")
    return " | ".join(parts)


def _step_of(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None  # a torn last line from a killed run


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def log_eval(step: int, split: str, values: dict[str, float]) -> None:
  shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
  logging.info("eval %s at step %d: %s", split, step, shown)
