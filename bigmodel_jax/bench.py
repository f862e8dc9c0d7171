"""Benchmarks: `python -m bigmodel_jax.bench [--presets=baby,default] [--out=bench.json]`.

Prints a table and writes JSON with:
  matmul      the device's measured dense matmul peak, f32 and bf16 (f32 accumulation)
  train       train-step tokens/s, MFU and first-step compile time per preset (median over
              repeats of timed chunks of steps, after warm-up)
  pipeline    input-pipeline batches/s as a multiple of what the train step consumes
  checkpoint  how long the loop is blocked by an (async) checkpoint save
  generate    generation tokens/s with the KV cache vs full recomputation at 512 new tokens
  scaling     tokens/s and step time as batch, context, width and depth double
Compare numbers as ratios within one run: a shared machine varies +-15% between runs.

  profile     where a train step's time goes, per kind of HLO op (profiling.op_table; not in
              the default sections)
  torch       ours vs a compiled PyTorch reference of the same model and recipe
              (bench_torch.py), in alternating chunks of steps; skipped when torch is missing

Presets are textgen's (`default`, `tiny`, `gpt2_124m`, ...) plus three shapes (f32, no biases,
vocabulary 65 as in character-level Shakespeare; SHAPES below):
  baby        4 layers x width 128 (4 heads), context 64, batch 12: the "baby GPT"
  mid         6 x 384 (6 heads), context 256, batch 8
  gpt2_small  12 x 768 (12 heads), context 256, batch 4: GPT-2 small's body at a CPU-sized batch
"""

import functools
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

from bigmodel_jax import checkpoint, generate, metrics, optim, parallel, profiling, steps
from bigmodel_jax import config as config_lib
from bigmodel_jax.errors import UsageError
from bigmodel_jax.tasks import lm

_PRESETS = flags.DEFINE_list("presets", ["baby", "default"], "textgen presets to time.")
_SECTIONS = flags.DEFINE_list(
    "sections",
    ["matmul", "train", "torch", "pipeline", "checkpoint", "generate", "scaling"],
    "Which benchmarks to run.",
)
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed chunks per measurement (median taken).")
_CHUNK = flags.DEFINE_integer("chunk", 10, "Steps per timed chunk.")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads",
    0,
    "Threads of the PyTorch reference (torch.set_num_threads); 0 keeps torch's default (one per "
    "core). On a busy machine 1 can be faster: its OpenMP threads spin while they wait.",
)
_OUT = flags.DEFINE_string("out", "bench.json", "Where to write the JSON results.")


def _shape(layers: int, width: int, context: int, batch: int) -> dict:
  return {
      "model.num_layers": layers,
      "model.num_heads": width // 64 if width > 128 else 4,  # 64-wide heads, as GPT-2's
      "model.embed_dim": width,
      "model.block_size": context,
      "model.use_bias": False,
      "train.batch_size": batch,
      "model.vocab_multiple": 1,
  }


SHAPES = {
    "baby": _shape(4, 128, 64, 12),
    "mid": _shape(6, 384, 256, 8),
    "gpt2_small": _shape(12, 768, 256, 4),
}
SHAPE_VOCAB = 65
MISSING_TORCH = (
    "torch: skipped, the PyTorch reference needs torch (pip install -r requirements-dev.txt)"
)


def preset_config(name: str, overrides: dict[str, str]):
  """textgen's preset `name` (or one of SHAPES) with the command line's --config.* overrides."""
  spec = "textgen" if name == "default" or name in SHAPES else f"textgen:{name}"
  return config_lib.from_command_line(spec, overrides, SHAPES.get(name))


def vocab_of(name: str) -> int:
  return SHAPE_VOCAB if name in SHAPES else 256


class Trainable:
  """A task, its jitted train step and a state on the preset's devices, fed synthetic batches."""

  def __init__(self, config, vocab_size: int):
    self.config = config
    self.task = lm.Task(config)
    self.task.model = self.task.model.clone(vocab_size=vocab_size)
    self.vocab = vocab_size
    self.strategy = parallel.make(config)
    tx, schedule = optim.make_optimizer(config.train)
    init_fn = functools.partial(steps.init_state, task=self.task, tx=tx)
    self.state = self.strategy.init_state(init_fn, jax.random.key(0))
    self.step_fn = self.strategy.compile(
        functools.partial(
            steps.train_step,
            task=self.task,
            tx=tx,
            schedule=schedule,
            accum=config.train.grad_accum_steps,
            axis_name=self.strategy.axis_name,
        )
    )
    self.tokens_per_step = config.train.batch_size * config.model.block_size
    self.batch = self.strategy.put_batch(_host_batch(config, vocab_size))

  def compile_seconds(self) -> float:
    start = time.perf_counter()
    self.state, m = self.step_fn(self.state, self.batch, jax.random.key(1))
    jax.block_until_ready((self.state, m))
    return time.perf_counter() - start

  def chunk_seconds(self, chunk: int, step_fn=None) -> float:
    """Seconds per step over `chunk` back-to-back steps (one sync at the end), of `step_fn` (a
    compiled variant of the step, as tools/xla_ab's) or the jitted step."""
    step_fn = step_fn or self.step_fn
    start = time.perf_counter()
    for _ in range(chunk):
      self.state, m = step_fn(self.state, self.batch, jax.random.key(1))
    jax.block_until_ready((self.state, m))
    return (time.perf_counter() - start) / chunk

  def seconds_per_step(self, repeats: int, chunk: int) -> float:
    """Median over `repeats` chunks of `chunk` steps, after one warm-up chunk."""
    times = [self.chunk_seconds(chunk) for _ in range(repeats + 1)]
    return statistics.median(times[1:])


