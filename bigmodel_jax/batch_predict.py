"""Batch prediction over CSV/TSV/JSONL files: every row in, the row and its prediction out.

`stream(...)` is the task-free core (used by sentiment's `run` below and by translate's batch
translation): rows in, the row's fields plus the columns a callback adds out. `input_files(value)`
decides what `predict.input` (or `decode.input`) is: `csv:<glob>`, `tsv:<glob>` or `jsonl:<glob>`,
or a path or glob of existing files ending in .csv, .tsv or .jsonl, names files; anything else is a
text to classify (a value that ends in one of those extensions but names no file is an error, not
a text). `run(...)` streams the rows, in input order (files in path order), through the model in
fixed-size batches and writes each one as it goes: the input row's fields, then the added columns
(for sentiment `predicted` and one `p_<class>` probability column per class; a name the input
already has gets a `_2` suffix). The
output is CSV, or JSON lines when its name ends in .jsonl; it is written to a temporary file beside
it and renamed when complete, so a failure leaves no half-written predictions. Memory is one batch,
whatever the number of rows.

With several CSV/TSV files, every file needs the first file's columns. JSON-lines rows may differ:
CSV output takes its columns from the first row (keys it lacks are empty cells; keys that only later
rows have are left out and counted); JSON-lines output keeps every row whole.
"""

from collections.abc import Callable, Sequence
import csv
import json
import os
import tempfile
import time

from absl import logging
import numpy as np

from bigmodel_jax.data import files, records, too_long
from bigmodel_jax.errors import UsageError

KEY = "predict.input"


def input_files(value: str, key: str = KEY, verb: str = "classify") -> tuple[str, list[str]] | None:
  """(scheme, real paths) when `value` (the setting `key`) names record files (see module doc);
  None for a text to `verb`."""
  parsed = records.parse_source(value)
  if parsed:
    return parsed[0], records.match(parsed[1], f"{key}={value}")
  if "\n" in value or len(value) > 4096 or not value.strip():
    return None
  ext = lambda p: os.path.splitext(p)[1].lower()
  found = files.match(os.path.expanduser(value)).paths
  kinds = {records.EXTENSIONS.get(ext(p)) for p in found}
  if found and kinds == {None}:
    logging.warning(
        "%s=%r also names %d file(s) that are not .csv, .tsv or .jsonl: read as a text to %s; "
        "to read the file, write %s=csv:<path> (or tsv:, jsonl:)",
        key,
        value,
        len(found),
        verb,
        key,
    )
    return None
  if found and len(kinds) == 1:
    return kinds.pop(), found
  if found:
    shown = ", ".join(sorted(f".{k}" if k else "other" for k in kinds))
    raise UsageError(
        f"{key}={value} matches files of several kinds ({shown}); give files of one kind, or name "
        "the format with csv:<glob>, tsv:<glob> or jsonl:<glob>"
    )
  if ext(value.rstrip()) in records.EXTENSIONS:
    raise UsageError(
        f"{key}={value} names no existing file; give an existing .csv, .tsv or .jsonl file or "
        f"glob, or a text to {verb}"
    )
  return None


def check_output(output: str, inputs: Sequence[str], key: str = "predict.output") -> None:
  """One-line errors for an output path (the setting `key`) that is a folder or an input file."""
  if os.path.isdir(output):
    raise UsageError(f"{key}={output} is a directory; give a file path, e.g. {output}/p.csv")
  if os.path.realpath(output) in {os.path.realpath(p) for p in inputs}:
    raise UsageError(
        f"{key}={output} is an input file; writing it would destroy the input, so give "
        "another path"
    )


def stream(
    scheme: str,
    paths: Sequence[str],
    output: str,
    *,
    column: tuple[str, str],
    header: bool,
    added: Sequence[str],
    predict: Callable[[list[tuple[str, records.Row]]], list[list]],
    batch_size: int,
    input_key: str = KEY,
    output_key: str = "predict.output",
) -> dict:
  """Reads column = (setting, column) of every row of `paths` in batches of `batch_size` and
  writes each row's fields plus the columns `added`, whose values `predict(batch)` gives (one list
  per row of (path, records.Row)), into `output` (see module doc). Floats are written with 6
  decimals in CSV. Returns {"rows", "seconds", "output"}."""
  check_output(output, paths, output_key)
  folder = os.path.dirname(os.path.abspath(output))
  os.makedirs(folder, exist_ok=True)
  tmp = tempfile.NamedTemporaryFile(
      "w",
      dir=folder,
      prefix=".predicting-",
      suffix=".tmp",
      delete=False,
      newline="",
      encoding="utf-8",
  )
  start, rows = time.perf_counter(), 0
  try:
    with tmp:
      writer = _Writer(tmp, scheme, output.lower().endswith(".jsonl"), added)
      for batch in _batches(scheme, paths, column, header, batch_size, input_key):
        for (path, row), values in zip(batch, predict(batch), strict=True):
          writer.write(path, row, values)
        rows += len(batch)
    os.replace(tmp.name, output)
  finally:
    if os.path.exists(tmp.name):
      os.remove(tmp.name)
  if writer.left_out:
    logging.warning(
        "%d rows have keys that the first row lacks (%s): not in the CSV; write %s="
        "<name>.jsonl to keep them",
        writer.left_out,
        ", ".join(sorted(writer.extra_keys)[:5]),
        output_key,
    )
  return {"rows": rows, "seconds": time.perf_counter() - start, "output": output}


