"""Tables for binary classification: a bundled real dataset or the user's CSV, and their encoding.

Sources (`data.source`):

  breast_cancer  scikit-learn's bundled Wisconsin diagnostic breast-cancer data (offline default):
                 569 real patients, 30 numeric features of cell nuclei, label "diagnosis"
                 benign (0) / malignant (1)
  csv:<path>     the user's CSV with a header row; the label column is data.label_column

A `Table` holds raw cells; `Preprocessing` turns them into numbers, fitted on the TRAINING split
only and saved with the run, so evaluation and prediction encode exactly as training did:

  numeric column      every non-empty cell in the file is a number: standardised with the training
                      mean and standard deviation (a constant column: std 1); an empty cell becomes
                      the training mean (0 after standardising)
  categorical column  anything else: one-hot over the values seen in the training split, sorted
                      (an empty cell is a value of its own); a value never seen in training encodes
                      as all zeros. More than data.max_categories values (IDs, free text) cannot be
                      encoded: an error that says to drop the column (data.drop_columns)
  label               exactly two distinct values: 0/1 stay as they are; other numbers: the smaller
                      is 0; strings: in sorted order, the first is 0 ("benign" < "malignant",
                      "no" < "yes"). `label_values` in preprocessing.json is
                      [value of 0, value of 1]
"""

import csv
import dataclasses
import json
import os

import numpy as np

from bigmodel_jax import json_files
from bigmodel_jax.errors import RunError, UsageError

SOURCES_HELP = "breast_cancer, csv:<path> (with data.label_column)"


@dataclasses.dataclass
class Table:
  columns: dict[str, np.ndarray]  # feature name -> raw cells: str objects, or float64 (bundled)
  labels: np.ndarray | None  # raw label cells (str); None when a CSV has no label column
  name: str  # where it came from, for messages
  lines: np.ndarray | None = None  # each row's line number in the CSV, for messages

  def __len__(self) -> int:
    return len(next(iter(self.columns.values()))) if self.columns else len(self.labels)

  def take(self, rows: np.ndarray) -> "Table":
    return Table(
        {k: v[rows] for k, v in self.columns.items()},
        None if self.labels is None else self.labels[rows],
        self.name,
        None if self.lines is None else self.lines[rows],
    )


def load(source: str, *, label_column: str = "", drop_columns=()) -> Table:
  """The whole table named by `source` (see module doc); errors are one-line UsageErrors."""
  if source == "breast_cancer":
    from sklearn import datasets  # pylint: disable=g-import-not-at-top

    data = datasets.load_breast_cancer()
    columns = {str(n): data.data[:, i] for i, n in enumerate(data.feature_names)}
    unknown = [c for c in drop_columns if c not in columns]
    if unknown:
      raise UsageError(
          f"data.drop_columns: {', '.join(unknown)} not in breast_cancer; columns: "
          f"{', '.join(columns)}"
      )
    columns = {k: v for k, v in columns.items() if k not in drop_columns}
    return Table(columns, data.target_names[data.target].astype(object), "breast_cancer")
  scheme, _, path = source.partition(":")
  if scheme != "csv" or not path:
    raise UsageError(f"data.source={source!r} is not valid; valid: {SOURCES_HELP}")
  table = read_csv(os.path.expanduser(path), label_column=label_column, drop_columns=drop_columns)
  _label_values(table.labels, label_column, table.name)  # exactly two, checked before splitting
  return table


