"""One train step compiled twice, with XLA's default options and with `--options`, alternated:

  python -m bigmodel_jax.tools.xla_ab --presets=mid \
      --options='{"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"}' [--config.a.b=v ...]

`--options` is a JSON object of XLA compile options (DebugOptions fields, as
`jax.jit(...).lower(...).compile(compiler_options=...)` takes them); an unknown name or value is
XLA's one-line error. Both executables start from the same state and batch and run in chunks
(default, variant, default, ...); the speedup is the median over pairs of default time / variant
time, so a number above 1 means the options help. --presets and --repeats are bench.py's.
"""

import json
import statistics
import sys

from absl import app, flags
import jax

from bigmodel_jax import bench, parallel
from bigmodel_jax.errors import UsageError

FLAGS = flags.FLAGS
_OPTIONS = flags.DEFINE_string("options", "{}", "XLA compile options as a JSON object.")


def compare(name: str, options: dict, overrides: dict[str, str], repeats: int) -> dict:
  """{"default_tokens_per_s", "variant_tokens_per_s", "speedup"} for preset `name`."""
  t = bench.Trainable(bench.preset_config(name, overrides), bench.vocab_of(name))
  lowered = t.step_fn.lower(t.state, t.batch, jax.random.key(1))
  default, variant = lowered.compile(), lowered.compile(compiler_options=options)
  t.chunk_seconds(5, default), t.chunk_seconds(5, variant)  # warm-up
  pairs = [(t.chunk_seconds(5, default), t.chunk_seconds(5, variant)) for _ in range(repeats)]
  return {
      "default_tokens_per_s": t.tokens_per_step / statistics.median(a for a, _ in pairs),
      "variant_tokens_per_s": t.tokens_per_step / statistics.median(b for _, b in pairs),
      "speedup": statistics.median(a / b for a, b in pairs),
  }


def main(args: tuple[list[str], dict[str, str]]) -> None:
  overrides = args[1]
  try:
    options = json.loads(_OPTIONS.value)
    if not isinstance(options, dict):
      raise ValueError("not an object")
  except ValueError as e:
    sys.exit(f"error: --options={_OPTIONS.value!r} must be a JSON object of XLA options ({e})")
  try:  # before JAX starts: the CPU devices of the first preset (as bench.py does)
    parallel.configure_cpu_devices(bench.preset_config(FLAGS.presets[0], overrides))
  except UsageError as e:
    sys.exit(f"error: {e}")
  print(f"{'preset':<12}{'default tok/s':>14}{'variant tok/s':>14}{'speedup':>9}")
  for name in FLAGS.presets:
    try:
      r = compare(name, options, overrides, FLAGS.repeats)
    except jax.errors.JaxRuntimeError as e:  # XLA's word on an unknown option or value
      sys.exit(f"error: --options: {str(e).splitlines()[0]}")
    print(
        f"{name:<12}{r['default_tokens_per_s']:>14,.0f}{r['variant_tokens_per_s']:>14,.0f}"
        f"{r['speedup']:>8.3f}x",
        flush=True,
    )


if __name__ == "__main__":
  app.run(main, flags_parser=bench.parse_flags)
