"""Generation speed from an imported Hugging Face model, ours against transformers' generate:

  python -m bigmodel_jax.interop.bench [--preset=gpt2_124m] [--batch_sizes=1,8]
                                       [--new_tokens=128] [--out=interop_bench.json]

Builds a random-weight folder of the preset's shape (our init, exported with --mode=export_hf's
code), imports it the way init_from=hf:<dir> does (timed: config.json + safetensors -> our
parameters), then for each batch size generates `new_tokens` greedy tokens after a 16-token
prompt with our KV-cache sampler (generate.generate, compiled once beforehand) and with
transformers' `generate(do_sample=False)` on the same weights, same CPU, same process; both in
float32. Reports tokens/s (batch * new tokens / seconds, best of `repeats`), the ratio, and
whether the two produced the same tokens. transformers and torch are needed here only.

For models too large to build through our init on a small machine:

  python -m bigmodel_jax.interop.bench --preset=llama_1b --make_folder=/tmp/llama_1b
  python -m bigmodel_jax.interop.bench --preset=llama_1b --import_folder=/tmp/llama_1b

The first writes a random bfloat16 folder of the preset's shape, sharded (~1 GB per file, with
model.safetensors.index.json) as Hugging Face publishes large models, tensor names and shapes
from transformers on its "meta" device (nothing allocated); the second times the import alone
and reports the process's peak resident memory.
"""

import json
import os
import resource
import sys
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

from bigmodel_jax import config as config_lib
from bigmodel_jax import generate, tasks
from bigmodel_jax.interop import export

_PRESET = flags.DEFINE_string("preset", "gpt2_124m", "textgen preset whose shape to build.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes (rows generated at once).")
_NEW = flags.DEFINE_integer("new_tokens", 128, "Greedy tokens generated per row.")
_PROMPT = flags.DEFINE_integer("prompt_tokens", 16, "Prompt length in tokens.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs per measurement (best taken).")
_MAKE = flags.DEFINE_string("make_folder", "", "Only write a random sharded bf16 folder here.")
_IMPORT = flags.DEFINE_string("import_folder", "", "Only time importing this folder.")
_OUT = flags.DEFINE_string("out", "interop_bench.json", "Where to write the JSON results.")

F32 = {"model.dtype": "float32", "model.param_dtype": "float32", "parallel.cpu_devices": 0}


def _config(preset: str, init_from: str = ""):
  return config_lib.from_command_line(
      f"textgen:{preset}", {}, {**F32, "init_from": init_from, "data.tokenizer": "byte"}
  )


def build_folder(preset: str, folder: str) -> None:
  """A random-weight Hugging Face folder of the preset's shape."""
  config = _config(preset)
  config.data.tokenizer = "byte"
  task = tasks.get(config.task)(config)
  model = task.model.clone(vocab_size=config.data.vocab_size)  # exactly the preset's vocabulary
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  export.export(
      jax.device_get(jax.tree.map(lambda x: x.unbox(), params, is_leaf=_boxed)), model, folder
  )


def _boxed(x) -> bool:
  return hasattr(x, "unbox")


def import_model(folder: str, preset: str):
  """-> (model, params, seconds): what init_from=hf:<folder> does, timed."""
  start = time.perf_counter()
  config = _config(preset, f"hf:{folder}")
  task = tasks.get(config.task)(config)
  abstract = jax.eval_shape(
      lambda: jax.tree.map(
          lambda x: x.unbox(), task.init_variables(jax.random.key(0)), is_leaf=_boxed
      )
  )["params"]
  params = jax.device_put(task.pretrained_params(abstract))
  jax.block_until_ready(params)
  return task.model, params, time.perf_counter() - start


