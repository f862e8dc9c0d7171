"""Packed translate rows (data.pack): a pair's logits are those it gets alone, no attention
(encoder, decoder or cross) crosses pairs, the packed loss and metrics count the same tokens as
unpacked, and invalid pack settings are one-line errors."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigmodel_jax import config as config_lib
from bigmodel_jax import translate_packing
from bigmodel_jax.data import packing
from bigmodel_jax.errors import UsageError
from bigmodel_jax.tasks import translate
from bigmodel_jax.tools import padding_waste

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  c = config_lib.load_experiment("translate:tiny")
  values = {"data.pack": True, **{k.replace("__", "."): v for k, v in overrides.items()}}
  config_lib.set_values(c, values, "test")
  config_lib.validate(c)
  return c


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  task = translate.Task(_config())
  task.setup(str(tmp_path_factory.mktemp("translate_pack")), create=True)
  return task


@pytest.fixture(scope="module")
def variables(task):
  return task.init_variables(jax.random.key(3))


def _decoder_inputs(task, targets, tgt_segments=None):
  """BOS + targets[:, :-1], and BOS at every packed pair's first target token (as the loss)."""
  bos = task.model.tgt_specials[1]
  tgt_in = np.concatenate([np.full_like(targets[:, :1], bos), targets[:, :-1]], axis=1)
  if tgt_segments is not None:
    tgt_in = np.where(translate_packing.segment_starts(tgt_segments), bos, tgt_in)
  return tgt_in


def _packed_logits(task, variables, rows):
  tgt_in = _decoder_inputs(task, rows["targets"], rows["tgt_segments"])
  return np.asarray(
      task.model.apply(
          variables,
          rows["inputs"],
          tgt_in,
          src_segments=rows["src_segments"],
          tgt_segments=rows["tgt_segments"],
      )
  )  # (R, T', V)


def test_a_target_tokens_logits_are_the_same_packed_with_other_pairs_or_alone(task, variables):
  rows = task.packed_rows("validation")
  assert (rows["src_segments"].max(1) >= 3).sum() >= 5  # rows really hold several pairs
  packed = _packed_logits(task, variables, rows)
  alone_rows = task.split_arrays("validation")  # one pair per row, PAD-filled
  targets = alone_rows["targets"]
  alone = np.asarray(
      task.model.apply(variables, alone_rows["inputs"], _decoder_inputs(task, targets))
  )  # (N, T, V)
  pad = task.model.tgt_specials[0]
  # Rows keep the pairs' order, so the real target tokens line up one to one.
  assert (rows["tgt_segments"] > 0).sum() == (targets != pad).sum() == 32 * 11
  np.testing.assert_array_equal(rows["targets"][rows["tgt_segments"] > 0], targets[targets != pad])
  np.testing.assert_allclose(
      packed[rows["tgt_segments"] > 0], alone[targets != pad], atol=1e-5, rtol=0
  )
  assert np.abs(alone).max() > 1.0  # logits that could differ
  # The same rows read as one example each (no segment ids) mix the pairs: the check can fail.
  tgt_in = _decoder_inputs(task, rows["targets"], rows["tgt_segments"])
  mixed = np.asarray(task.model.apply(variables, rows["inputs"], tgt_in))
  assert np.abs(mixed - packed).max() > 1e-2


@pytest.mark.parametrize("side", ["inputs", "targets"])
def test_changing_one_pair_changes_no_other_pairs_logits(task, variables, side):
  rows = {k: v[:1].copy() for k, v in task.packed_rows("validation").items()}
  segments = rows["src_segments" if side == "inputs" else "tgt_segments"]
  assert segments.max() >= 3
  before = _packed_logits(task, variables, rows)
  # Pair 2's source (then: target) tokens replaced: pair 1 sees what comes after it (encoder,
  # cross-attention), pair 3 what comes before it (decoder self-attention, cross-attention).
  changed = segments == 2
  rows[side] = np.where(changed, (rows[side] + 17) % 256, rows[side])
  after = _packed_logits(task, variables, rows)
  tgt = rows["tgt_segments"]
  others = (tgt > 0) & (tgt != 2)
  np.testing.assert_allclose(after[others], before[others], atol=1e-6, rtol=0)
  assert np.abs(after[tgt == 2] - before[tgt == 2]).max() > 1e-3


