"""Hugging Face interop against the real references: transformers' forward and generate (on tiny
random GPT-2 and Llama folders it wrote), its from_pretrained on our exports, and the tokenizers
library's encode/decode. transformers and torch are test-only dependencies."""

import os

import flax
import jax
import numpy as np
import pytest

from bigmodel_jax import generate, lora, tasks, trainer
from bigmodel_jax.data import tokenizers as our_tokenizers
from bigmodel_jax.errors import UsageError
from bigmodel_jax.interop import export
from tests import hf_folders
from tests.helpers import tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA3_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
# name -> how the folder is made: GPT-2 (tied, biases, learned positions); Llama with GQA
# (4 query / 2 key-value heads), an untied head and rope_theta 50000; the same with Llama-3 rope
# scaling.
KINDS = {
    "gpt2": hf_folders.gpt2,
    "llama_gqa_untied": hf_folders.llama,
    "llama3_rope_scaling": lambda d: hf_folders.llama(d, rope_scaling=LLAMA3_SCALING),
}
TOKENS = np.random.RandomState(0).randint(0, hf_folders.VOCAB, (2, 48))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  return {name: (str(root / name), make(str(root / name))) for name, make in KINDS.items()}


def _imported(folder: str, workdir: str, **overrides):
  """(task, params) for init_from=hf:<folder>, through the task as the trainer uses it."""
  c = tiny_config("", init_from=f"hf:{folder}", model__block_size=64, **overrides)
  task = tasks.get(c.task)(c)
  task.setup(workdir, create=False)
  abstract = jax.eval_shape(
      lambda: flax.linen.meta.unbox(task.init_variables(jax.random.key(0))["params"])
  )
  return task, task.pretrained_params(abstract)


def _reference_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_greedy_tokens_match_transformers(folders, kind, tmp_path):
  folder, reference = folders[kind]
  task, params = _imported(folder, str(tmp_path))
  ours = np.asarray(task.model.apply({"params": params}, TOKENS))
  ref = _reference_logits(reference, TOKENS)
  assert ours.shape == ref.shape
  print(f"{kind}: max |logit diff| vs transformers {np.abs(ours - ref).max():.1e}")  # pytest -s
  assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()
  if kind == "llama3_rope_scaling":  # the scaling changes the model: the case tests something
    assert np.abs(ref - _reference_logits(folders["llama_gqa_untied"][1], TOKENS)).max() > 1e-3

  prompt = TOKENS[0, :6]
  ours = generate.generate(
      task.model, params, prompt, max_new_tokens=20, rng=jax.random.key(0), temperature=0
  )
  with torch.no_grad():
    theirs = reference.generate(
        torch.tensor(prompt[None]), max_new_tokens=20, do_sample=False, eos_token_id=None
    ).numpy()
  np.testing.assert_array_equal(ours, theirs)
  assert len(set(ours[0, 6:].tolist())) > 2  # not a degenerate repeat of one token


@pytest.mark.parametrize("kind", ["gpt2", "llama_gqa_untied"])
def test_export_round_trip_loads_in_transformers_with_the_same_logits(folders, kind, tmp_path):
  folder, reference = folders[kind]
  task, params = _imported(folder, str(tmp_path / "w"))
  out = export.export(params, task.model, str(tmp_path / "out"), task.tokenizer)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert (
      np.abs(_reference_logits(loaded, TOKENS) - _reference_logits(reference, TOKENS)).max() < 1e-5
  )
  assert sorted(os.listdir(out)) == [
      "config.json",
      "model.safetensors",
      "tokenizer.json",
      "tokenizer_config.json",
  ]


def test_sharded_checkpoint_imports_like_a_single_file(folders, tmp_path):
  import shutil

  folder, reference = folders["llama_gqa_untied"]
  sharded = str(tmp_path / "sharded")
  reference.save_pretrained(sharded, max_shard_size="20KB")
  shutil.copy(os.path.join(folder, "tokenizer.json"), sharded)
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) > 2
  task, params = _imported(sharded, str(tmp_path / "w"))
  ours = np.asarray(task.model.apply({"params": params}, TOKENS))
  assert np.abs(ours - _reference_logits(reference, TOKENS)).max() < 1e-4