def read_csv(
    path: str,
    *,
    label_column: str,
    drop_columns=(),
    require_label: bool = True,
    key: str = "data.source",
) -> Table:
  """A CSV file with a header row -> Table of stripped string cells (blank lines skipped)."""
  if not os.path.isfile(path):
    raise UsageError(f"{key}: {path} does not exist; give a CSV file with a header row")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
  except UnicodeDecodeError as e:
    raise UsageError(f"{key}: {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
  except csv.Error as e:
    raise UsageError(f"{key}: {path} is not a valid CSV ({e})") from None
  if not rows:
    raise UsageError(f"{key}: {path} is empty; it needs a header row and data rows")
  header = [h.strip() for h in rows[0][1]]
  if len(rows) == 1:
    raise UsageError(f"{key}: {path} has a header but no data rows")
  if len(set(header)) != len(header) or "" in header:
    raise UsageError(
        f"{key}: {path} needs distinct, non-empty column names; header: "
        f"{', '.join(map(repr, header))}"
    )
  for line, r in rows[1:]:
    if len(r) != len(header):
      raise UsageError(
          f"{key}: {path} line {line} has {len(r)} fields but the header has {len(header)}"
      )
  listed = ", ".join(header)
  if label_column not in header and require_label:
    raise UsageError(
        f"data.label_column={label_column!r} is not a column of {path}; set "
        f"--config.data.label_column to one of: {listed}"
        if label_column
        else f"{key}=csv:{path} needs --config.data.label_column=<name>, one of: {listed}"
    )
  unknown = [c for c in drop_columns if c not in header]
  if unknown and require_label:
    raise UsageError(f"data.drop_columns: {', '.join(unknown)} not in {path}; columns: {listed}")
  cells = np.array([[c.strip() for c in r] for _, r in rows[1:]], dtype=object)
  lines = np.array([line for line, _ in rows[1:]])
  columns = {
      h: cells[:, i] for i, h in enumerate(header) if h != label_column and h not in drop_columns
  }
  labels = None
  if label_column in header:
    labels = cells[:, header.index(label_column)]
    empty = np.flatnonzero(labels == "")
    if len(empty) and require_label:
      raise UsageError(
          f"{key}: {path} line {lines[empty[0]]} has no label (column "
          f"{label_column!r}); every training row needs one"
      )
  if not columns:
    raise UsageError(f"{key}: {path} has no feature columns besides the label {label_column!r}")
  return Table(columns, labels, path, lines)


def split(table: Table, test_fraction: float, seed: int) -> tuple[Table, Table]:
  """A fixed train/test split, stratified by label (the same rows for the same seed)."""
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top

  try:
    train, test = model_selection.train_test_split(
        np.arange(len(table)), test_size=test_fraction, random_state=seed, stratify=table.labels
    )
  except ValueError as e:
    raise UsageError(
        f"{table.name}: cannot split {len(table)} rows into train and test with "
        f"data.test_fraction={test_fraction} ({e})"
    ) from None
  return table.take(np.sort(train)), table.take(np.sort(test))


def _numbers(cells: np.ndarray) -> np.ndarray | None:
  """float64 values (NaN for empty cells), or None if a non-empty cell is not a number."""
  if cells.dtype.kind == "f":
    return cells
  try:
    return np.array([float(c) if c != "" else np.nan for c in cells], np.float64)
  except ValueError:
    return None


@dataclasses.dataclass
class Preprocessing:
  """The encoding of features and label, fitted on a training split (see module doc)."""

  label_column: str
  label_values: list[str]  # [value encoded as 0, value encoded as 1]
  label_numeric: bool
  features: list[dict]  # {"name", "kind": "numeric", "mean", "std"} | {.., "categories"}

  @classmethod
  def fit(cls, table: Table, train: Table, *, label_column: str, max_categories: int):
    """Kinds of columns and the label's values from the whole table; statistics from `train`."""
    values, numeric = _label_values(table.labels, label_column, table.name)
    features = []
    for name, cells in table.columns.items():
      if _numbers(cells) is not None:
        x = _numbers(train.columns[name])
        mean = float(np.nanmean(x)) if np.isfinite(x).any() else 0.0
        std = float(np.nanstd(x)) if np.isfinite(x).any() else 0.0
        features.append(
            {"name": name, "kind": "numeric", "mean": mean, "std": std if std > 1e-12 else 1.0}
        )
        continue
      categories = sorted(set(train.columns[name].tolist()))
      if len(categories) > max_categories:
        example = next(c for c in cells if _numbers(np.array([c], object)) is None)
        raise UsageError(
            f"{table.name}: column {name!r} is not numeric (e.g. {example!r}) and has "
            f"{len(categories)} distinct values in the training split, more than "
            f"data.max_categories={max_categories} to one-hot encode; drop it with "
            f"--config.data.drop_columns={name} or raise data.max_categories"
        )
      features.append({"name": name, "kind": "categorical", "categories": categories})
    return cls(label_column, values, numeric, features)

  @property
  def feature_names(self) -> list[str]:
    return [
        f["name"] if f["kind"] == "numeric" else f"{f['name']}={c}"
        for f in self.features
        for c in f.get("categories", [None])
    ]

  def transform(self, table: Table, key: str = "data.source") -> np.ndarray:
    """Table -> float32 (N, len(feature_names)); the table needs every feature column."""
    missing = [f["name"] for f in self.features if f["name"] not in table.columns]
    if missing:
      raise UsageError(
          f"{key}: {table.name} lacks the feature column(s) {', '.join(missing)} "
          "that the model was trained on"
      )
    parts = []
    for f in self.features:
      cells = table.columns[f["name"]]
      if f["kind"] == "numeric":
        x = _numbers(cells)
        if x is None or np.isinf(x).any():  # an empty cell is NaN (missing); Inf is an error
          row = next(
              i
              for i, c in enumerate(cells)
              if (v := _numbers(np.array([c], object))) is None or np.isinf(v[0])
          )
          where = f"line {table.lines[row]}" if table.lines is not None else f"row {row}"
          raise UsageError(
              f"{key}: {table.name} {where}, column {f['name']!r}: "
              f"{cells[row]!r} is not a finite number (the column was numeric in "
              "training)"
          )
        parts.append(np.nan_to_num((x - f["mean"]) / f["std"], nan=0.0)[:, None])
      else:
        parts.append((cells[:, None] == np.array(f["categories"], object)[None]).astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float32)

  def encode_labels(self, labels: np.ndarray) -> np.ndarray:
    """Raw label cells -> float32 0/1; a value that is neither label value becomes NaN."""
    if self.label_numeric:
      x = _numbers(labels)
      if x is None:
        x = np.array([_float_or_nan(c) for c in labels])
      zero, one = (float(v) for v in self.label_values)
    else:
      x, (zero, one) = labels, self.label_values
    return np.where(x == one, 1.0, np.where(x == zero, 0.0, np.nan)).astype(np.float32)

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump(dataclasses.asdict(self), f, indent=2)

  @classmethod
  def load(cls, path: str) -> "Preprocessing":
    saved = json_files.read_json(path, "preprocessing (feature encoding)")
    try:
      return cls(**saved)
    except TypeError:  # keys that are not this class's fields
      raise RunError(
          f"{path} is damaged: its keys are not the preprocessing this code writes"
      ) from None


def _float_or_nan(cell) -> float:
  try:
    return float(cell)
  except ValueError:
    return np.nan


def _label_values(labels: np.ndarray, column: str, name: str) -> tuple[list[str], bool]:
  distinct = sorted(set(labels.tolist()))
  numbers = _numbers(np.array(distinct, object))
  if numbers is not None:  # order by value; "1" and "1.0" are one value
    by_value = {}
    for cell, v in sorted(zip(distinct, numbers.tolist()), key=lambda p: p[1]):
      by_value.setdefault(v, cell)
    distinct = list(by_value.values())
  if len(distinct) != 2:
    shown = ", ".join(map(repr, distinct[:5])) + (", ..." if len(distinct) > 5 else "")
    raise UsageError(
        f"{name}: label column {column!r} has {len(distinct)} distinct value"
        f"{'s' if len(distinct) != 1 else ''} ({shown}); a binary label needs "
        "exactly two (0/1, or two strings)"
    )
  return [str(v) for v in distinct], numbers is not None
