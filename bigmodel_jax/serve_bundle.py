"""Serves an export bundle (`--mode=export`) without our model or experiment code.

  python -m bigmodel_jax.serve_bundle BUNDLE [--host=127.0.0.1] [--port=8000] [--max_batch=16]
  python -m bigmodel_jax.serve_bundle BUNDLE --check    # reproduce golden.json, exit 0 or 1

The server is the same one as `--mode=serve`: OpenAI-compatible completions (serve/textgen.py)
whose engine runs the bundle's StableHLO programs (serve/bundle.py), or POST /v1/predict
(serve/predict.py) whose classifier runs the bundle's program on the bundle's preprocessing
(serve/bundle_predict.py), instead of the model's and task's code. --check: a textgen bundle
regenerates its golden tokens; a classifier's its golden labels and probabilities (within
rtol 1e-5).
"""

import json
import os
import sys

from absl import app, flags

from bigmodel_jax import config as config_lib
from bigmodel_jax.data import tokenizers
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.serve import app as app_lib
from bigmodel_jax.serve import bundle as bundle_lib
from bigmodel_jax.serve import bundle_predict
from bigmodel_jax.serve import engine as engine_lib

_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind.")
_PORT = flags.DEFINE_integer("port", 8000, "Port (0: any free one).")
_MAX_BATCH = flags.DEFINE_integer(
    "max_batch", 16, "KV-cache slots decoded together (textgen); batch size (classifiers)."
)
_API_KEY = flags.DEFINE_string("api_key", "", "Bearer key ('' -> $BIGMODEL_API_KEY or none).")
_CHECK = flags.DEFINE_bool("check", False, "Check the bundle against golden.json and exit.")

MODEL_CODE = ("bigmodel_jax.models", "bigmodel_jax.tasks", "experiments")


def check(bundle: str, programs, params, meta, tokenizer) -> bool:
  """Runs golden.json's prompts through the bundle's programs; True when every token matches."""
  with open(os.path.join(bundle, "golden.json")) as f:
    golden = json.load(f)
  engine = engine_lib.Engine(programs, params, meta["vocab_size"], _MAX_BATCH.value, 64)
  engine.warm_up()
  engine.start()
  try:
    outs = engine.run_all([
        dict(prompt=tokenizer.encode(g["prompt"]), max_tokens=g["max_tokens"],
             temperature=g["temperature"], top_p=1.0, seed=g["seed"]) for g in golden
    ])  # fmt: skip
  finally:
    engine.stop()
  ok = True
  for g, out in zip(golden, outs):
    same = out == g["tokens"]
    ok &= same
    print(f"{'ok  ' if same else 'DIFF'} {g['prompt']!r} temperature {g['temperature']}: "
          f"{tokenizer.decode(out)!r}")  # fmt: skip
  return ok


def main(argv) -> None:
  if len(argv) != 2:
    raise UsageError("usage: python -m bigmodel_jax.serve_bundle BUNDLE [--check] [--port=N]")
  bundle = argv[1]
  meta = bundle_lib.read_meta(bundle)
  if _CHECK.value:
    if meta["kind"] == "predict":
      ok = bundle_predict.check(bundle, meta, _MAX_BATCH.value)
    else:
      _, programs, params = bundle_lib.load_programs(bundle)
      tokenizer = tokenizers.load_tokenizer(os.path.join(bundle, "tokenizer"))
      ok = check(bundle, programs, params, meta, tokenizer)
    loaded = [m for m in sys.modules if m.startswith(MODEL_CODE)]
    print(f"model/experiment modules imported: {loaded or 'none'}")
    if not ok or loaded:
      raise RunError(f"{bundle} does not reproduce its golden outputs")
    print(f"{bundle}: golden outputs reproduced")
    return
  serve = config_lib.base_config("lm").serve
  serve.host, serve.port, serve.max_batch = _HOST.value, _PORT.value, _MAX_BATCH.value
  serve.api_key = _API_KEY.value
  app_lib.serve(bundle_lib.service(bundle, serve), serve)


def _entry(argv):
  try:
    main(argv)
  except (UsageError, RunError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(_entry)