def run(
    scheme: str,
    paths: Sequence[str],
    output: str,
    *,
    text_column: str,
    header: bool,
    class_names: Sequence[str],
    classify: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    max_len: int,
    on_long_input: str,
) -> dict:
  """Classifies every row of `paths` into `output` (see module doc); `classify(texts)` gives
  (probabilities (N, classes), lengths in tokens (N,)). Returns {"rows", "seconds", "output"}."""
  counts = np.zeros(len(class_names), np.int64)
  long = too_long.RowCounter(
      max_len, f"model.max_len={max_len}", "predict.on_long_input", on_long_input
  )

  def predict(batch):
    probs, lengths = classify([row.values[0] for _, row in batch])
    long.check(batch, lengths)
    counts[:] += np.bincount(probs.argmax(-1), minlength=len(class_names))
    return [[class_names[int(p.argmax())], *(round(float(q), 6) for q in p)] for p in probs]

  added = ["predicted", *(f"p_{c}" for c in class_names)]
  result = stream(
      scheme,
      paths,
      output,
      column=("data.text_column", text_column),
      header=header,
      added=added,
      predict=predict,
      batch_size=batch_size,
  )
  rows, seconds = result["rows"], result["seconds"]
  long.warn(KEY, rows, "texts")
  print(
      f"wrote {rows:,} predictions to {output} in {seconds:.1f} s "
      f"({rows / max(seconds, 1e-9):,.0f} rows/s); predicted: "
      + ", ".join(f"{name} {n:,}" for name, n in zip(class_names, counts.tolist())),
      flush=True,
  )
  return result


def _batches(scheme, paths, column, header, batch_size, key):
  """Lists of up to `batch_size` (path, records.Row), read as they are needed."""
  setting, name = column
  batch = []
  for path in paths:
    for row in records.read(path, scheme, {setting: name}, header=header, key=key):
      batch.append((path, row))
      if len(batch) == batch_size:
        yield batch
        batch = []
  if batch:
    yield batch


class _Writer:
  """Writes rows with their added columns as CSV or JSON lines; the columns are the first row's."""

  def __init__(self, f, scheme: str, as_jsonl: bool, added: Sequence[str]):
    self.f, self.scheme, self.as_jsonl = f, scheme, as_jsonl
    self.names = list(added)
    self.columns, self.path = None, None  # the first row's columns; the file being written from
    self.left_out, self.extra_keys = 0, set()

  def _start(self, path: str, row: records.Row) -> None:
    self.columns, self.path = list(row.fields), path
    taken = set(self.columns)
    self.added = [_unique(n, taken) for n in self.names]
    self.csv = None if self.as_jsonl else csv.writer(self.f)
    if self.csv:
      self.csv.writerow(self.columns + self.added)

  def write(self, path: str, row: records.Row, values: Sequence) -> None:
    if self.columns is None:
      self._start(path, row)
    elif path != self.path:  # a new file: CSV/TSV files must all have the first one's columns
      if self.scheme != "jsonl" and list(row.fields) != self.columns:
        raise UsageError(
            f"{path}'s columns ({', '.join(row.fields)}) are not {self.path}'s "
            f"({', '.join(self.columns)}); predict files of one layout at a time"
        )
      self.path = path
    if self.as_jsonl:
      self.f.write(json.dumps({**row.fields, **dict(zip(self.added, values))}, ensure_ascii=False))
      self.f.write("\n")
      return
    extra = row.fields.keys() - set(self.columns)
    if extra:  # JSON lines only: keys the first row lacks
      self.left_out += 1
      self.extra_keys |= extra
    cells = [records.as_text(row.fields.get(c)) for c in self.columns]
    self.csv.writerow(cells + [f"{v:.6f}" if isinstance(v, float) else v for v in values])


def _unique(name: str, taken: set[str]) -> str:
  """`name`, or `name_2`, `name_3`, ... if the input already has a column of that name."""
  out, n = name, 1
  while out in taken:
    n += 1
    out = f"{name}_{n}"
  taken.add(out)
  return out
