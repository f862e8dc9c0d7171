"""tasks/lm: MFU's FLOPs per token follow the model the task actually trains."""

import json

from bigmodel_jax.data import tokenizers
from bigmodel_jax.models import gpt
from bigmodel_jax.tasks import lm
from tests.helpers import tiny_config


def _code() -> list[str]:
  """Real Python source, enough for a 400-piece sentencepiece vocabulary."""
  texts = []
  for module in (json.decoder, json.encoder, json.scanner):
    with open(module.__file__, encoding="utf-8") as f:
      texts.append(f.read())
  return texts


def test_flops_per_unit_follows_the_tokenizer_that_setup_loads(tmp_path):
  config = tiny_config(
      str(tmp_path / "tfds"),
      data__tokenizer="sentencepiece",
      data__vocab_size=300,
      model__vocab_multiple=1,
  )
  task = lm.Task(config)
  assert task.model.vocab_size == 300
  before = task.flops_per_unit
  assert before == gpt.flops_per_token(task.model)
  # The workdir already holds a tokenizer with another vocabulary (an earlier run's): setup()
  # loads it and rebuilds the model around it.
  workdir = tmp_path / "run"
  tokenizers.build_tokenizer(
      "sentencepiece", _code(), vocab_size=400, directory=str(workdir / lm.TOKENIZER_DIR)
  )
  task.setup(str(workdir), create=False)
  assert task.model.vocab_size == 400
  assert task.flops_per_unit == gpt.flops_per_token(task.model)
  # 100 more rows of the tied lm-head matmul: 6 FLOPs per weight per token (forward + backward).
  assert task.flops_per_unit - before == 6 * 100 * config.model.embed_dim


def test_flops_per_unit_follows_a_swapped_in_model(tmp_path):
  task = lm.Task(tiny_config(str(tmp_path)))
  byte_level = task.flops_per_unit
  assert task.model.vocab_size == 256
  task.model = task.model.clone(vocab_size=65)  # as bench.py does for the baby GPT
  assert task.flops_per_unit == gpt.flops_per_token(task.model)
  assert byte_level - task.flops_per_unit == 6 * (256 - 65) * task.model.embed_dim
