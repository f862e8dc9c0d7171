"""Batch prediction over CSV/TSV/JSONL files: every row in, the row and its prediction out.

`input_files(value)` decides what `predict.input` is: `csv:<glob>`, `tsv:<glob>` or `jsonl:<glob>`,
or a path or glob of existing files ending in .csv, .tsv or .jsonl, names files; anything else is a
text to classify (a value that ends in one of those extensions but names no file is an error, not
a text). `run(...)` streams the rows, in input order (files in path order), through the model in
fixed-size batches and writes each one as it goes: the input row's fields, then `predicted` and one
`p_<class>` probability column per class (a name the input already has gets a `_2` suffix). The
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


def input_files(value: str) -> tuple[str, list[str]] | None:
  """(scheme, real paths) when `value` names record files (see module doc); None for a text."""
  parsed = records.parse_source(value)
  if parsed:
    return parsed[0], records.match(parsed[1], f"{KEY}={value}")
  if "\n" in value or len(value) > 4096 or not value.strip():
    return None
  ext = lambda p: os.path.splitext(p)[1].lower()
  found = files.match(os.path.expanduser(value)).paths
  kinds = {records.EXTENSIONS.get(ext(p)) for p in found}
  if found and kinds == {None}:
    logging.warning(
        "%s=%r also names %d file(s) that are not .csv, .tsv or .jsonl: classified as a text; "
        "to read the file, write %s=csv:<path> (or tsv:, jsonl:)",
        KEY,
        value,
        len(found),
        KEY,
    )
    return None
  if found and len(kinds) == 1:
    return kinds.pop(), found
  if found:
    shown = ", ".join(sorted(f".{k}" if k else "other" for k in kinds))
    raise UsageError(
        f"{KEY}={value} matches files of several kinds ({shown}); give files of one kind, or name "
        "the format with csv:<glob>, tsv:<glob> or jsonl:<glob>"
    )
  if ext(value.rstrip()) in records.EXTENSIONS:
    raise UsageError(
        f"{KEY}={value} names no existing file; give an existing .csv, .tsv or .jsonl file or "
        "glob, or a text to classify"
    )
  return None


def check_output(output: str, inputs: Sequence[str]) -> None:
  """One-line errors for an output path that is a folder or one of the input files."""
  if os.path.isdir(output):
    raise UsageError(
        f"predict.output={output} is a directory; give a file path, e.g. {output}/p.csv"
    )
  if os.path.realpath(output) in {os.path.realpath(p) for p in inputs}:
    raise UsageError(
        f"predict.output={output} is an input file; writing it would destroy the input, so give "
        "another path"
    )


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
  """Predicts every row of `paths` into `output` (see module doc); `classify(texts)` gives
  (probabilities (N, classes), lengths in tokens (N,)). Returns {"rows", "seconds", "output"}."""
  check_output(output, paths)
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
  start = time.perf_counter()
  try:
    with tmp:
      writer = _Writer(tmp, scheme, output.lower().endswith(".jsonl"), class_names)
      counts, long = np.zeros(len(class_names), np.int64), 0
      for batch in _batches(scheme, paths, text_column, header, batch_size):
        probs, lengths = classify([row.values[0] for _, row in batch])
        for (path, row), n in zip(batch, lengths):
          if n > max_len:
            long += 1
            if on_long_input == "error":
              too_long.check_input(
                  f"{path} line {row.line}",
                  int(n),
                  max_len,
                  f"model.max_len={max_len}",
                  "predict.on_long_input",
                  on_long_input,
              )
        for (path, row), p in zip(batch, probs):
          writer.write(path, row, p)
        counts += np.bincount(probs.argmax(-1), minlength=len(class_names))
    os.replace(tmp.name, output)
  finally:
    if os.path.exists(tmp.name):
      os.remove(tmp.name)
  seconds = time.perf_counter() - start
  rows = int(counts.sum())
  if long:
    logging.warning(
        "%s: %d of %d texts are longer than model.max_len=%d tokens and were cut to their first %d",
        KEY,
        long,
        rows,
        max_len,
        max_len,
    )
  if writer.left_out:
    logging.warning(
        "%d rows have keys that the first row lacks (%s): not in the CSV; write predict.output="
        "<name>.jsonl to keep them",
        writer.left_out,
        ", ".join(sorted(writer.extra_keys)[:5]),
    )
  print(
      f"wrote {rows:,} predictions to {output} in {seconds:.1f} s "
      f"({rows / max(seconds, 1e-9):,.0f} rows/s); predicted: "
      + ", ".join(f"{name} {n:,}" for name, n in zip(class_names, counts.tolist())),
      flush=True,
  )
  return {"rows": rows, "seconds": seconds, "output": output}


def _batches(scheme, paths, text_column, header, batch_size):
  """Lists of up to `batch_size` (path, records.Row), read as they are needed."""
  batch = []
  for path in paths:
    for row in records.read(
        path, scheme, {"data.text_column": text_column}, header=header, key=KEY
    ):
      batch.append((path, row))
      if len(batch) == batch_size:
        yield batch
        batch = []
  if batch:
    yield batch


class _Writer:
  """Writes rows with their predictions as CSV or JSON lines; the columns are the first row's."""

  def __init__(self, f, scheme: str, as_jsonl: bool, class_names: Sequence[str]):
    self.f, self.scheme, self.as_jsonl = f, scheme, as_jsonl
    self.class_names = list(class_names)
    self.columns, self.path = None, None  # the first row's columns; the file being written from
    self.left_out, self.extra_keys = 0, set()

  def _start(self, path: str, row: records.Row) -> None:
    self.columns, self.path = list(row.fields), path
    taken = set(self.columns)
    self.added = [_unique(n, taken) for n in ["predicted", *(f"p_{c}" for c in self.class_names)]]
    self.csv = None if self.as_jsonl else csv.writer(self.f)
    if self.csv:
      self.csv.writerow(self.columns + self.added)

  def write(self, path: str, row: records.Row, probs: np.ndarray) -> None:
    if self.columns is None:
      self._start(path, row)
    elif path != self.path:  # a new file: CSV/TSV files must all have the first one's columns
      if self.scheme != "jsonl" and list(row.fields) != self.columns:
        raise UsageError(
            f"{path}'s columns ({', '.join(row.fields)}) are not {self.path}'s "
            f"({', '.join(self.columns)}); predict files of one layout at a time"
        )
      self.path = path
    predicted = self.class_names[int(probs.argmax())]
    if self.as_jsonl:
      values = [predicted, *(round(float(q), 6) for q in probs)]
      self.f.write(json.dumps({**row.fields, **dict(zip(self.added, values))}, ensure_ascii=False))
      self.f.write("\n")
      return
    extra = row.fields.keys() - set(self.columns)
    if extra:  # JSON lines only: keys the first row lacks
      self.left_out += 1
      self.extra_keys |= extra
    cells = [records.as_text(row.fields.get(c)) for c in self.columns]
    self.csv.writerow(cells + [predicted, *(f"{q:.6f}" for q in probs)])


def _unique(name: str, taken: set[str]) -> str:
  """`name`, or `name_2`, `name_3`, ... if the input already has a column of that name."""
  out, n = name, 1
  while out in taken:
    n += 1
    out = f"{name}_{n}"
  taken.add(out)
  return out
