"""translate on the user's own pairs (TSV, CSV, JSON lines): built into a cached dataset with a
stable hash split, trained through the trainer, and batch translation of files, row by row."""

import contextlib
import csv
import io
import json
import os

import pytest

from bigmodel_jax import trainer
from bigmodel_jax.data import dates
from bigmodel_jax.errors import UsageError
from bigmodel_jax.tasks import translate
from tests.helpers import read_metrics, tiny_config


def _config(tmp, source="dates", **overrides):
  overrides = {"data__source": source, "decode__show": 0, **overrides}
  return tiny_config(str(tmp / "tfds"), "translate:tiny", **overrides)


def _pairs(n, seed=5):
  sources, targets, _ = dates.generate(n, seed=seed)
  return list(zip(sources, targets))


def _write_tsv(path, pairs):
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(f"{s}\t{t}\n" for s, t in pairs)
  return str(path)


def _write_jsonl(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run on a header-less TSV of date pairs (columns by position)."""
  tmp = tmp_path_factory.mktemp("pairs")
  path = _write_tsv(tmp / "pairs.tsv", _pairs(640))
  config = _config(
      tmp, "tsv:" + path, data__header=False, data__source_column="0", data__target_column="1"
  )
  workdir = str(tmp / "run")
  with contextlib.redirect_stdout(io.StringIO()):
    trainer.run(config, workdir)
  return tmp, config, workdir


def _translate(tmp, workdir, value, **overrides):
  """--mode=translate with a config that names no data source: the workdir is enough."""
  config = _config(tmp, decode__input=value, **overrides)
  with contextlib.redirect_stdout(io.StringIO()) as out:
    result = trainer.run(config, workdir, "translate")
  return result, out.getvalue()


def test_a_headerless_tsv_of_pairs_trains_to_a_falling_loss(trained):
  _, config, workdir = trained
  train, val = read_metrics(workdir), read_metrics(workdir, "validation")
  assert train[40]["loss"] < train[10]["loss"] - 1.0
  assert val[40]["loss"] < val[20]["loss"]
  assert 0 <= val[40]["test_bleu"] <= 100
  splits = translate.Task(config)._texts  # from the cached dataset
  sources = {s: set(splits[s][0]) for s in splits}
  assert not sources["train"] & sources["validation"] and not sources["train"] & sources["test"]
  assert not sources["validation"] & sources["test"] and sources["test"]


def test_files_are_translated_row_by_row_in_input_order(trained):
  tmp, _, workdir = trained
  pairs = _pairs(37, seed=9)  # not a multiple of decode.batch_size=16: the last batch is padded
  path = tmp / "new.csv"
  with open(path, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows([("id", "source"), *((i, s) for i, (s, _) in enumerate(pairs))])
  result, shown = _translate(tmp, workdir, str(path))
  assert result["rows"] == 37 and result["output"] == os.path.join(workdir, "translations.csv")
  assert "wrote 37 translations to" in shown and "rows/s" in shown
  with open(result["output"], newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  translations = [r["translation"] for r in rows]
  assert [r["id"] for r in rows] == [str(i) for i in range(37)]
  assert [r["source"] for r in rows] == [s for s, _ in pairs]
  # The same translations as one text at a time (batching and padding change nothing).
  single, _ = _translate(tmp, workdir, pairs[5][0])
  assert rows[5]["translation"] == single[0]
  # JSON lines in, JSON lines out, keeping every key.
  jsonl = _write_jsonl(tmp / "new.jsonl", [{"n": i, "text": s} for i, (s, _) in enumerate(pairs)])
  out = str(tmp / "out.jsonl")
  result, _ = _translate(tmp, workdir, jsonl, data__source_column="text", decode__output=out)
  with open(out, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [r["n"] for r in rows] == list(range(37)) and result["rows"] == 37
  assert [r["translation"] for r in rows] == translations


def test_batch_translation_refuses_to_overwrite_its_input_or_a_folder(trained):
  tmp, _, workdir = trained
  path = _write_tsv(tmp / "in.tsv", _pairs(3))
  for output, match in ((path, "is an input file"), (str(tmp), "is a directory")):
    with pytest.raises(UsageError, match=f"decode.output={output} {match}"):
      _translate(tmp, workdir, "tsv:" + path, data__header=False, decode__output=output)
  with pytest.raises(UsageError, match=r"decode.input=missing.csv names no existing file"):
    _translate(tmp, workdir, "missing.csv")


def test_jsonl_pairs_with_custom_keys_split_by_source_text(tmp_path):
  pairs = _pairs(300, seed=11)
  rows = [{"de": s, "en": t, "n": i} for i, (s, t) in enumerate(pairs)]
  rows += [{"de": pairs[0][0], "en": "again", "n": -1}]  # a repeated source: same split
  path = _write_jsonl(tmp_path / "pairs.jsonl", rows)
  config = _config(tmp_path, "jsonl:" + path, data__source_column="de", data__target_column="en")
  splits = translate.Task(config)._texts
  assert sum(len(splits[s][0]) for s in splits) == 301
  assert 15 <= len(splits["validation"][0]) + len(splits["test"][0]) <= 50  # ~10% held out
  where = [s for s in splits if pairs[0][0] in splits[s][0]]
  assert len(where) == 1 and splits[where[0]][0].count(pairs[0][0]) == 2
  train = dict(zip(*splits["train"]))
  assert all(train[s] == t for s, t in pairs[1:] if s in train)  # pairs stay pairs
  # The cached dataset is reused, and gives the same splits.
  assert translate.Task(config)._texts == splits


@pytest.mark.parametrize(
    "rows, overrides, match",
    [
        (
            [{"de": "a", "english": "b"}],
            {"data__source_column": "de", "data__target_column": "en"},
            r"data.target_column='en' is not a key of .* line 1; its keys: de, english",
        ),
        (
            [{"source": "a", "target": "b"}, {"source": "c", "target": ""}],
            {},
            r"line 2: 'target' \(data.target_column\) is empty",
        ),
    ],
)
def test_bad_pairs_are_one_line_errors(tmp_path, rows, overrides, match):
  path = _write_jsonl(tmp_path / "p.jsonl", rows)
  with pytest.raises(UsageError, match=match) as e:
    _ = translate.Task(_config(tmp_path, "jsonl:" + path, **overrides))._texts
  assert "\n" not in str(e.value)


def test_a_csv_read_as_tsv_and_a_word_as_position_are_usage_errors(tmp_path):
  path = tmp_path / "p.csv"
  path.write_text("source,target\nMar 3 2021,2021-03-03\n", encoding="utf-8")
  with pytest.raises(UsageError, match=r"the file looks like CSV; use data.source=csv:<glob>"):
    _ = translate.Task(_config(tmp_path, f"tsv:{path}"))._texts
  with pytest.raises(UsageError, match=r"data.source_column='source': with data.header=false"):
    translate.Task(_config(tmp_path, f"csv:{path}", data__header=False))
  with pytest.raises(UsageError, match=r"data.val_percent=0 must be in 1..99"):
    translate.Task(_config(tmp_path, f"csv:{path}", data__val_percent=0))
