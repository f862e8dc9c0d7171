"""sentiment with three classes from a CSV: it trains, keeps its classes, and predicts files row by
row (batch prediction) as well as single texts."""

import contextlib
import csv
import io
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigmodel_jax import batch_predict, trainer
from bigmodel_jax.errors import RunError, UsageError
from tests.helpers import TOPIC_WORDS, read_metrics, run_quietly, tiny_config, topics, write_csv

tfds.disable_progress_bar()
CLASSES = sorted(TOPIC_WORDS)


def _config(tmp, source="reviews", **overrides):
  overrides = {"data__source": source, "predict__num_examples": 0, **overrides}
  return tiny_config(str(tmp / "tfds"), "sentiment:tiny", **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run on a 3-class CSV with string labels and quoted multi-line fields."""
  tmp = tmp_path_factory.mktemp("topics")
  config = _config(tmp, "csv:" + write_csv(tmp / "train.csv", topics(240)), predict__num_examples=2)
  workdir = str(tmp / "run")
  _, printed = run_quietly(config, workdir)
  return tmp, config, workdir, printed


def _predict(tmp, workdir, value, **overrides):
  """Batch prediction with a config that names no data source: the workdir is enough."""
  config = _config(tmp, predict__input=value, **overrides)
  with contextlib.redirect_stdout(io.StringIO()) as out:
    result = trainer.run(config, workdir, "predict")
  return result, out.getvalue()


def test_three_classes_train_and_are_saved_with_the_run(trained):
  tmp, config, workdir, shown = trained
  metrics = read_metrics(workdir)
  assert metrics[40]["loss"] < metrics[10]["loss"] - 0.3
  assert read_metrics(workdir, "validation")[40]["accuracy"] > 0.8
  with open(os.path.join(workdir, "dataset.json")) as f:
    assert json.load(f)["class_names"] == CLASSES
  assert "validation accuracy" in shown
  assert trainer.run(config, workdir, "eval")["accuracy"] > 0.8
  # A single text still works, with only the workdir (classes come from dataset.json).
  out, _ = _predict(tmp, workdir, "rain storm cloud sunny")
  assert out["label"] == "weather" and list(out["probabilities"]) == CLASSES


def test_eval_on_data_with_other_classes_is_an_error(trained, tmp_path):
  _, _, workdir, _ = trained
  other = write_csv(tmp_path / "o.csv", [(f"t {i}", "xy"[i % 2]) for i in range(20)])
  with pytest.raises(
      RunError,
      match=r"has labels this run's classes lack \('x', 'y'\); its classes: food, sports, weather",
  ):
    trainer.run(_config(tmp_path, f"csv:{other}"), workdir, "eval")


def test_every_row_of_a_csv_is_predicted_in_order(trained, tmp_path):
  tmp, _, workdir, _ = trained
  rows = topics(50, seed=7)
  path = write_csv(tmp_path / "new.csv", rows)
  result, printed = _predict(tmp, workdir, path)
  assert result["rows"] == 50 and result["output"] == os.path.join(workdir, "predictions.csv")
  assert f"wrote 50 predictions to {result['output']} in " in printed and " rows/s" in printed
  with open(result["output"], newline="") as f:
    out = list(csv.DictReader(f))
  assert list(out[0]) == ["id", "text", "label", "predicted", *(f"p_{c}" for c in CLASSES)]
  assert [(r["id"], r["text"], r["label"]) for r in out] == [
      (str(i), t, y) for i, (t, y) in enumerate(rows)
  ]  # every field as it was, multi-line quoted texts too
  probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in out])
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
  assert [r["predicted"] for r in out] == [CLASSES[i] for i in probs.argmax(1)]
  assert np.mean([r["predicted"] == r["label"] for r in out]) > 0.8


def test_tsv_and_jsonl_inputs_and_a_jsonl_output(trained, tmp_path):
  tmp, _, workdir, _ = trained
  tsv = tmp_path / "in.tsv"
  tsv.write_text("7\tpasta bread cheese\n8\train storm\n")
  out = str(tmp_path / "out" / "p.jsonl")
  _predict(tmp, workdir, str(tsv), data__header=False, data__text_column="1", predict__output=out)
  with open(out) as f:
    lines = [json.loads(line) for line in f]
  assert [(r["0"], r["1"], r["predicted"]) for r in lines] == [
      ("7", "pasta bread cheese", "food"),
      ("8", "rain storm", "weather"),
  ]
  # JSON lines in, CSV out: columns of the first row; an input column "predicted" keeps its name.
  jsonl = tmp_path / "in.jsonl"
  jsonl.write_text(
      '{"text": "goal team", "predicted": "?"}\n{"text": "sauce", "extra": 1, "predicted": 2}\n'
  )
  result, _ = _predict(tmp, workdir, f"jsonl:{jsonl}", predict__output=str(tmp_path / "j.csv"))
  with open(result["output"], newline="") as f:
    out = list(csv.reader(f))
  assert out[0][:4] == ["text", "predicted", "predicted_2", "p_food"]
  assert [r[:3] for r in out[1:]] == [["goal team", "?", "sports"], ["sauce", "2", "food"]]


def test_rows_stream_in_fixed_size_batches_across_files(tmp_path):
  for name, start in (("b.csv", 10), ("a.csv", 0)):
    write_csv(tmp_path / name, [(f"text {i}", "x") for i in range(start, start + 10)])
  sizes = []

  def classify(texts):
    sizes.append(len(texts))
    return np.tile([[0.25, 0.75]], (len(texts), 1)), np.zeros(len(texts))

  scheme, paths = batch_predict.input_files(str(tmp_path / "*.csv"))
  assert scheme == "csv" and [os.path.basename(p) for p in paths] == ["a.csv", "b.csv"]
  batch_predict.run(
      scheme,
      paths,
      str(tmp_path / "p.csv"),
      text_column="text",
      header=True,
      class_names=["neg", "pos"],
      classify=classify,
      batch_size=7,
      max_len=48,
      on_long_input="warn",
  )
  assert sizes == [7, 7, 6]  # never more than a batch in memory
  with open(tmp_path / "p.csv", newline="") as f:
    out = list(csv.DictReader(f))
  assert [r["text"] for r in out] == [f"text {i}" for i in range(20)]  # files in path order
  assert {(r["predicted"], r["p_pos"]) for r in out} == {("pos", "0.750000")}


def test_bad_outputs_and_inputs_are_refused_before_writing(trained, tmp_path, caplog):
  tmp, _, workdir, _ = trained
  path = write_csv(tmp_path / "in.csv", topics(5))
  for output, match in (
      (path, r"predict.output=.*in\.csv is an input file; writing it would destroy the input"),
      (str(tmp_path), r"predict.output=.* is a directory; give a file path"),
  ):
    with pytest.raises(UsageError, match=match):
      _predict(tmp, workdir, path, predict__output=output)
  with pytest.raises(UsageError, match=r"predict.input=.*nothing\.csv names no existing file"):
    _predict(tmp, workdir, str(tmp_path / "nothing.csv"))
  with pytest.raises(UsageError, match=r"data.text_column='review' is not a column of .*in\.csv"):
    _predict(tmp, workdir, path, data__text_column="review")
  long_rows = topics(3) + [("rain " * 20, "weather")]
  long_path = write_csv(tmp_path / "long.csv", long_rows)
  out = str(tmp_path / "long_out.csv")
  with pytest.raises(
      UsageError,
      match=r"long\.csv line 6 is 99 tokens long but the model reads 48 \(model.max_len=48\)",
  ):
    _predict(tmp, workdir, long_path, predict__output=out, predict__on_long_input="error")
  assert sorted(os.listdir(tmp_path)) == ["in.csv", "long.csv"]  # no output, no temporary file
  result, _ = _predict(tmp, workdir, long_path, predict__output=out)
  assert result["rows"] == 4
  warned = [
      r.getMessage() for r in caplog.records if "longer than the model reads" in r.getMessage()
  ]
  assert warned == [
      "predict.input: 1 of 4 texts are longer than the model reads (model.max_len=48): cut to "
      "their first 48 tokens"
  ]