def _sums(task, params, batch):
  loss, (metrics, _) = task.loss(params, {}, batch, jax.random.key(0), train=False)
  return float(loss), {k: (float(s), float(n)) for k, (s, n) in metrics.items()}


def test_the_packed_loss_and_metrics_count_the_same_tokens_as_unpacked(task, variables):
  params = variables["params"]
  packed_loss, packed = _sums(task, params, task.packed_rows("validation"))
  alone_loss, alone = _sums(task, params, task.split_arrays("validation"))
  assert packed["loss"][1] == alone["loss"][1] == 32 * 11  # tokens, EOS included
  assert packed["sequence_accuracy"][1] == alone["sequence_accuracy"][1] == 32  # pairs
  np.testing.assert_allclose(packed_loss, alone_loss, rtol=1e-5)
  for name in packed:
    np.testing.assert_allclose(packed[name], alone[name], rtol=1e-5)


def test_exact_pairs_counts_pairs_whose_every_target_token_is_right():
  rng = np.random.default_rng(0)
  examples = [({"y": np.ones(n, np.int32)},) for n in rng.integers(1, 6, size=40)]
  (rows,) = packing.streams(examples, (12,), pack=True)
  segments = rows["segment_ids"]
  correct = rng.random(segments.shape) < 0.8
  exact, pairs = translate_packing.exact_pairs(correct, segments > 0, segments)
  # Reference: a loop over every pair of every row.
  expected = sum(
      bool(correct[r][segments[r] == s].all())
      for r in range(len(segments))
      for s in range(1, segments[r].max() + 1)
  )
  assert float(pairs) == 40 and float(exact) == expected and 0 < expected < 40


def test_training_batches_are_packed_rows_and_throughput_counts_pairs(task):
  batch = next(task.train_iterator(8, seed=0, process_index=0, process_count=1))
  spec = task.batch_spec(8)
  assert {k: v.shape for k, v in batch.items()} == {k: v.shape for k, v in spec.items()}
  assert spec["inputs"].shape == (8, 64) and spec["targets"].shape == (8, 48)
  assert task.units_per_example > 3  # pairs a row, so examples_per_s counts pairs
  waste = task.padding_waste()
  assert waste["packed"] < 0.5 * waste["unpacked"]


def test_the_padding_waste_command_counts_the_pairs_bytes(task):
  """tools/padding_waste on translate:tiny against the texts' own byte lengths (+ EOS)."""
  waste = padding_waste.padding_waste("translate:tiny", "validation")
  sources, targets = task._texts["validation"]
  real = sum(len(t.encode()) + 1 for t in list(sources) + list(targets))  # all fit tiny's rows
  assert waste["unpacked"] == pytest.approx(1 - real / (len(sources) * (32 + 12)))
  rows = task.packed_rows("validation")
  assert waste["packed"] == pytest.approx(1 - real / (rows["inputs"].size + rows["targets"].size))
  assert len(rows["inputs"]) < len(sources) / 3  # 64 + 48 token rows hold 3-4 pairs


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"data__packed_source_len": 20},
            "data.packed_source_len=20 must be 0 (= data.max_source_len) or >= "
            "data.max_source_len=32",
        ),
        ({"data__packed_target_len": 11}, "data.packed_target_len=11 must be 0"),
    ],
)
def test_invalid_pack_settings_are_usage_errors(overrides, message):
  with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
    translate.Task(_config(**overrides))


def test_an_invalid_pack_setting_is_one_line_and_exit_2(tmp_path):
  args = ["--experiment=translate:tiny", "--config.data.pack=true"]
  args += ["--config.data.packed_target_len=8", f"--workdir={tmp_path}/w"]
  result = subprocess.run(
      [sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert lines[-1].startswith("error: data.packed_target_len=8 must be 0"), lines[-1:]
  assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "w")