def bench_matmul() -> dict:
  """f32 and bf16 (f32 accumulation: AVX512-BF16 CPUs run it at 2x f32) matmul FLOP/s."""
  n, repeats = (1024, 20) if jax.devices()[0].platform == "cpu" else (8192, 10)
  return {
      "f32_flops": metrics.measure_matmul_flops(1024, 20, budget_s=5.0),
      "bf16_flops": metrics.measure_matmul_flops(n, repeats, "bfloat16", budget_s=5.0),
  }


def bench_train(name: str, peak: float, overrides: dict[str, str]) -> dict:
  config = preset_config(name, overrides)
  t = Trainable(config, vocab_of(name))
  compile_s = t.compile_seconds()
  per_step = t.seconds_per_step(_REPEATS.value, _CHUNK.value)
  tokens_per_s = t.tokens_per_step / per_step
  return {
      "preset": name,
      "compile_s": compile_s,
      "step_ms": per_step * 1e3,
      "tokens_per_s": tokens_per_s,
      "devices": t.strategy.num_devices,
      "mfu": t.task.flops_per_unit * tokens_per_s / (peak * t.strategy.num_devices),
      "model_flops_per_s": t.task.flops_per_unit * tokens_per_s,
  }


def bench_profile(name: str, overrides: dict[str, str], top: int = 12) -> list[dict]:
  """A jax.profiler trace of `--chunk` train steps, summed by kind of op of the optimised HLO."""
  config = preset_config(name, overrides)
  t = Trainable(config, vocab_of(name))
  t.compile_seconds()
  hlo = t.step_fn.lower(t.state, t.batch, jax.random.key(1)).compile().as_text()
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    t.chunk_seconds(_CHUNK.value)
    jax.profiler.stop_trace()
    rows = profiling.op_table(trace_dir, hlo, _CHUNK.value)
  print(f"profile of {name} ({t.strategy.num_devices} devices, ms per step summed over threads):")
  for r in rows[:top]:
    print(f"{r['ms_per_step']:10.1f} ms {r['share']:6.1%}  {r['op']}")
  dots = sum(r["share"] for r in rows if r["op"].startswith("dot "))
  print(f"{'':10}    {dots:6.1%}  all dots", flush=True)
  return rows


def bench_torch(name: str, overrides: dict[str, str]) -> dict:
  """Ours and the PyTorch reference of the same preset in alternating chunks (bench_torch.py)."""
  from bigmodel_jax import bench_torch as reference  # torch is only a dev requirement

  config = preset_config(name, overrides)
  ours = Trainable(config, vocab_of(name))
  why = reference.supported(ours.task.model)
  if why:
    raise UsageError(f"--sections=torch cannot mirror preset {name!r}: {why}")
  batch = _host_batch(config, vocab_of(name))
  r = reference.compare(ours, batch, _REPEATS.value, _CHUNK.value, _TORCH_THREADS.value)
  return {"preset": name, **r, "load_average": os.getloadavg()[0]}


def torch_table(names: list[str], overrides: dict[str, str]) -> list[dict] | None:
  """bench_torch for each preset, printed as a table; None (and a one-line note) without torch."""
  if importlib.util.find_spec("torch") is None:
    print(MISSING_TORCH, flush=True)
    return None
  print(
      f"{'vs torch':<12}{'ours tok/s':>12}{'torch tok/s':>12}{'ratio':>8}{'(min-max)':>14}"
      f"{'load':>6}{'torch threads':>15}"
  )
  rows = []
  for name in names:
    rows.append(r := bench_torch(name, overrides))
    print(
        f"{name:<12}{r['ours_tokens_per_s']:>12,.0f}{r['torch_tokens_per_s']:>12,.0f}"
        f"{r['ratio']:>7.2f}x{r['ratio_min']:>8.2f}-{r['ratio_max']:.2f}{r['load_average']:>6.1f}"
        f"{r['torch_threads']:>15}",
        flush=True,
    )
  return rows


