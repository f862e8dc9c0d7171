"""Packed sentiment rows: a review's logits are those it gets alone, each review counts once in the
loss and metrics, and the padding waste is reported."""

import jax
import numpy as np
import pytest

from bigmodel_jax import config as config_lib
from bigmodel_jax.data import packing
from bigmodel_jax.errors import UsageError
from bigmodel_jax.tasks import classify_text


def _task(tmp_path, **overrides):
  c = config_lib.load_experiment("sentiment:tiny")
  c.data.pack = True
  c.data.max_segments = 4
  c.model.max_len = 96  # bytes: a few reviews fit a row (most are longer than tiny's 48)
  config_lib.set_values(c, {k.replace("__", "."): v for k, v in overrides.items()}, "test")
  config_lib.validate(c)
  task = classify_text.Task(c)
  task.setup(str(tmp_path), create=True)
  return task


def _byte_lengths(task) -> list[int]:
  """The tiny test split's reviews' lengths in tokens (bytes, cut to max_len), from the texts."""
  texts = task.source.texts(task.eval_split)[0]
  return [min(len(t.encode()), task.config.model.max_len) for t in texts]


@pytest.mark.parametrize(
    "pooling,positions", [("mean", "rotary"), ("mean", "learned"), ("first", "rotary")]
)
def test_a_reviews_logits_are_the_same_packed_with_others_or_alone(tmp_path, pooling, positions):
  task = _task(tmp_path, model__pooling=pooling, model__positions=positions)
  variables = task.init_variables(jax.random.key(1))
  rows = task.packed_rows(task.eval_split)
  assert (rows["label_weight"].sum(1) > 1).sum() > 5  # rows really hold several reviews
  packed = task.model.apply(
      variables,
      rows["tokens"],
      segment_ids=rows["segment_ids"],
      num_segments=rows["label"].shape[1],
  )  # (R, S, classes)
  texts, labels = task._texts(task.eval_split)
  alone = task.model.apply(variables, task.encode(texts))  # (N, classes), one review per call row
  filled = rows["label_weight"] > 0  # slots in row order = reviews in order
  np.testing.assert_allclose(packed[filled], alone, atol=1e-5)
  np.testing.assert_array_equal(rows["label"][filled], labels)
  # The same rows without segment ids mix the reviews: the check above can fail.
  mixed = task.model.apply(variables, rows["tokens"][:, : task.config.model.max_len])
  first_packed_row = int(np.argmax(rows["label_weight"].sum(1) > 1))
  assert np.abs(mixed[first_packed_row] - packed[first_packed_row, 0]).max() > 1e-4


def test_packed_eval_counts_each_review_once_as_unpacked_eval(tmp_path):
  task = _task(tmp_path)
  variables = task.init_variables(jax.random.key(2))
  params = variables["params"]
  totals, batches = {}, {}
  for pack in (False, True):
    task.pack = pack
    sums = {}
    batches[pack] = task.eval_batches(16)
    for batch in batches[pack]:
      _, (metrics, _) = task.loss(params, {}, batch, jax.random.key(0), train=False)
      for name, (value, count) in metrics.items():
        sums[name] = sums.get(name, np.zeros(2)) + np.array([float(value), float(count)])
    totals[pack] = sums
  assert totals[True]["accuracy"][1] == totals[False]["accuracy"][1] == 60  # every review once
  for name in ("loss", "accuracy"):
    np.testing.assert_allclose(totals[True][name], totals[False][name], rtol=1e-5)
  assert len(batches[True]) < len(batches[False])  # fewer rows to run


def test_padding_waste_is_reported_before_and_after(tmp_path):
  task = _task(tmp_path)
  max_len = task.config.model.max_len
  lengths = _byte_lengths(task)
  waste = task.padding_waste(task.eval_split)
  assert waste["unpacked"] == pytest.approx(1 - sum(lengths) / (len(lengths) * max_len))
  rows = task.packed_rows(task.eval_split)
  assert waste["packed"] == pytest.approx(1 - sum(lengths) / rows["tokens"].size)
  assert waste["packed"] < waste["unpacked"]
  assert rows["label_weight"].sum(1).max() <= 4  # data.max_segments


def test_rows_cap_the_examples_per_row():
  examples = [{"x": np.ones(n, np.int32)} for n in (1, 1, 1, 2)]
  out, _ = packing.rows(examples, 8, True, "train", "8 tokens", max_segments=2)
  np.testing.assert_array_equal(out["segment_ids"][:, :3], [[1, 2, 0], [1, 2, 2]])


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"model__name": "rnn"}, "data.pack=true needs model.name=text_encoder"),
        ({"data__max_segments": 0}, "data.max_segments=0 must be a positive integer"),
    ],
)
def test_bad_packing_settings_are_usage_errors(overrides, message):
  c = config_lib.load_experiment("sentiment:tiny")
  c.data.pack = True
  config_lib.set_values(c, {k.replace("__", "."): v for k, v in overrides.items()}, "test")
  with pytest.raises(UsageError, match=message):
    classify_text.Task(c)
