"""One optimizer update (clipping + the preset's optimizer) with our `optim.clip_by_global_norm`
against the same chain with optax's, on bench presets' parameter shapes, one CPU device:

  python -m bigmodel_jax.tools.clip_bench --presets=mid,gpt2_small

The two alternate (ours, optax, ours, ...) and each is the median of its runs; the gradients'
norm is over train.grad_clip, so both clip. Parameters and moments are donated, as in training.
"""

import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import optax

from bigmodel_jax import bench, optim
from bigmodel_jax.tasks import lm

# --presets and --repeats are bench.py's flags (imported with it).
FLAGS = flags.FLAGS


def _update_fn(tx):
  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(update, donate_argnums=(0, 1))


def compare(name: str, repeats: int) -> dict[str, float]:
  """{"ours_ms", "optax_ms", "speedup"}: one update at preset `name`, medians of `repeats`."""
  config = bench.preset_config(name, {})
  model = lm.Task(config).model.clone(vocab_size=bench.vocab_of(name))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  shapes = jax.tree.map(lambda s: s.value if hasattr(s, "value") else s, shapes["params"])
  grads = jax.tree.map(lambda s: jnp.full(s.shape, 1.0, s.dtype), shapes)
  runs = {}
  for key, clip in (("ours", optim.clip_by_global_norm), ("optax", optax.clip_by_global_norm)):
    tx, _ = optim.make_optimizer(config.train, clip=clip)
    params = jax.tree.map(lambda g: g * 0.01, grads)
    runs[key] = [_update_fn(tx), params, tx.init(params), []]
  for _ in range(repeats + 1):
    for run in runs.values():
      update, params, opt_state, times = run
      start = time.perf_counter()
      run[1], run[2] = jax.block_until_ready(update(params, opt_state, grads))
      times.append(time.perf_counter() - start)
  ms = {key: 1e3 * statistics.median(run[3][1:]) for key, run in runs.items()}
  return {"ours_ms": ms["ours"], "optax_ms": ms["optax"], "speedup": ms["optax"] / ms["ours"]}


def main(argv):
  del argv
  jax.config.update("jax_platforms", "cpu")
  print(f"{'preset':<12}{'ours ms':>10}{'optax ms':>10}{'speedup':>9}")
  for name in FLAGS.presets:
    r = compare(name, FLAGS.repeats)
    print(f"{name:<12}{r['ours_ms']:>10.1f}{r['optax_ms']:>10.1f}{r['speedup']:>8.2f}x", flush=True)


if __name__ == "__main__":
  app.run(main)
