"""Deployment: `--mode=serve` (an HTTP server) and `--mode=export` (a portable bundle).

  app.py        the server every service runs in: auth, limits, logging, /health, /metrics, SIGTERM
  engine.py     continuous batching over KV-cache slots for a GPT
  bundle.py     --mode=export's bundle (jax.export StableHLO) and loading it (serve_bundle.py)
  bundle_predict.py  the /v1/predict bundles (sentiment, tabular, imagecls, translate)
  textgen.py    OpenAI-compatible completions / chat completions on the engine (tasks lm, sft)
  predict.py    POST /v1/predict with requests batched within serve.max_wait_ms
  predictors.py its per-task glue: sentiment, tabular, imagecls, translate

`--mode=serve --config.serve.bundle=DIR` serves an export bundle instead of the workdir's
checkpoint (serve_bundle below; the same as `python -m bigmodel_jax.serve_bundle DIR`).

Which service a task gets is a registry here (task name -> module with `make_service`), so the
per-task glue stays in one small module per task and the trainer knows only `run`.
"""

import importlib
import os

from bigmodel_jax.errors import UsageError

MODES = ("serve", "export")
# Tasks --mode=export can bundle (serve/bundle.py; /v1/predict's in serve/bundle_predict.py).
EXPORTABLE = ("lm", "sft", "classify_text", "tabular", "classify_image", "translate")
# config.task -> bigmodel_jax/serve/<module>.py, whose make_service(task, variables, config)
# builds the service; predictors.py holds the /v1/predict glue of every classifier.
SERVICES = {
    "lm": "textgen",
    "sft": "textgen",  # a fine-tuned GPT: the same completions (chat suits it best)
    "classify_text": "predictors",
    "tabular": "predictors",
    "classify_image": "predictors",
    "translate": "predictors",
}


def check_mode(mode: str, config) -> None:
  """Before any restore: the task can do `mode` and serve.* is in range (one-line UsageError)."""
  check(config.serve)
  tasks = EXPORTABLE if mode == "export" else SERVICES
  if config.task not in tasks:
    raise UsageError(
        f"--mode={mode} is not available for task {config.task!r}; valid for: "
        f"{', '.join(sorted(tasks))}"
    )


def run(mode: str, task, config, variables, workdir: str):
  """Runs `mode` (one of MODES) on a restored task; the trainer calls it after restoring."""
  check_mode(mode, config)
  if mode == "export":
    return _export(task, variables, config, workdir)
  from bigmodel_jax.serve import app  # pylint: disable=g-import-not-at-top (fastapi: serve only)

  module = importlib.import_module(f"{__name__}.{SERVICES[config.task]}")
  service = module.make_service(task, variables, config)
  app.serve(service, config.serve)


def serve_bundle(config) -> None:
  """--mode=serve --config.serve.bundle=DIR: serves an export bundle as serve_bundle.py does."""
  from bigmodel_jax.serve import app, bundle  # pylint: disable=g-import-not-at-top

  meta = bundle.read_meta(config.serve.bundle)
  task = meta.get("task", "lm or sft")  # textgen bundles come from either
  if config.task not in (task, *(("lm", "sft") if meta["kind"] == "textgen" else ())):
    raise UsageError(
        f"serve.bundle={config.serve.bundle} was exported from a {task} run, not from "
        f"{config.experiment}'s task {config.task}; serve it with that experiment"
    )
  app.serve(bundle.service(config.serve.bundle, config.serve), config.serve)


def check(s) -> None:
  """serve.* values in range, or a one-line UsageError."""
  problems = [
      (not 0 <= s.port < 65536, f"serve.port={s.port} must be in [0, 65535] (0: any free port)"),
      (s.max_batch < 1, f"serve.max_batch={s.max_batch} must be >= 1"),
      (s.max_queue < 1, f"serve.max_queue={s.max_queue} must be >= 1"),
      (s.max_wait_ms < 0, f"serve.max_wait_ms={s.max_wait_ms} must be >= 0"),
      (s.max_body_mb <= 0, f"serve.max_body_mb={s.max_body_mb} must be > 0"),
      (s.drain_s < 0, f"serve.drain_s={s.drain_s} must be >= 0"),
  ]
  for bad, message in problems:
    if bad:
      raise UsageError(message)


def _export(task, variables, config, workdir: str) -> str:
  from bigmodel_jax.serve import bundle  # pylint: disable=g-import-not-at-top

  out = bundle.export(
      task, variables, config, workdir, config.serve.export_dir or f"{workdir}/export"
  )
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
  print(f"wrote {out} ({size / 2**20:.1f} MB); check it with python -m "
        f"bigmodel_jax.serve_bundle {out} --check", flush=True)  # fmt: skip
  return out
