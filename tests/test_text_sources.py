"""sentiment on the user's own rows: CSV/TSV/JSONL records, their cached splits, any number of
classes, and batch prediction over files."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigmodel_jax import trainer
from bigmodel_jax.data import labelled_texts, record_sets, records
from bigmodel_jax.errors import UsageError
from bigmodel_jax.tasks import classify_text
from tests.helpers import TOPIC_WORDS, read_metrics, tiny_config, topics, write_csv

tfds.disable_progress_bar()


def _config(tmp_path, source, **overrides):
  overrides = {"data__source": source, "predict__num_examples": 0, **overrides}
  return tiny_config(str(tmp_path / "tfds"), "sentiment:tiny", **overrides)


def _read(text, scheme="csv", columns=None, tmp_path=None, **kwargs):
  path = tmp_path / f"f.{scheme}"
  path.write_bytes(text if isinstance(text, bytes) else text.encode())
  columns = columns or {"data.text_column": "text", "data.label_column": "label"}
  return list(records.read(str(path), scheme, columns, **kwargs))


# --- reading records -----------------------------------------------------------------------------


def test_quoted_csv_fields_keep_commas_quotes_and_line_breaks(tmp_path):
  rows = _read(
      'text,label\n"slow, but ""good""\nreally",pos\n\nfine,neg\n', tmp_path=tmp_path, required=()
  )
  assert [(r.line, r.values) for r in rows] == [
      (2, ['slow, but "good"\nreally', "pos"]),
      (5, ["fine", "neg"]),
  ]
  assert rows[1].fields == {"text": "fine", "label": "neg"}


def test_headerless_tsv_names_columns_by_position(tmp_path):
  rows = _read(
      "pos\tgood film\nneg\tbad, bad film\n",
      "tsv",
      {"data.text_column": "1", "data.label_column": "0"},
      tmp_path,
      header=False,
  )
  assert [r.values for r in rows] == [["good film", "pos"], ["bad, bad film", "neg"]]
  assert rows[0].fields == {"0": "pos", "1": "good film"}


def test_jsonl_keys_by_name_and_labels_as_integers(tmp_path):
  rows = _read(
      '{"text": "ok", "label": 10, "x": null}\n\n{"label": 2, "text": "no"}\n',
      "jsonl",
      None,
      tmp_path,
  )
  assert [(r.line, r.values) for r in rows] == [(1, ["ok", "10"]), (3, ["no", "2"])]
  assert labelled_texts.sort_labels(["10", "2", "2"]) == ("2", "10")  # integers sort by value
  assert labelled_texts.sort_labels(["b", "10", "a"]) == ("10", "a", "b")


ERRORS = {
    "missing column": (
        "csv",
        "review,stars\nok,1\n",
        r"data.text_column='text' is not a column of .*f\.csv; its columns: review, stars$",
    ),
    "empty label": (
        "csv",
        "text,label\nok,pos\nfine, \n",
        r"f\.csv line 3: 'label' \(data.label_column\) is empty; every row needs a value there",
    ),
    "TSV read as CSV": (
        "csv",
        "text\tlabel\nok\tpos\n",
        r"f\.csv line 1 is one column \('text\\tlabel'\) when split on commas as csv: asks, but "
        r"it holds tabs: the file looks like TSV; use data.source=tsv:<glob>",
    ),
    "CSV read as TSV": ("tsv", "text,label\nok,pos\n", r"looks like CSV; use data.source=csv:"),
    "JSON lines read as CSV": ("csv", '{"text": "a", "label": 1}\n', r"looks like JSON lines"),
    "not UTF-8": (
        "csv",
        b"text,label\nok,pos\nd\xe9j\xe0 vu,pos\n",
        r"f\.csv line 3 is not UTF-8 \(invalid continuation byte at byte 1 of the line\)",
    ),
    "malformed JSON": (
        "jsonl",
        '{"text": "a", "label": 1}\n{"text": "b" "label": 2}\n',
        r"f\.jsonl line 2 is not valid JSON \(Expecting ',' delimiter at column 14\)",
    ),
    "JSON that is not an object": ("jsonl", '["a", 1]\n', r"line 1 is a JSON list, not an object"),
    "missing JSON key": (
        "jsonl",
        '{"text": "a", "stars": 1}\n',
        r"data.label_column='label' is not a key of .*f\.jsonl line 1; its keys: text, stars$",
    ),
    "extra field": (
        "csv",
        "text,label\nok,pos,extra\n",
        r"line 2 has 3 fields but the header has 2; a field holding a comma",
    ),
    "unclosed quote": (
        "csv",
        'text,label\n"never closed,pos\nok,neg\n',
        r"line 2 is not valid CSV",
    ),
}


@pytest.mark.parametrize("scheme, text, match", ERRORS.values(), ids=ERRORS)
def test_record_errors_name_the_file_and_line(tmp_path, scheme, text, match):
  with pytest.raises(UsageError, match=match) as e:
    _read(text, scheme, None, tmp_path, required=("data.label_column",))
  assert "\n" not in str(e.value)


def test_without_a_header_columns_are_positions(tmp_path):
  with pytest.raises(UsageError, match=r"data.text_column='text': with data.header=false columns "):
    _read("a,b\n", "csv", None, tmp_path, header=False)
  with pytest.raises(UsageError, match=r"data.label_column=2: .*f\.csv line 1 has 2 fields "):
    _read("a,b\n", "csv", {"data.label_column": "2"}, tmp_path, header=False)


# --- cached splits -------------------------------------------------------------------------------


def _spec(source, **kwargs):
  fields = (
      record_sets.Field("text", "data.text_column", "text"),
      record_sets.Field("label", "data.label_column", "label"),
  )
  return record_sets.Spec(source, fields, stratify="label", **kwargs)


def test_split_is_stratified_stable_and_built_once(tmp_path, monkeypatch):
  rows = topics(200) + [("rare one", "rare"), ("rare two", "rare")]
  source = "csv:" + write_csv(tmp_path / "a.csv", rows)
  data_dir = str(tmp_path / "tfds")
  first = record_sets.load(_spec(source), data_dir)
  train, val = first.read("train"), first.read("validation")
  assert sorted(train["text"] + val["text"]) == sorted(t for t, _ in rows)  # every row once
  assert 10 <= len(val["text"]) <= 35  # ~10% held out
  assert (
      set(first.counts["train"]) == set(first.counts["validation"]) == set(TOPIC_WORDS) | {"rare"}
  )
  assert first.counts["validation"]["rare"] == first.counts["train"]["rare"] == 1
  order = [t for t, _ in rows]
  assert train["text"] == sorted(train["text"], key=order.index)  # input order kept

  def no_build(*args, **kwargs):
    raise AssertionError("rebuilt an unchanged dataset")

  monkeypatch.setattr(record_sets.Records, "download_and_prepare", no_build)
  again = record_sets.load(_spec(source), data_dir)
  assert again.read("validation") == val and again.counts == first.counts
  monkeypatch.undo()
  # More rows: the old rows stay in their splits (the split is a hash of each text).
  write_csv(tmp_path / "a.csv", rows + topics(30, seed=1))
  grown = record_sets.load(_spec(source), data_dir)
  assert set(val["text"]) <= set(grown.read("validation")["text"])
  assert len(os.listdir(os.path.join(data_dir, "records"))) == 2


def test_a_class_with_one_row_or_an_unknown_validation_label_is_an_error(tmp_path):
  source = "csv:" + write_csv(tmp_path / "a.csv", topics(30) + [("only once", "rare")])
  # Line 38: the header, 30 rows of which 6 hold a line break, then the rare one.
  with pytest.raises(
      UsageError,
      match=r"label 'rare' has 1 row \(.*a\.csv line 38\); a train/validation split "
      r"\(data.val_percent=10\) needs at least 2: add rows, drop it, or give the validation rows "
      r"as data.validation_source",
  ):
    record_sets.load(_spec(source), str(tmp_path / "tfds"))
  assert not os.listdir(tmp_path / "tfds" / "records")  # a failed build leaves nothing behind
  val = write_csv(tmp_path / "v.csv", [("x y", "food"), ("some text", "unheard of")])
  with pytest.raises(
      UsageError,
      match=r"v\.csv line 3: label 'unheard of' \(data.label_column\) of the validation split is "
      r"in no training row; training labels: food, rare, sports, weather",
  ):
    record_sets.load(_spec(source, validation_source=f"csv:{val}"), str(tmp_path / "tfds"))


# --- the task on each format ---------------------------------------------------------------------


def test_jsonl_with_integer_labels_and_a_validation_file_trains(tmp_path):
  rows = [(t, {"food": 3, "sports": 10, "weather": 2}[y]) for t, y in topics(60)]
  for name, part in (("train.jsonl", rows[:48]), ("val.jsonl", rows[48:])):
    with open(tmp_path / name, "w") as f:
      f.writelines(json.dumps({"body": t, "stars": y}) + "\n" for t, y in part)
  config = _config(
      tmp_path,
      f"jsonl:{tmp_path}/train.jsonl",
      data__validation_source=f"jsonl:{tmp_path}/val.jsonl",
      data__text_column="body",
      data__label_column="stars",
      train__steps=4,
      train__eval_every=4,
  )
  task = classify_text.Task(config)
  assert task.class_names == ("2", "3", "10") and task.eval_split == "validation"
  (tmp_path / "setup").mkdir()
  task.setup(str(tmp_path / "setup"), create=True)
  texts, labels = task._texts("validation")
  assert texts == [t for t, _ in rows[48:]]
  assert [task.class_names[i] for i in labels] == [str(y) for _, y in rows[48:]]
  workdir = str(tmp_path / "run")
  trainer.run(config, workdir)
  assert np.isfinite(read_metrics(workdir, "validation")[4]["loss"])
  with open(os.path.join(workdir, "dataset.json")) as f:
    assert json.load(f)["class_names"] == ["2", "3", "10"]


def test_one_class_is_not_a_classification(tmp_path):
  source = "csv:" + write_csv(tmp_path / "a.csv", [(f"text {i}", "spam") for i in range(10)])
  with pytest.raises(
      UsageError,
      match=r"every training row has the label 'spam' \(data.label_column=label\); a classifier "
      r"needs at least two classes",
  ):
    classify_text.Task(_config(tmp_path, source))


def test_headerless_tsv_task_reads_columns_by_position(tmp_path):
  path = tmp_path / "t.tsv"
  path.write_text("".join(f"{y}\t{t.replace(chr(10), ' ')}\n" for t, y in topics(40)))
  task = classify_text.Task(
      _config(
          tmp_path,
          f"tsv:{path}",
          data__header=False,
          data__text_column="1",
          data__label_column="0",
          data__val_percent=25,
      )
  )
  (tmp_path / "run").mkdir()
  task.setup(str(tmp_path / "run"), create=True)
  texts, labels = task._texts("train")
  val_texts, _ = task._texts("validation")
  assert len(texts) + len(val_texts) == 40 and 4 <= len(val_texts) <= 16
  assert [task.class_names[y] for y in labels] == [
      y for t, y in topics(40) if t.replace("\n", " ") in texts
  ]
