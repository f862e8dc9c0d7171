"""Fine-tuning: packed rows behave as their examples alone, LoRA and train.trainable leave frozen
parameters bit-identical, SFT data puts the loss on answers only, and bad settings are one line."""

import contextlib
import io
import json
import os
import subprocess
import sys

import httpx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigmodel_jax import lora, optim, trainer
from bigmodel_jax.data import chat, instructions, packing, tokenizers
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.models import gpt
from tests.helpers import TINY_GPT, read_metrics, tiny_config
from tests.serve_helpers import Server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _host(tree):  # a returned pmap state's single copy
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def _run(config, workdir, mode="train"):
  with contextlib.redirect_stdout(io.StringIO()):
    return trainer.run(config, workdir, mode)


def _flat(params) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {optim.param_path(p): np.asarray(v) for p, v in leaves}


# --- packing --------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_a_tokens_logits_are_the_same_packed_with_others_or_alone(positions):
  model = gpt.GPT(**{**TINY_GPT, "positions": positions})
  params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
  r = np.random.default_rng(0)
  a, b, c = (r.integers(0, 32, n) for n in (5, 7, 3))
  row = np.concatenate([a, b, c, [0]])[None]  # (1, 16): three examples and one pad
  segments = np.array([[1] * 5 + [2] * 7 + [3] * 3 + [0]])
  packed = model.apply({"params": params}, row, segment_ids=segments)
  for example, start in ((a, 0), (b, 5), (c, 12)):
    alone = model.apply({"params": params}, example[None])
    np.testing.assert_allclose(packed[0, start : start + len(example)], alone[0], atol=2e-6)
  # Without segment ids the later examples see the earlier ones: the test can fail.
  unpacked = model.apply({"params": params}, row)
  assert np.abs(unpacked[0, 5:12] - model.apply({"params": params}, b[None])[0]).max() > 1e-3


def test_packing_puts_examples_in_order_and_counts_the_waste():
  examples = [{"x": np.full(n, i + 1, np.int32)} for i, n in enumerate((3, 4, 2, 9, 5))]
  rows, tokens = packing.rows(examples, 8, True, "train", "8 tokens")
  # next-fit: [3 + 4], [2], (9 left out: too long), [5]... 2 + 5 fits: [2 + 5]
  np.testing.assert_array_equal(rows["x"], [[1, 1, 1, 2, 2, 2, 2, 0], [3, 3, 5, 5, 5, 5, 5, 0]])
  np.testing.assert_array_equal(
      rows["segment_ids"], [[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 2, 2, 2, 2, 2, 0]]
  )
  assert tokens == 14 and packing.waste(rows["segment_ids"]) == 2 / 16
  alone, _ = packing.rows(examples, 8, False, "train", "8 tokens")
  assert len(alone["x"]) == 4 and packing.waste(alone["segment_ids"]) == 1 - 14 / 32


# --- SFT data -------------------------------------------------------------------------------


def _targets(example) -> str:
  """The text of the tokens that carry loss (byte tokens: one per byte)."""
  fields = packing.lm_fields(example.pieces, tokenizers.ByteTokenizer())
  return bytes(fields["targets"][fields["weights"] > 0].astype(np.uint8)).decode()