def test_tokenizer_matches_the_tokenizers_library_and_keeps_the_chat_template(folders, tmp_path):
  import tokenizers

  folder = folders["gpt2"][0]
  reference = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
  c = tiny_config("", data__tokenizer=f"hf:{folder}")
  task = tasks.get(c.task)(c)
  task.setup(str(tmp_path), create=True)  # saved with the run ...
  saved = our_tokenizers.load_tokenizer(str(tmp_path / "tokenizer"))  # ... and read back
  want = reference.encode(hf_folders.MIXED).ids
  for tok in (task.tokenizer, saved):
    assert tok.encode(hf_folders.MIXED).tolist() == want
    assert tok.decode(want) == reference.decode(want) == hf_folders.MIXED
    assert tok.chat_template == hf_folders.CHAT_TEMPLATE
    assert tok.vocab_size == reference.get_vocab_size()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  for i in range(10):
    (root / f"{i}.txt").write_text(hf_folders.TEXT * 3 + f"# file {i}\n")
  return f"text_files:{root}/*.txt", str(tmp_path_factory.mktemp("tfds"))


def _run_config(folder, corpus, **overrides):
  source, data_dir = corpus
  return tiny_config(
      data_dir, init_from=f"hf:{folder}", data__source=source, train__steps=2, **overrides
  )


def test_eval_and_sample_on_init_from_then_train_and_export(folders, corpus, tmp_path, capsys):
  folder, reference = folders["llama_gqa_untied"]
  workdir = str(tmp_path / "run")
  # Scoring and sampling before any training: from the folder itself, writing nothing.
  values = trainer.run(_run_config(folder, corpus), workdir, "eval")
  assert np.isfinite(values["loss"]) and not os.path.exists(workdir)
  config = _run_config(folder, corpus, sample__num_samples=1, sample__temperature=0.0)
  (text,) = trainer.run(config, workdir, "sample")
  assert text.startswith(config.sample.prompt) and len(text) > len(config.sample.prompt)
  # An export bundle straight from the folder too (its tokenizer is the folder's).
  config = _run_config(folder, corpus, serve__export_dir=str(tmp_path / "bundle"))
  bundle = trainer.run(config, workdir, "export")
  assert os.path.exists(os.path.join(bundle, "tokenizer", "tokenizer.json"))
  assert not os.path.exists(workdir)
  # Fine-tune two steps, export, and transformers gives our logits for the trained weights.
  state = trainer.run(_run_config(folder, corpus), workdir)
  out = trainer.run(_run_config(folder, corpus), workdir, "export_hf")
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  c = _run_config(folder, corpus)
  model = tasks.get(c.task)(c).model
  tokens = TOKENS[:, :32]
  params = jax.device_get(state.params)
  if params["wte"]["embedding"].ndim == 3:  # pmap's replicated layout
    params = jax.tree.map(lambda x: x[0], params)
  ours = np.asarray(model.apply({"params": params}, tokens))
  assert np.abs(_reference_logits(loaded, tokens) - ours).max() < 1e-4
  assert np.abs(_reference_logits(reference, tokens) - ours).max() > 1e-4  # it did train


