"""Local records (records.py) built once into a cached TFDS array_record dataset: train and
validation splits of named text features, e.g. (text, label) or (source, target).

`load(spec, data_dir)` matches the files of `spec.source` (and `spec.validation_source`), and builds
them, once, into `<data_dir>/records/<scheme>-<fingerprint>/1.0.0/` (data_dir defaults to
~/.cache/bigmodel_jax/tensorflow_datasets). The fingerprint covers the files' real paths, sizes and
mtimes and every setting that shapes the data (columns, header, val_percent), so a changed file or
setting builds a new dataset and an unchanged one is reused. Every file is read once, during the
build, and every data error comes out of it before anything is written.

Splits: with a validation source, its rows are the validation split. Without one, a row goes to
validation when crc32(its `split_by` value) % 100 < val_percent: stable as rows come and go, and
rows with the same text land in the same split. With `stratify` (a label), each label's rows are
split on their own and every label gets at least one row in each split (the row with the smallest,
or largest, hash moves over), so a label with a single row is an error; a validation label that no
training row has is an error too. Rows keep their input order within a split.

The label counts of both splits are kept in the dataset's metadata (`Dataset.counts`), so the
class list is known without reading the data.
"""

import collections
from collections.abc import Sequence
import dataclasses
import os
from typing import NamedTuple

from absl import logging
import tensorflow_datasets as tfds

from bigmodel_jax.data import files, local_tfds, records
from bigmodel_jax.errors import UsageError

SPLITS = ("train", "validation")


class Field(NamedTuple):
  name: str  # the feature, e.g. "text"
  setting: str  # the setting that names its column, e.g. "data.text_column"
  column: str  # a column name, or a 0-based position without a header


@dataclasses.dataclass(frozen=True)
class Spec:
  source: str  # csv:<glob> | tsv:<glob> | jsonl:<glob> (data.source)
  fields: tuple[Field, ...]  # what each row gives; every value must be non-empty
  header: bool = True  # csv/tsv: the first row names the columns
  val_percent: int = 10  # without a validation source: share of rows held out (1..99)
  validation_source: str = ""  # the validation split's records instead (data.validation_source)
  stratify: str = ""  # a field (the label) each of whose values needs rows in both splits

  @property
  def split_by(self) -> str:  # the field whose hash splits the rows: the first (the input)
    return self.fields[0].name


@dataclasses.dataclass
class Dataset:
  builder: tfds.core.DatasetBuilder
  counts: dict[str, dict[str, int]]  # {split: {stratify value: rows}}; {} without stratify

  def read(self, split: str) -> dict[str, list[str]]:
    """{field name: its values, in row order} of one split."""
    source = self.builder.as_data_source(split)
    names = list(self.builder.info.features)
    out = {name: [] for name in names}
    for i in range(len(source)):
      record = source[i]
      for name in names:
        value = record[name]
        out[name].append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    return out


def load(spec: Spec, data_dir: str = "") -> Dataset:
  """The dataset of `spec`, built on the first call (see module doc); errors are UsageErrors."""
  if not 0 < spec.val_percent < 100:
    raise UsageError(f"data.val_percent={spec.val_percent} must be in 1..99")
  files = {"train": _files(spec.source, "data.source")}
  if spec.validation_source:
    files["validation"] = _files(spec.validation_source, "data.validation_source")
  for scheme, _ in files.values():  # positions without a header: checked before any build
    records.check_columns(
        {f.setting: f.column for f in spec.fields}, spec.header or scheme == "jsonl"
    )
  paths = [p for _, split_paths in files.values() for p in split_paths]
  key, total = local_tfds.fingerprint(
      paths, spec, {s: (scheme, len(p)) for s, (scheme, p) in files.items()}
  )
  if total == 0:
    raise UsageError(f"data.source={spec.source}: every matched file is empty")
  builder = Records(
      spec=spec,
      files=files,
      config=tfds.core.BuilderConfig(name=f"{files['train'][0]}-{key}", description=spec.source),
      data_dir=os.path.expanduser(data_dir or local_tfds.DEFAULT_DATA_DIR),
      file_format="array_record",
  )
  local_tfds.prepare(builder, spec.source)
  counts = dict(builder.info.metadata.get("counts", {}))
  for split in SPLITS:
    logging.info(
        "%s: %s: %d rows, from %s",
        spec.source,
        split,
        builder.info.splits[split].num_examples,
        builder.data_dir,
    )
  return Dataset(builder, counts)