def make_sharded_folder(preset: str, folder: str, shard_bytes: int = 1 << 30) -> None:
  """A random bfloat16 Llama/GPT-2 folder of the preset's shape, sharded like the Hub's."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from bigmodel_jax.interop import hf_config  # pylint: disable=g-import-not-at-top

  config = _config(preset)
  model = tasks.get(config.task)(config).model.clone(vocab_size=config.data.vocab_size)
  hf = hf_config.to_hf(model, hf_config.arch_of(model))
  hf["dtype"] = "bfloat16"
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  with torch.device("meta"):
    shapes = {
        k: tuple(v.shape)
        for k, v in transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.from_pretrained(folder)
        )
        .state_dict()
        .items()
    }
  if hf["tie_word_embeddings"]:
    shapes.pop("lm_head.weight", None)
  rng, shard, size, weight_map, n = np.random.default_rng(0), {}, 0, {}, 0
  names = sorted(shapes)
  for i, name in enumerate(names):
    shard[name] = (rng.standard_normal(shapes[name], np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    size += shard[name].nbytes
    if size >= shard_bytes or i == len(names) - 1:
      n += 1
      file = f"model-{n:05d}.safetensors"
      save_file(shard, os.path.join(folder, file), metadata={"format": "pt"})
      weight_map.update(dict.fromkeys(shard, file))
      shard, size = {}, 0
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)


def _import_only(folder: str, preset: str) -> None:
  jax.devices()  # the backend starts outside the timing
  start = time.perf_counter()
  config = _config(preset, f"hf:{folder}")
  task = tasks.get(config.task)(config)
  abstract = jax.eval_shape(
      lambda: jax.tree.map(
          lambda x: x.unbox(), task.init_variables(jax.random.key(0)), is_leaf=_boxed
      )
  )["params"]
  params = task.pretrained_params(abstract)
  seconds = time.perf_counter() - start
  count = sum(x.size for x in jax.tree.leaves(params))
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
  print(
      f"import of {folder} ({count:,} parameters, float32): {seconds:.1f} s, "
      f"peak resident memory {peak:.2f} GiB",
      flush=True,
  )


def _best(fn, repeats: int) -> tuple[float, np.ndarray]:
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return min(times), out


def main(argv) -> None:
  del argv
  if _MAKE.value:
    return make_sharded_folder(_PRESET.value, _MAKE.value)
  if _IMPORT.value:
    return _import_only(_IMPORT.value, _PRESET.value)
  import torch  # pylint: disable=g-import-not-at-top (benchmark reference only)
  import transformers  # pylint: disable=g-import-not-at-top

  results = {"preset": _PRESET.value, "new_tokens": _NEW.value, "rows": []}
  with tempfile.TemporaryDirectory() as folder:
    build_folder(_PRESET.value, folder)
    model, params, seconds = import_model(folder, _PRESET.value)
    results["import_s"] = round(seconds, 2)
    print(f"import of a random {_PRESET.value}-shaped folder: {seconds:.2f} s", flush=True)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
  prompt = np.random.RandomState(0).randint(0, model.vocab_size, (_PROMPT.value,))
  print(f"torch threads {torch.get_num_threads()}; jax devices {jax.devices()}", flush=True)
  for batch in map(int, _BATCHES.value):
    ours_fn = lambda b=batch: generate.generate(  # noqa: E731
        model,
        params,
        prompt,
        max_new_tokens=_NEW.value,
        rng=jax.random.key(0),
        temperature=0,
        num_samples=b,
    )
    ids = torch.tensor(np.tile(prompt, (batch, 1)))

    def theirs_fn(ids=ids, new=_NEW.value):
      with torch.no_grad():
        return reference.generate(
            ids, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0
        ).numpy()

    ours_fn()  # compiles
    theirs_fn(new=4)  # warms up
    ours_s, ours = _best(ours_fn, _REPEATS.value)
    theirs_s, theirs = _best(theirs_fn, _REPEATS.value)
    tokens = batch * _NEW.value
    row = {
        "batch": batch,
        "ours_tokens_per_s": round(tokens / ours_s, 1),
        "transformers_tokens_per_s": round(tokens / theirs_s, 1),
        "speedup": round(theirs_s / ours_s, 2),
        "same_tokens": bool(np.array_equal(ours, theirs)),
    }
    results["rows"].append(row)
    print(json.dumps(row), flush=True)
  with open(_OUT.value, "w") as f:
    json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main, argv=sys.argv[:1] + [a for a in sys.argv[1:]])
