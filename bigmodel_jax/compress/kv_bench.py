"""KV cache float vs int8: `python -m bigmodel_jax.compress.kv_bench [--batches=1,8]
[--new_tokens=32] [--dtype=float32] [--out=kv_bench.json]`.

At textgen's gpt2_124m shape (12 x 768, context 1024, 50257-piece vocabulary) with random
weights: the decoding cache's bytes and generate()'s tokens/s (all rows together, greedy, an
8-token prompt) with model.kv_cache=float and int8, per batch size. The two kinds are timed in
alternation and the median of --repeats runs is kept: a shared machine varies run to run.
"""

import functools
import json
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax import config as config_lib
from bigmodel_jax import generate
from bigmodel_jax.models import gpt, kv_cache

_PRESET = flags.DEFINE_string("preset", "gpt2_124m", "textgen preset whose model shape is timed.")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Sequences generated together.")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Tokens generated per sequence per timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per kind and batch (median kept).")
# gpt2_124m computes in bfloat16 on accelerators; XLA:CPU runs bfloat16 matmuls slowly, so the
# CPU default is float32 (the float cache is then float32 too: int8's best case for memory).
_DTYPE = flags.DEFINE_string("dtype", "float32", "model.dtype: float32 | bfloat16.")
_OUT = flags.DEFINE_string("out", "kv_bench.json", "Where to write the JSON results.")


def cache_bytes(model, batch: int) -> int:
  """Bytes of the decoding cache for `batch` sequences of the full context (shape-first)."""
  shapes = jax.eval_shape(
      model.clone(decode=True).init,
      jax.random.key(0),
      jnp.zeros((batch, model.block_size), jnp.int32),
  )["cache"]
  return int(sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes)))


def main(argv):
  del argv
  config = config_lib.load_experiment(f"textgen:{_PRESET.value}")
  config_lib.set_values(config, {"model.dtype": _DTYPE.value}, "kv_bench")
  model = gpt.make(config.model, config.data.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  prompt = np.arange(8, dtype=np.int32)
  rows = []
  for batch in (int(b) for b in _BATCHES.value):
    runs = {
        kind: functools.partial(
            generate.generate, model.clone(kv_cache=kind), params, prompt,
            max_new_tokens=_NEW.value, rng=jax.random.key(0), temperature=0, num_samples=batch,
        )
        for kind in kv_cache.KINDS
    }  # fmt: skip
    outs = {kind: run() for kind, run in runs.items()}  # compiles
    wall, cpu = {kind: [] for kind in runs}, {kind: [] for kind in runs}
    for _ in range(_REPEATS.value):
      for kind, run in runs.items():
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall[kind].append(time.perf_counter() - start)
        cpu[kind].append(time.process_time() - start_cpu)
    for kind in runs:
      rows.append(
          {
              "batch": batch,
              "kv_cache": kind,
              "cache_mib": cache_bytes(model.clone(kv_cache=kind), batch) / 2**20,
              "tokens_per_s": batch * _NEW.value / statistics.median(wall[kind]),
              # Per second of this process's CPU time (all its threads): steadier than wall
              # time when other programs share the cores.
              "tokens_per_cpu_s": batch * _NEW.value / statistics.median(cpu[kind]),
              # New greedy tokens of the first sequence equal to the float cache's, in a row.
              "agree_with_float": int(
                  np.argmin(np.append(outs[kind][0] == outs["float"][0], False)) - len(prompt)
              ),
          }
      )
  print(f"{_PRESET.value} shape, {_DTYPE.value}, {_NEW.value} new tokens, on {jax.devices()[0]}")
  print(f"{'batch':>6}{'kv_cache':>10}{'cache MiB':>11}{'tokens/s':>10}{'tokens/cpu-s':>14}")
  for r in rows:
    print(
        f"{r['batch']:>6}{r['kv_cache']:>10}{r['cache_mib']:>11.1f}{r['tokens_per_s']:>10.1f}"
        f"{r['tokens_per_cpu_s']:>14.1f}"
    )
  with open(_OUT.value, "w") as f:
    json.dump({"preset": _PRESET.value, "dtype": _DTYPE.value, "rows": rows}, f, indent=1)
  print(f"wrote {_OUT.value}", flush=True)


if __name__ == "__main__":
  app.run(main)
