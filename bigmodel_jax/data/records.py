"""Local records: rows of named fields from CSV, TSV or JSON-lines files, with one-line errors.

Sources name a scheme and a glob: `csv:<glob>`, `tsv:<glob>`, `jsonl:<glob>` (`**` recurses). The
files are matched by `files.match` (each real file once, in path order; symlink loops cannot hang
it) and read front to back, one row at a time, so a file of any size costs one row of memory.

  csv, tsv  the `csv` module (comma or tab): a field in double quotes may hold the delimiter, line
            breaks and doubled quotes (""), as spreadsheets and pandas write them; a quote that
            does not close is an error, not a field that swallows the rest of the file. With a
            header row (header=True) columns are named by it; without one they are named by
            0-based position ("0", "1", ...). Blank lines are skipped.
  jsonl     one JSON object per line, keys by name (header is ignored); a value that is not a
            string reads as its JSON text (1 -> "1", true -> "true"), null as "".

`read(path, scheme, columns, ...)` yields each row as (line, fields, values): the line the row
starts on, all of its fields (for writing it back out), and the values of the wanted `columns`,
given as {setting: column} so that an error names the setting to change. Errors name the file and
the line: a column that is not there (and the ones that are), an empty value where one is
required, a file that reads as one column because its delimiter is the other scheme's, text that
is not UTF-8, a line that is not a JSON object, a row with more or fewer fields than the header.
"""

from collections.abc import Collection, Iterator, Mapping
import csv
import json
import os
from typing import Any, NamedTuple

from absl import logging

from bigmodel_jax.data import files
from bigmodel_jax.errors import UsageError

DELIMITERS = {"csv": ",", "tsv": "\t"}
SCHEMES = ("csv", "tsv", "jsonl")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
SOURCES_HELP = "csv:<glob>, tsv:<glob>, jsonl:<glob>"
_NAMES = {"csv": "comma", "tsv": "tab"}
csv.field_size_limit(1 << 28)  # a field may be a whole book; an unclosed quote is caught anyway


class Row(NamedTuple):
  line: int  # where the row starts in its file (1-based)
  fields: dict[str, Any]  # every field: str (csv, tsv) or JSON values (jsonl)
  values: list[str]  # the wanted columns' values, in the order they were asked for


def parse_source(source: str) -> tuple[str, str] | None:
  """("csv", glob) for "csv:<glob>" (likewise tsv, jsonl); None for any other source."""
  scheme, sep, pattern = source.partition(":")
  return (scheme, pattern) if sep and scheme in SCHEMES and pattern else None


def match(pattern: str, key: str) -> list[str]:
  """The real paths of the files matching `pattern`, each once, sorted; none is an error naming
  the setting `key`."""
  found = files.match(os.path.expanduser(pattern))
  if not found.paths:
    raise UsageError(f"{key}: {pattern} matches no files; give a file or a glob, e.g. 'data/*.csv'")
  if found.file_aliases:
    logging.warning(
        "%s: read each file once: dropped %d paths to a file already matched (symlinks, '..')",
        key,
        found.file_aliases,
    )
  return found.paths


def check_columns(columns: Mapping[str, str], header: bool) -> None:
  """Without a header, columns are 0-based positions: anything else is a UsageError."""
  for setting, column in columns.items():
    if not header and not column.isdigit():
      raise UsageError(
          f"{setting}={column!r}: with data.header=false columns are named by 0-based position; "
          f"give e.g. {setting}=0"
      )


def read(
    path: str,
    scheme: str,
    columns: Mapping[str, str],
    *,
    header: bool = True,
    required: Collection[str] = (),
    key: str = "data.source",
) -> Iterator[Row]:
  """The rows of one file (see module doc); `required` names the settings whose value may not be
  empty; `key` is the setting that named the file, for messages."""
  check_columns(columns, header or scheme == "jsonl")
  if scheme == "jsonl":
    yield from _read_jsonl(path, columns, required)
  else:
    yield from _read_delimited(path, scheme, columns, header, required, key)


def _lines(path: str) -> Iterator[str]:
  """The file's lines as text (line endings kept, as csv wants); not UTF-8 names the line."""
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise UsageError(
            f"{path} line {number} is not UTF-8 ({e.reason} at byte {e.start} of the line); "
            "save the file as UTF-8"
        ) from None
      yield text.removeprefix("\ufeff") if number == 1 else text


