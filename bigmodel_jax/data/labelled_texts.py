"""Labelled texts for text classification, chosen by `data.source`.

  reviews               the offline generated review corpus of `reviews.py` (train and a held-out
                        test split drawn with another seed; labels negative/positive)
  tfds:<name>           a prepared TFDS dataset with a text feature (`data.text_key`) and a
                        ClassLabel (`data.label_key`), e.g. tfds:imdb_reviews; trains on "train" and
                        evaluates on "test" (or "validation"); read through array_record, never
                        downloaded. Classes: the ClassLabel's names, in its order
  csv:<glob>, tsv:<glob>, jsonl:<glob>
                        the user's own rows: `data.text_column` and `data.label_column` (names, or
                        0-based positions with data.header=false), labels as strings or integers,
                        built once into a cached TFDS dataset (`record_sets.py`); evaluates on
                        `data.validation_source` or on data.val_percent% of the rows held out by a
                        stable hash. Classes: the training split's labels, sorted (as numbers when
                        every label is an integer: 2 before 10)

Every source gives `class_names` without reading its texts (so predict and plan read no data) and
`texts(split)` -> (texts, label names); the task maps names to indices with the run's class list.
"""

import abc
import json

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from bigmodel_jax import json_files
from bigmodel_jax.data import record_sets, records, reviews, tfds_source
from bigmodel_jax.errors import RunError, UsageError

SOURCES_HELP = "reviews, tfds:<name>, csv:<glob>, tsv:<glob>, jsonl:<glob>"


class Source(abc.ABC):
  class_names: tuple[str, ...]
  eval_split: str

  @abc.abstractmethod
  def texts(self, split: str) -> tuple[list[str], list[str]]:
    """(texts, label names) of "train" or `eval_split`, in a fixed order."""


def open_source(d) -> Source:
  """The source named by the config's data section `d`; a bad one is a one-line UsageError."""
  if d.source == "reviews":
    return Reviews(d)
  if d.source.startswith("tfds:") and d.source[5:]:
    return Tfds(d)
  if records.parse_source(d.source):
    return Records(d)
  raise UsageError(f"data.source={d.source!r} is not valid; valid: {SOURCES_HELP}")


def sort_labels(labels) -> tuple[str, ...]:
  """Distinct labels, sorted: by value when all are integers ("2" before "10"), else as text."""
  distinct = set(labels)
  try:
    return tuple(sorted(distinct, key=lambda v: (int(v), v)))
  except ValueError:
    return tuple(sorted(distinct))


def save_classes(path: str, source: str, class_names) -> None:
  """Writes the run's class list (with the source it came from) as JSON."""
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"source": source, "class_names": list(class_names)}, f, indent=2, ensure_ascii=False)


def load_classes(path: str) -> tuple[str, ...]:
  """The class list `save_classes` wrote; a damaged file is a one-line RunError."""
  names = json_files.read_json(path, "dataset facts (source, class names)").get("class_names")
  if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
    raise RunError(f"{path} is damaged: it has no list of two or more class names")
  return tuple(names)


class Reviews(Source):
  eval_split = "test"
  class_names = reviews.CLASS_NAMES

  def __init__(self, d):
    for key in ("num_train", "num_test"):
      if d[key] <= 0:
        raise UsageError(f"data.{key}={d[key]} must be a positive integer")
    self._d = d
    self._splits = None

  def texts(self, split):
    if self._splits is None:
      self._splits = reviews.splits(self._d.num_train, self._d.num_test, seed=self._d.seed)
    texts, labels = self._splits[split]
    return texts, [self.class_names[y] for y in labels]


class Tfds(Source):

  def __init__(self, d):
    self._text_key, self._label_key = d.text_key, d.label_key
    self._builder, self.eval_split = _open_tfds(
        d.source[5:], d.tfds_data_dir, d.text_key, d.label_key
    )
    self.class_names = tuple(self._builder.info.features[d.label_key].names)

  def texts(self, split):
    source = self._builder.as_data_source(split)
    texts, labels = [], np.zeros(len(source), np.int32)
    for i in range(len(source)):
      record = source[i]
      text = record[self._text_key]
      texts.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
      labels[i] = int(record[self._label_key])
    logging.info(
        "tfds:%s %s: %d examples from %s",
        self._builder.name,
        split,
        len(texts),
        self._builder.data_dir,
    )
    return texts, [self.class_names[y] for y in labels]


class Records(Source):
  eval_split = "validation"

  def __init__(self, d):
    spec = record_sets.Spec(
        source=d.source,
        fields=(
            record_sets.Field("text", "data.text_column", d.text_column),
            record_sets.Field("label", "data.label_column", d.label_column),
        ),
        header=d.header,
        val_percent=d.val_percent,
        validation_source=d.validation_source,
        stratify="label",
    )
    self._data = record_sets.load(spec, d.tfds_data_dir)
    self.class_names = sort_labels(self._data.counts["train"])
    if len(self.class_names) < 2:
      raise UsageError(
          f"data.source={d.source}: every training row has the label {self.class_names[0]!r} "
          f"(data.label_column={d.label_column}); a classifier needs at least two classes"
      )
    logging.info(
        "%s: %d classes: %s",
        d.source,
        len(self.class_names),
        ", ".join(f"{c} ({self._data.counts['train'][c]} train rows)" for c in self.class_names),
    )

  def texts(self, split):
    columns = self._data.read(split)
    return columns["text"], columns["label"]


def _open_tfds(name: str, data_dir: str, text_key: str, label_key: str):
  """(builder, eval split name) of a prepared array_record dataset, checked; one-line errors."""
  source = f"tfds:{name}"
  builder = tfds_source.open_prepared(name, data_dir)
  features = builder.info.features
  described = ", ".join(f"{k} ({type(f).__name__})" for k, f in sorted(features.items()))
  for key, kind, want in (
      (text_key, tfds.features.Text, "text"),
      (label_key, tfds.features.ClassLabel, "label"),
  ):
    if key not in features or not isinstance(features[key], kind):
      raise UsageError(
          f"data.{want}_key={key!r} is not a {kind.__name__} feature of {source}; "
          f"features: {described}"
      )
  splits = set(builder.info.splits)
  eval_split = next((s for s in ("test", "validation") if s in splits), None)
  if "train" not in splits or eval_split is None:
    raise UsageError(
        f"{source} needs a train split and a test or validation split; its "
        f"splits: {', '.join(sorted(splits)) or 'none'}"
    )
  return builder, eval_split