def _files(source: str, key: str) -> tuple[str, list[str]]:
  parsed = records.parse_source(source)
  if parsed is None:
    raise UsageError(f"{key}={source!r} is not valid; valid: {records.SOURCES_HELP}")
  scheme, pattern = parsed
  return scheme, records.match(pattern, f"{key}={scheme}:{pattern}")


class Records(local_tfds.LocalBuilder, skip_registration=True):
  """Rows of named text features from local CSV/TSV/JSONL files, in input order."""

  name = "records"

  def __init__(self, *, spec: Spec, files: dict[str, tuple[str, list[str]]], **kwargs):
    self._spec = spec
    self._files = files
    super().__init__(**kwargs)

  def build_message(self) -> str:
    count = sum(len(p) for _, p in self._files.values())
    return f"{self._spec.source}: building a dataset of {count} file(s) into {self.data_dir}"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict(
            {f.name: tfds.features.Text() for f in self._spec.fields}
        ),
        disable_shuffling=True,  # keep rows in input order
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    spec = self._spec
    rows = {split: self._rows(split) for split in self._files}
    if "validation" not in rows:
      rows = split_rows(rows["train"], spec)
    for split in SPLITS:
      if not rows[split]:
        raise UsageError(
            f"{spec.source}: the {split} split has no rows; give more rows"
            + ("" if spec.validation_source else " or raise data.val_percent")
        )
    if spec.stratify:
      column = [f.name for f in spec.fields].index(spec.stratify)
      self.info.metadata["counts"] = {
          split: dict(collections.Counter(values[column] for values, _ in rows[split]))
          for split in SPLITS
      }
      _check_known(rows, column, spec)
    return {split: self._generate_examples(rows[split]) for split in SPLITS}

  def _rows(self, split: str) -> list[tuple[list[str], str]]:
    """[(values of the fields, "path line N")] of one split's files, in order."""
    scheme, paths = self._files[split]
    spec, out = self._spec, []
    key = "data.validation_source" if split == "validation" else "data.source"
    columns = {f.setting: f.column for f in spec.fields}
    for path in paths:
      for row in records.read(path, scheme, columns, header=spec.header, required=columns, key=key):
        out.append((row.values, f"{path} line {row.line}"))
    return out

  def _generate_examples(self, rows):
    names = [f.name for f in self._spec.fields]
    for i, (values, _) in enumerate(rows):
      yield i, dict(zip(names, values))


def split_rows(rows: Sequence, spec: Spec) -> dict[str, list]:
  """Train/validation by a stable hash, per label with `spec.stratify` (see module doc)."""
  names = [f.name for f in spec.fields]
  by = names.index(spec.split_by)
  group_of = names.index(spec.stratify) if spec.stratify else None
  groups = {}
  for i, (values, _) in enumerate(rows):
    groups.setdefault(values[group_of] if group_of is not None else "", []).append(i)
  held_out = set()
  for value, members in groups.items():
    if len(members) < 2:
      what = f"label {value!r} has" if spec.stratify else "the data have"
      raise UsageError(
          f"{spec.source}: {what} 1 row ({rows[members[0]][1]}); a train/validation split "
          f"(data.val_percent={spec.val_percent}) needs at least 2: add rows, drop it, or give "
          "the validation rows as data.validation_source"
      )
    val = files.held_out([rows[i][0][by] for i in members], spec.val_percent)
    held_out.update(i for i, v in zip(members, val) if v)
  return {
      "train": [r for i, r in enumerate(rows) if i not in held_out],
      "validation": [r for i, r in enumerate(rows) if i in held_out],
  }


def _check_known(rows: dict, column: int, spec: Spec) -> None:
  known = {values[column] for values, _ in rows["train"]}
  for values, where in rows["validation"]:
    if values[column] not in known:
      setting = next(f.setting for f in spec.fields if f.name == spec.stratify)
      raise UsageError(
          f"{where}: label {values[column]!r} ({setting}) of the validation split is in no "
          f"training row; training labels: {', '.join(sorted(known))}"
      )