def test_jsonl_loss_is_on_completions_and_assistant_turns_only(tmp_path):
  chat_record = {
      "messages": [
          {"role": "system", "content": "Be brief."},
          {"role": "user", "content": "2+3?"},
          {"role": "assistant", "content": "5"},
          {"role": "user", "content": "and 4+4?"},
          {"role": "assistant", "content": "8"},
      ]
  }
  lines = [{"prompt": "Q: 1+1\nA: ", "completion": "2"}, chat_record]
  (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
  plain, conversation = instructions.read_jsonl(str(tmp_path / "*.jsonl"), "\n", None)
  assert _targets(plain) == "2\n" and plain.answer == "2" and plain.stop == "\n"
  end = chat.DEFAULT_END
  assert _targets(conversation) == f"5{end}\n8{end}\n"  # the template ends turns with "\n"
  assert conversation.prompt == chat.prompt(chat_record["messages"][:4])
  assert conversation.prompt.endswith("<|im_start|>assistant\n") and conversation.answer == "8"


def test_generated_answers_are_pythons_own():
  for e in instructions.generated(50, seed=3, end="\n"):
    assert e.pieces[0][0] == e.prompt and e.pieces[1] == (e.answer + "\n", True)
    assert repr(eval(e.prompt[4:])) == e.answer  # noqa: S307


# --- LoRA and train.trainable ---------------------------------------------------------------


def test_lora_merge_is_the_low_rank_update_of_each_kernel():
  cfg = ml_collections.ConfigDict({"rank": 2, "alpha": 4.0, "targets": "query/kernel$|fc"})
  params = {
      "attn": {"query": {"kernel": jnp.ones((6, 2, 3))}},  # DenseGeneral (embed, heads, kv)
      "mlp": {"fc": {"kernel": jnp.ones((6, 5)), "bias": jnp.zeros((5,))}},
  }
  adapters = lora.init(jax.random.key(0), params, cfg)
  assert adapters["attn"]["query"]["kernel"]["a"].shape == (6, 2)  # rows: embed
  assert adapters["attn"]["query"]["kernel"]["b"].shape == (2, 6)  # cols: heads * kv
  adapters = jax.tree.map(lambda x: x + 0.5, adapters)  # b is zeros at init: make it count
  merged = lora.merge({**params, "lora": adapters}, alpha=4.0)
  a, b = adapters["mlp"]["fc"]["kernel"]["a"], adapters["mlp"]["fc"]["kernel"]["b"]
  x = np.arange(6.0)
  np.testing.assert_allclose(x @ merged["mlp"]["fc"]["kernel"], x @ np.ones((6, 5)) + x @ a @ b * 2)
  assert "lora" not in merged and merged["mlp"]["fc"]["bias"] is params["mlp"]["fc"]["bias"]
  assert lora.split_axes((4, 32, 128)) == 2 and lora.split_axes((3, 3, 64, 64)) == 3


def test_train_trainable_moves_only_what_it_names():
  params = {"h_0": {"kernel": jnp.ones((3, 3))}, "h_1": {"kernel": jnp.ones((3, 3))}}
  config = tiny_config("", "textgen:tiny", train__trainable="h_1/", train__weight_decay=0.5)
  tx, _ = optim.make_optimizer(config.train)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(jnp.add, params, updates)
  assert (np.asarray(params["h_0"]["kernel"]) == 1.0).all()
  assert (np.asarray(params["h_1"]["kernel"]) != 1.0).all()
  assert optim.trainable_count(params, config.train, adapters=False) == 9


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A textgen (lm) run shaped like sft:tiny's model, to fine-tune from."""
  workdir = str(tmp_path_factory.mktemp("lm") / "run")
  config = tiny_config(
      str(tmp_path_factory.mktemp("tfds")),
      "textgen:tiny",
      model__block_size=64,
      train__steps=2,
      parallel__num_devices=1,
  )
  return _host(_run(config, workdir).params), workdir


def test_lora_trains_only_the_adapters_and_checkpoints_them(pretrained, tmp_path):
  base, source = pretrained
  workdir = str(tmp_path / "lora")
  config = tiny_config(
      "", "sft:tiny", init_from=source, model__lora__rank=4, parallel__num_devices=1
  )
  params = _flat(_host(_run(config, workdir).params))
  for name, value in _flat(base).items():
    assert value.tobytes() == params[name].tobytes(), name  # bit-identical
  b = {k: v for k, v in params.items() if k.startswith("lora/") and k.endswith("/b")}
  assert b and all(np.abs(v).max() > 0 for v in b.values())  # zeros at init, trained since
  assert "lora/h_0/attn/query/kernel/a" in params and "lora/h_1/mlp/proj/kernel/b" in params
  adapters = sum(v.size for k, v in params.items() if k.startswith("lora/"))
  # 2 layers x (4 attention kernels 32|32 + fc 32|128 + proj 128|32) at rank 4
  assert adapters == 2 * (4 * (32 + 32) * 4 + 2 * (32 + 128) * 4)
  assert "exact_match" in read_metrics(workdir, "validation")[4]
  values = _run(config, workdir, "eval")  # restores the adapters from the checkpoint
  assert values["loss"] == pytest.approx(read_metrics(workdir, "validation")[4]["loss"], 1e-5)


def test_a_lora_run_serves_what_sample_mode_writes(pretrained, tmp_path):
  """--mode=serve on a LoRA fine-tune answers with the adapters merged, as --mode=sample does."""
  _, source = pretrained
  workdir = str(tmp_path / "lora")
  run = dict(init_from=source, model__lora__rank=4, train__learning_rate=3e-2)
  _run(tiny_config("", "sft:tiny", **run, parallel__num_devices=1), workdir)
  greedy = dict(sample__temperature=0.0, sample__num_samples=1, sample__max_new_tokens=8)
  config = tiny_config("", "sft:tiny", **run, **greedy, sample__prompt=">>> len('ab')\n")
  (expected,) = _run(config, workdir, "sample")
  args = ["--experiment=sft:tiny", f"--workdir={workdir}", f"--config.init_from={source}",
          "--config.model.lora.rank=4", "--config.compile_cache_dir="]  # fmt: skip
  server = Server(args, tmp_path / "server.log")
  try:
    body = {"model": "sft", "prompt": ">>> len('ab')\n", "max_tokens": 8, "temperature": 0}
    got = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
  finally:
    server.stop()
  assert got.status_code == 200, got.text
  assert ">>> len('ab')\n" + got.json()["choices"][0]["text"] == expected


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model__lora__rank": 2, "model__lora__targets": "nothing/"}, "matches no kernel"),
        ({"model__lora__rank": 2, "model__lora__targets": "(["}, "is not a valid regex"),
        ({"model__lora__rank": -1}, "model.lora.rank=-1 must be >= 0"),
        ({"model__lora__rank": 2, "model__lora__alpha": 0.0}, "model.lora.alpha=0.0 must be > 0"),
        ({"data__source": "csv:x.csv"}, "valid: pystrings (generated), jsonl:<glob>"),
        ({"data__source": "jsonl:/nonexistent/*.jsonl"}, "matches no files"),
        ({"data__end": ""}, "data.end must be a non-empty string"),
    ],
)
def test_bad_settings_are_one_line_errors_and_write_nothing(overrides, message, tmp_path):
  config = tiny_config("", "sft:tiny", **overrides)
  with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
    _run(config, str(tmp_path / "run"))
  assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_bad_jsonl_lines_name_the_file_and_line(tmp_path):
  path = tmp_path / "d.jsonl"
  for text, message in [
      ('{"prompt": "a", "completion": "b"}\nnot json\n', "d.jsonl:2: not a JSON line"),
      ('{"prompt": "a"}\n', "d.jsonl:1: needs string fields 'prompt' and 'completion'"),
      ('{"messages": [{"role": "bot", "content": "x"}]}\n', "role='bot' is not valid"),
  ]:
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
      instructions.read_jsonl(str(path), "\n", None)


def test_init_from_a_run_of_another_task_is_refused(pretrained, tmp_path):
  _, source = pretrained
  config = tiny_config("", "sentiment:tiny", init_from=source)
  with pytest.raises((RunError, UsageError), match="start from a run of 'classify_text'"):
    _run(config, str(tmp_path / "run"))


def test_the_command_line_exits_2_with_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, "run.py", "--experiment=sft:tiny", f"--workdir={tmp_path}/w",
       "--config.train.trainable=(["],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
  )  # fmt: skip
  assert out.returncode == 2, out.stderr
  assert out.stderr.strip() == (
      "error: train.trainable='([' is not a valid regex: unterminated character set at position 1"
  )