def _host_batch(config, vocab: int) -> dict:
  """The same synthetic batch Trainable puts on its devices, on the host."""
  rng = np.random.default_rng(0)
  shape = (config.train.batch_size, config.model.block_size)
  return {k: rng.integers(0, vocab, shape, dtype=np.int32) for k in ("inputs", "targets")}


def bench_pipeline(train_step_per_s: float, overrides: dict[str, str]) -> dict:
  """Batches/s the real textgen input pipeline delivers, over what the default train step eats."""
  config = preset_config("default", overrides)
  task = lm.Task(config)
  with tempfile.TemporaryDirectory() as workdir:
    task.setup(workdir, create=True)
    it = task.train_iterator(config.train.batch_size, 0, 0, 1)
    next(it)
    n, start = 200, time.perf_counter()
    for _ in range(n):
      next(it)
    batches_per_s = n / (time.perf_counter() - start)
  return {
      "batches_per_s": batches_per_s,
      "train_steps_per_s": train_step_per_s,
      "headroom": batches_per_s / train_step_per_s,
  }


def bench_checkpoint(name: str, overrides: dict[str, str]) -> dict:
  config = preset_config(name, overrides)
  t = Trainable(config, 256)
  with tempfile.TemporaryDirectory() as workdir:
    ckpt = checkpoint.Checkpointer(workdir, config.checkpoint)
    data = _Position()  # stands in for the data iterator
    blocked = []
    for step in range(1, 4):
      start = time.perf_counter()
      ckpt.save(step, t.strategy.to_host_layout(t.state), data, config.to_dict(), force=True)
      blocked.append(time.perf_counter() - start)
      t.seconds_per_step(1, 3)  # train a little while the save finishes in the background
    start = time.perf_counter()
    ckpt.close()
    final_wait_s = time.perf_counter() - start
    # The manifest's checksums (part of `blocked_s`): hashing one committed checkpoint's files.
    files = [os.path.join(r, f) for r, _, fs in os.walk(ckpt.directory + "/3") for f in fs]
    start = time.perf_counter()
    for path in files:
      checkpoint.file_fingerprint(path)
    return {
        "preset": name,
        "blocked_s": statistics.median(blocked),
        "final_wait_s": final_wait_s,
        "checksum_s": time.perf_counter() - start,
        "state_mib": sum(x.nbytes for x in jax.tree.leaves(t.strategy.to_host_layout(t.state)))
        / 2**20,
    }


class _Position:
  """A minimal checkpointable iterator (grain's protocol) for the checkpoint benchmark."""

  def get_state(self) -> bytes:
    return b'{"next_index": 0}'

  def set_state(self, state):
    del state


def bench_generate(overrides: dict[str, str], new_tokens: int = 512) -> dict:
  config = preset_config("default", overrides)
  config_lib.set_values(
      config, {"model.block_size": max(config.model.block_size, new_tokens + 16)}, "bench"
  )
  task = lm.Task(config)
  params = task.model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  prompt = np.arange(8, dtype=np.int32)
  out = {}
  for kind, fn in (("kv_cache", generate.generate), ("recompute", generate.generate_without_cache)):
    run = functools.partial(
        fn,
        task.model,
        params,
        prompt,
        max_new_tokens=new_tokens,
        rng=jax.random.key(0),
        temperature=1.0,
    )
    run()  # compile
    times = []
    for _ in range(3):
      start = time.perf_counter()
      np.asarray(run())
      times.append(time.perf_counter() - start)
    out[f"{kind}_tokens_per_s"] = new_tokens / statistics.median(times)
  out["speedup"] = out["kv_cache_tokens_per_s"] / out["recompute_tokens_per_s"]
  out["new_tokens"], out["block_size"] = new_tokens, config.model.block_size
  return out