def _read_delimited(path, scheme, columns, header, required, key) -> Iterator[Row]:
  delimiter = DELIMITERS[scheme]
  reader = csv.reader(_lines(path), delimiter=delimiter, strict=True)
  names, wanted, start = None, None, 1
  while True:
    try:
      cells = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      raise UsageError(
          f"{path} line {start} is not valid {scheme.upper()} ({e}): a field that starts with a "
          'quote must end with one, and a quote inside it is written twice ("")'
      ) from None
    line, start = start, reader.line_num + 1
    if not cells:  # a blank line
      continue
    if names is None:
      names = [c.strip() for c in cells] if header else [str(i) for i in range(len(cells))]
      _check_header(path, names, header, line)
      wanted = _positions(path, scheme, names, cells, columns, header, key)
      if header:
        continue
    if len(cells) != len(names):
      raise UsageError(
          f"{path} line {line} has {len(cells)} fields but the "
          f"{'header' if header else 'first row'} has {len(names)}; a field holding a "
          f"{_NAMES[scheme]} or a line break must be in double quotes"
      )
    values = [cells[i].strip() for i in wanted]
    _check_required(path, line, columns, values, required)
    yield Row(line, dict(zip(names, cells)), values)


def _check_header(path, names, header, line) -> None:
  if header and len(set(names)) != len(names):
    twice = sorted({n for n in names if names.count(n) > 1})
    raise UsageError(
        f"{path} line {line}: the header names column(s) {', '.join(map(repr, twice))} more than "
        "once; columns need distinct names"
    )


def _positions(path, scheme, names, cells, columns, header, key) -> list[int]:
  """The positions of the wanted columns in a header (or first row), with errors that help."""
  out = []
  for setting, column in columns.items():
    if column in names:
      out.append(names.index(column))
      continue
    other = next((s for s, d in DELIMITERS.items() if s != scheme and d in cells[0]), None)
    if len(cells) == 1 and other:
      raise UsageError(
          f"{path} line 1 is one column ({cells[0][:60]!r}) when split on {_NAMES[scheme]}s "
          f"as {scheme}: asks, but it holds {_NAMES[other]}s: the file looks like "
          f"{other.upper()}; use {key}={other}:<glob>"
      )
    if cells[0].lstrip().startswith("{"):
      raise UsageError(
          f"{path} line 1 starts with '{{': it looks like JSON lines; use {key}=jsonl:<glob>"
      )
    if not header:
      raise UsageError(
          f"{setting}={column}: {path} line 1 has {len(names)} fields (positions "
          f"0..{len(names) - 1})"
      )
    hint = " (data.header=false names columns by position)" if column.isdigit() else ""
    raise UsageError(
        f"{setting}={column!r} is not a column of {path}{hint}; its columns: {', '.join(names)}"
    )
  return out


def _check_required(path, line, columns, values, required) -> None:
  for (setting, column), value in zip(columns.items(), values):
    if not value and setting in required:
      raise UsageError(
          f"{path} line {line}: {column!r} ({setting}) is empty; every row needs a value there"
      )


def _read_jsonl(path, columns, required) -> Iterator[Row]:
  for line, text in enumerate(_lines(path), 1):
    if not text.strip():
      continue
    try:
      fields = json.loads(text)
    except json.JSONDecodeError as e:
      raise UsageError(
          f"{path} line {line} is not valid JSON ({e.msg} at column {e.colno}); each line "
          "must be one JSON object"
      ) from None
    if not isinstance(fields, dict):
      raise UsageError(
          f"{path} line {line} is a JSON {type(fields).__name__}, not an object; each line "
          'must be one JSON object, e.g. {"text": "...", "label": "..."}'
      )
    values = []
    for setting, column in columns.items():
      if column not in fields:
        raise UsageError(
            f"{setting}={column!r} is not a key of {path} line {line}; its keys: "
            f"{', '.join(fields) or 'none'}"
        )
      values.append(as_text(fields[column]).strip())
    _check_required(path, line, columns, values, required)
    yield Row(line, fields, values)


def as_text(value: Any) -> str:
  """A JSON value as text: strings as they are, null as "", anything else as its JSON."""
  if isinstance(value, str):
    return value
  return "" if value is None else json.dumps(value, ensure_ascii=False)