def test_lora_run_exports_merged_weights_with_the_fine_tuned_logits(folders, corpus, tmp_path):
  """A LoRA fine-tune of an imported model exports base + adapters merged: transformers' logits on
  the export equal ours with the adapters applied, and differ from the base model's."""
  folder, reference = folders["llama_gqa_untied"]
  workdir = str(tmp_path / "lora")
  overrides = dict(model__lora__rank=4, train__learning_rate=3e-2, train__warmup_steps=0)
  state = trainer.run(_run_config(folder, corpus, **overrides), workdir)
  out = trainer.run(_run_config(folder, corpus, **overrides), workdir, "export_hf")
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  c = _run_config(folder, corpus)
  model = tasks.get(c.task)(c).model
  params = jax.device_get(state.params)
  if params["wte"]["embedding"].ndim == 3:  # pmap's replicated layout
    params = jax.tree.map(lambda x: x[0], params)
  assert set(params) > {lora.KEY}  # the adapters are in the trained state, beside the base
  tokens = TOKENS[:, :32]
  ours = np.asarray(model.apply({"params": lora.merge(params, 16.0)}, tokens))
  assert np.abs(_reference_logits(loaded, tokens) - ours).max() < 1e-4
  assert np.abs(_reference_logits(reference, tokens) - ours).max() > 1e-4  # adapters moved


def _bert(folder):
  os.makedirs(folder)
  with open(os.path.join(folder, "config.json"), "w") as f:
    f.write('{"architectures": ["BertForMaskedLM"], "model_type": "bert"}')


def _copy(src, dst, drop=None, config=None, tokenizer_from=None):
  """A copy of folder `src`, with tensor `drop` removed, config.json fields changed, or another
  folder's tokenizer."""
  import json
  import shutil

  from safetensors.numpy import load_file, save_file

  shutil.copytree(src, dst)
  if drop:
    tensors = load_file(os.path.join(dst, "model.safetensors"))
    del tensors[drop]
    save_file(tensors, os.path.join(dst, "model.safetensors"))
  if config:
    path = os.path.join(dst, "config.json")
    c = json.load(open(path))
    c.update(config)
    json.dump(c, open(path, "w"))
  if tokenizer_from:
    shutil.copy(os.path.join(tokenizer_from, "tokenizer.json"), dst)


BAD = [
    # (id, how the folder is made from the GPT-2 one, part of the one-line message)
    ("bert config", lambda src, dst: _bert(dst), "'BertForMaskedLM'] is not supported"),
    ("no such folder", lambda src, dst: None, "no such folder"),
    (
        "missing tensor",
        lambda src, dst: _copy(src, dst, drop="transformer.h.1.mlp.c_fc.weight"),
        "no tensor transformer.h.1.mlp.c_fc.weight",
    ),
    (
        "shape disagrees with config.json",
        lambda src, dst: _copy(src, dst, config={"n_inner": 64}),
        "has shape (32, 128) but config.json implies (32, 64)",
    ),
    (
        "tokenizer larger than the embedding",
        lambda src, dst: _copy(src, dst, config={"vocab_size": 100}),
        "the tokenizer has 300 tokens but",
    ),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_folder_is_one_line_usage_error_and_writes_nothing(
    folders, corpus, tmp_path, make, message
):
  folder = str(tmp_path / "bad")
  make(folders["gpt2"][0], folder)
  workdir = str(tmp_path / "run")
  with pytest.raises(UsageError) as e:
    trainer.run(_run_config(folder, corpus), workdir)
  assert message in str(e.value) and "\n" not in str(e.value)
  assert not os.path.exists(workdir)


def test_bad_folder_on_the_command_line_is_one_error_line_and_exit_2(tmp_path):
  import subprocess
  import sys

  _bert(str(tmp_path / "bert"))
  result = subprocess.run(
      [
          sys.executable,
          "run.py",
          "--experiment=textgen:tiny",
          f"--config.init_from=hf:{tmp_path / 'bert'}",
          f"--workdir={tmp_path / 'run'}",
      ],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      capture_output=True,
      text=True,
  )
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert lines[-1].startswith("error: ") and "is not supported" in lines[-1]
  assert sum(line.startswith("error: ") for line in lines) == 1
  assert not os.path.exists(tmp_path / "run")


def test_export_refuses_a_model_that_is_neither_gpt2_nor_llama(tmp_path):
  c = tiny_config("", model__positions="rotary")
  model = tasks.get(c.task)(c).model
  with pytest.raises(UsageError, match="neither GPT-2"):
    export.export({}, model, str(tmp_path / "out"))
  assert not os.listdir(tmp_path)