def bench_scaling(peak: float, overrides: dict[str, str]) -> list[dict]:
  base = preset_config("default", overrides)
  rows = []
  variants = [
      ("base", {}),
      ("batch x2", {"train.batch_size": base.train.batch_size * 2}),
      ("context x2", {"model.block_size": base.model.block_size * 2}),
      ("width x2", {"model.embed_dim": base.model.embed_dim * 2}),
      ("depth x2", {"model.num_layers": base.model.num_layers * 2}),
  ]
  for label, change in variants:
    config = preset_config("default", overrides)
    config_lib.set_values(config, change, "bench")
    t = Trainable(config, 256)
    t.compile_seconds()
    per_step = t.seconds_per_step(max(3, _REPEATS.value // 2), max(3, _CHUNK.value // 2))
    rows.append(
        {
            "variant": label,
            "step_ms": per_step * 1e3,
            "tokens_per_s": t.tokens_per_step / per_step,
            "mfu": t.task.flops_per_unit
            * t.tokens_per_step
            / per_step
            / (peak * t.strategy.num_devices),
        }
    )
  return rows


def parse_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  try:
    return config_lib.parse_command_line(argv)
  except UsageError as e:
    _fail(e)


def main(args: tuple[list[str], dict[str, str]]) -> None:
  """args: (positional arguments, --config.* overrides applied to every preset)."""
  try:
    run_benchmarks(overrides=args[1])
  except UsageError as e:
    _fail(e)


def _fail(error: UsageError) -> None:
  print(f"error: {error}", file=sys.stderr)
  sys.exit(error.exit_code)


def run_benchmarks(overrides: dict[str, str]) -> None:
  sections = set(_SECTIONS.value)
  # Before JAX starts: one CPU device count that every preset's batch divides over.
  config = preset_config(_PRESETS.value[0], overrides)
  batches = [
      preset_config(name, overrides).train.batch_size for name in (*_PRESETS.value, "default")
  ]
  config_lib.set_values(
      config, {"train.batch_size": math.gcd(*batches), "train.grad_accum_steps": 1}, "bench"
  )
  parallel.configure_cpu_devices(config)
  results = {
      "device": jax.devices()[0].device_kind,
      "jax": jax.__version__,
      "num_devices": jax.device_count(),
  }
  peak, source = metrics.peak_flops_per_device(metrics.matmul_dtype(config))
  results["mfu_peak"] = {"flops": peak, "source": source}
  if "matmul" in sections:
    results["matmul"] = bench_matmul()
    f32, bf16 = (results["matmul"][k] / 1e9 for k in ("f32_flops", "bf16_flops"))
    print(f"matmul peak: f32 {f32:,.1f} GFLOP/s, bf16 {bf16:,.1f} GFLOP/s", flush=True)
  if "train" in sections:
    results["train"] = [bench_train(name, peak, overrides) for name in _PRESETS.value]
    print(
        f"{'preset':<12}{'devices':>8}{'compile s':>10}{'step ms':>10}{'tokens/s':>12}"
        f"{'MFU':>8}"
    )
    for r in results["train"]:
      print(
          f"{r['preset']:<12}{r['devices']:>8}{r['compile_s']:>10.1f}{r['step_ms']:>10.2f}"
          f"{r['tokens_per_s']:>12,.0f}{r['mfu']:>8.1%}",
          flush=True,
      )
  if "profile" in sections:
    results["profile"] = {name: bench_profile(name, overrides) for name in _PRESETS.value}
  if "torch" in sections:
    side_by_side = torch_table(_PRESETS.value, overrides)
    if side_by_side is not None:
      results["torch"] = side_by_side
  if "pipeline" in sections:
    default = next((r for r in results.get("train", []) if r["preset"] == "default"), None)
    steps_per_s = (
        1e3 / default["step_ms"]
        if default
        else 1e3 / bench_train("default", peak, overrides)["step_ms"]
    )
    results["pipeline"] = bench_pipeline(steps_per_s, overrides)
    print(
        f"input pipeline: {results['pipeline']['batches_per_s']:,.0f} batches/s = "
        f"{results['pipeline']['headroom']:.1f}x what the default train step consumes",
        flush=True,
    )
  if "checkpoint" in sections:
    results["checkpoint"] = bench_checkpoint("default", overrides)
    c = results["checkpoint"]
    print(
        f"checkpoint: loop blocked {c['blocked_s'] * 1e3:.0f} ms per async save of "
        f"{c['state_mib']:.1f} MiB, of which {c['checksum_s'] * 1e3:.1f} ms hashing the previous "
        f"save's files (final wait {c['final_wait_s'] * 1e3:.0f} ms)",
        flush=True,
    )
  if "generate" in sections:
    results["generate"] = g = bench_generate(overrides)
    print(
        f"generation, {g['new_tokens']} new tokens: KV cache {g['kv_cache_tokens_per_s']:,.0f} "
        f"tok/s, recompute {g['recompute_tokens_per_s']:,.0f} tok/s: {g['speedup']:.1f}x",
        flush=True,
    )
  if "scaling" in sections:
    results["scaling"] = bench_scaling(peak, overrides)
    print(f"{'scaling':<12}{'step ms':>10}{'tokens/s':>12}{'MFU':>8}")
    for r in results["scaling"]:
      print(
          f"{r['variant']:<12}{r['step_ms']:>10.2f}{r['tokens_per_s']:>12,.0f}{r['mfu']:>8.1%}",
          flush=True,
      )
  with open(_OUT.value, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {os.path.abspath(_OUT.value)}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
