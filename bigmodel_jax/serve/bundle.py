"""Export bundles: `--mode=export` writes one, `python -m bigmodel_jax.serve_bundle` serves it.

A bundle is a folder that needs none of our model or experiment code. A textgen bundle (the
classifiers' is in serve/bundle_predict.py):

  bundle.json            kind, model id, context, vocabulary, prefill buckets, platforms
  prefill_<L>.jax        jax.export StableHLO: (params, tokens (1, L)) -> (logits, one slot's cache)
  decode.jax             (params, caches (s, ...), tokens (s,)) -> (logits (s, V), caches), where
                         s (the number of slots, serve.max_batch) is a symbolic dimension
  params.msgpack         the parameters (flax.serialization)
  tokenizer/             the run's tokenizer folder
  config.json            the run's config, for the record
  golden.json            prompts and the tokens the live model generated for them (greedy, and
                         one seeded sample), which `serve_bundle BUNDLE --check` must reproduce

Every program is lowered for cpu and cuda (jax.export's multi-platform lowering), so one bundle
is meant for either; only cpu has been run so far (a CPU-only machine lowers for cuda, it cannot
run it).
"""

import json
import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.serve import bundle_predict
from bigmodel_jax.serve import engine as engine_lib

PLATFORMS = ("cpu", "cuda")
GOLDEN_PROMPTS = ("def ", "import os\n", "class ")


def _spec(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _write(path, data: bytes) -> None:
  with open(path, "wb") as f:
    f.write(data)


def export(task, variables, config, workdir: str, out: str) -> str:
  """Writes the bundle of a restored task into `out` (a new folder); returns its path."""
  if os.path.exists(out):
    raise RunError(f"serve.export_dir={out} exists; remove it or give another folder")
  tmp = out + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    if config.task in bundle_predict.TASKS:
      meta = bundle_predict.export(task, variables, config, workdir, tmp)
    else:
      meta = export_textgen(task, variables, config, workdir, tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))
    with open(os.path.join(tmp, "bundle.json"), "w") as f:
      json.dump(meta, f, indent=1)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  os.rename(tmp, out)  # complete or absent: a failed export leaves no half bundle
  return out


def export_textgen(task, variables, config, workdir: str, tmp: str) -> dict:
  """Writes a restored lm task's bundle files into `tmp`; returns bundle.json's contents."""
  programs = engine_lib.gpt_programs(task.model)
  params = jax.tree.map(np.asarray, flax.core.unfreeze(variables["params"]))
  p_spec = jax.tree.map(_spec, params)
  buckets = engine_lib.buckets(programs.context)
  for size in buckets:
    exp = jax.export.export(jax.jit(programs.prefill), platforms=PLATFORMS)(
        p_spec, jax.ShapeDtypeStruct((1, size), jnp.int32)
    )
    _write(os.path.join(tmp, f"prefill_{size}.jax"), exp.serialize())
  (s,) = jax.export.symbolic_shape("s")
  caches = jax.tree.map(lambda x: jax.ShapeDtypeStruct((s, *x.shape), x.dtype), programs.cache)
  exp = jax.export.export(jax.jit(programs.decode), platforms=PLATFORMS)(
      p_spec, caches, jax.ShapeDtypeStruct((s,), jnp.int32)
  )
  _write(os.path.join(tmp, "decode.jax"), exp.serialize())
  _write(os.path.join(tmp, "params.msgpack"), flax.serialization.msgpack_serialize(params))
  # The task's tokenizer, saved (not the workdir's folder copied): a model scored straight from
  # init_from=hf:<dir> has never written one into its workdir.
  task.tokenizer.save(os.path.join(tmp, "tokenizer"))
  meta = {
      "kind": "textgen",
      "name": config.experiment.split(":")[0],
      "context": programs.context,
      "vocab_size": task.tokenizer.vocab_size,
      "buckets": buckets,
      "platforms": list(PLATFORMS),
  }
  live = engine_lib.Engine(programs, params, task.tokenizer.vocab_size, 4, 64)
  golden = golden_outputs(live, task.tokenizer)
  with open(os.path.join(tmp, "golden.json"), "w") as f:
    json.dump(golden, f)
  return meta


def golden_outputs(engine, tokenizer) -> list[dict]:
  """Greedy continuations of GOLDEN_PROMPTS and one seeded sample, batched together."""
  cases = [dict(prompt=p, temperature=0.0, seed=0) for p in GOLDEN_PROMPTS]
  cases.append(dict(prompt=GOLDEN_PROMPTS[0], temperature=1.0, seed=1))
  prompts = [np.asarray(tokenizer.encode(c["prompt"]), np.int32) for c in cases]
  max_tokens = min(16, engine.context - max(len(p) for p in prompts))
  engine.warm_up()
  engine.start()
  try:
    outs = engine.run_all(
        [dict(prompt=p, max_tokens=max_tokens, temperature=c["temperature"], top_p=1.0,
              seed=c["seed"]) for p, c in zip(prompts, cases)]  # fmt: skip
    )
  finally:
    engine.stop()
  return [dict(c, max_tokens=max_tokens, tokens=o) for c, o in zip(cases, outs)]


def load_programs(bundle: str) -> tuple[dict, engine_lib.Programs, dict]:
  """(bundle.json, the engine's programs from the exported StableHLO, params)."""
  with open(os.path.join(bundle, "bundle.json")) as f:
    meta = json.load(f)
  read = lambda name: open(os.path.join(bundle, name), "rb").read()  # noqa: E731, SIM115
  prefill = {size: jax.export.deserialize(read(f"prefill_{size}.jax")) for size in meta["buckets"]}
  decode = jax.export.deserialize(read("decode.jax"))
  params = flax.serialization.msgpack_restore(read("params.msgpack"))
  first = prefill[meta["buckets"][0]]
  _, one = jax.tree.unflatten(first.out_tree, first.out_avals)
  programs = engine_lib.Programs(
      prefill=lambda p, tokens: prefill[tokens.shape[1]].call(p, tokens),
      decode=decode.call,
      cache=jax.tree.map(_spec, one),
      context=meta["context"],
  )
  return meta, programs, params


def read_meta(bundle: str) -> dict:
  """bundle.json, or a one-line UsageError when `bundle` is not a bundle."""
  path = os.path.join(bundle, "bundle.json")
  if not os.path.isfile(path):
    raise UsageError(
        f"{bundle} is not an export bundle (no bundle.json); make one with --mode=export"
    )
  with open(path) as f:
    return json.load(f)


def service(bundle: str, serve_config):
  """The service (serve/app.py) that serves `bundle`: completions or /v1/predict."""
  meta = read_meta(bundle)
  if meta["kind"] == "predict":
    return bundle_predict.load(bundle, meta, serve_config)
  from bigmodel_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  from bigmodel_jax.serve import textgen  # pylint: disable=g-import-not-at-top (fastapi)

  _, programs, params = load_programs(bundle)
  tokenizer = tokenizers.load_tokenizer(os.path.join(bundle, "tokenizer"))
  return textgen.TextgenService(programs, params, tokenizer, serve_config, meta["name"])
