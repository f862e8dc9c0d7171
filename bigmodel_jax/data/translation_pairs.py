"""(source, target) pairs for the translate task, chosen by `data.source`.

  dates                 offline default: dates written many ways -> ISO 8601 (`dates.py`);
                        validation and test come from other seeds and share no source with train
  tfds:<name>           a prepared TFDS dataset with a Translation feature, e.g.
                        tfds:ted_hrlr_translate/pt_to_en (train/validation/test) or
                        tfds:opus/medical (train only: validation and test are the last
                        2 x data.holdout_percent % of train); languages data.source_lang and
                        data.target_lang, or its supervised keys
  csv:<glob>, tsv:<glob>, jsonl:<glob>
                        the user's own pairs: `data.source_column` and `data.target_column` (names,
                        or 0-based positions with data.header=false), built once into a cached
                        TFDS dataset (`record_sets.py`). Held out: the rows of
                        data.validation_source, or data.val_percent % of the rows by a stable hash
                        of the source text (a sentence is never in two splits); the held-out rows
                        are halved, by a second hash of the source, into validation and test (when
                        they cannot be halved, e.g. one row, both are all of them)

`open_source(d)` checks the source (and, for tfds, opens it) without reading pairs; its `splits()`
reads them: {"train", "validation", "test"} -> (sources, targets). data.train_examples and
data.eval_examples cap tfds and file sources (0 = all) and size the generated dates.
"""

import abc
import zlib

from absl import logging
import tensorflow_datasets as tfds

from bigmodel_jax.data import dates, record_sets, records, tfds_source
from bigmodel_jax.errors import UsageError

SOURCES_HELP = "dates, tfds:<name>[/<config>] with a Translation feature, " + records.SOURCES_HELP
Splits = dict[str, tuple[list[str], list[str]]]


class Source(abc.ABC):

  @abc.abstractmethod
  def splits(self) -> Splits:
    """{"train", "validation", "test"}: (sources, targets), in a fixed order."""


def open_source(d) -> Source:
  """The source named by the config's data section `d`; a bad one is a one-line UsageError."""
  if d.source == "dates":
    return Dates(d)
  if d.source.startswith("tfds:") and d.source[5:]:
    return Tfds(d)
  if records.parse_source(d.source):
    return Records(d)
  raise UsageError(f"data.source={d.source!r} is not valid; valid: {SOURCES_HELP}")


def _cap(pairs: tuple[list[str], list[str]], cap: int) -> tuple[list[str], list[str]]:
  return (pairs[0][:cap], pairs[1][:cap]) if cap else pairs


class Dates(Source):

  def __init__(self, d):
    for key in ("train_examples", "eval_examples"):
      if d[key] < 1:  # how many to generate
        raise UsageError(f"data.{key}={d[key]} must be >= 1")
    self._d = d

  def splits(self):
    d = self._d
    return dates.make_splits(d.train_examples, d.eval_examples, d.seed)


class Records(Source):

  def __init__(self, d):
    if not 1 <= d.val_percent <= 99:
      raise UsageError(f"data.val_percent={d.val_percent} must be in 1..99")
    self._d = d
    self._spec = record_sets.Spec(
        source=d.source,
        fields=(
            record_sets.Field("source", "data.source_column", d.source_column),
            record_sets.Field("target", "data.target_column", d.target_column),
        ),
        header=d.header,
        val_percent=d.val_percent,
        validation_source=d.validation_source,
    )  # split_by: the first field, the source text
    scheme = records.parse_source(d.source)[0]
    records.check_columns(
        {f.setting: f.column for f in self._spec.fields}, d.header or scheme == "jsonl"
    )

  def splits(self):
    d = self._d
    data = record_sets.load(self._spec, d.tfds_data_dir)
    train, held = data.read("train"), data.read("validation")
    test = [zlib.crc32(b"test:" + s.encode("utf-8")) % 2 == 1 for s in held["source"]]
    out = {"train": _cap((train["source"], train["target"]), d.train_examples)}
    for split, want in (("validation", False), ("test", True)):
      rows = [i for i, t in enumerate(test) if t == want] if 0 < sum(test) < len(test) else None
      if rows is None:  # one held-out row, or every one hashed to the same half
        rows = range(len(test))
      pairs = ([held["source"][i] for i in rows], [held["target"][i] for i in rows])
      out[split] = _cap(pairs, d.eval_examples)
    logging.info(
        "%s: %d train, %d validation, %d test pairs",
        d.source,
        *(len(out[s][0]) for s in ("train", "validation", "test")),
    )
    return out


class Tfds(Source):

  def __init__(self, d):
    name = d.source[5:]
    self._d = d
    self._builder = tfds_source.open_prepared(name, d.tfds_data_dir)
    if not isinstance(self._builder.info.features, tfds.features.Translation):
      raise UsageError(
          f"tfds:{name} has no Translation feature (data.source); valid: {SOURCES_HELP}"
      )
    self.languages = _languages(self._builder, d)

  def splits(self):
    return _read_pairs(self._builder, self._d, *self.languages)


def _languages(builder, d) -> tuple[str, str]:
  """(source, target) language features: data.source_lang/target_lang, or supervised_keys."""
  languages = list(builder.info.features.keys())
  keys = builder.info.supervised_keys or ("", "")
  src_lang, tgt_lang = d.source_lang or keys[0], d.target_lang or keys[1]
  for key, lang in (("data.source_lang", src_lang), ("data.target_lang", tgt_lang)):
    if lang not in languages:
      raise UsageError(
          f"{key}={lang!r} is not a language of {d.source}; valid: {', '.join(languages)}"
      )
  return src_lang, tgt_lang


def _read_pairs(builder, d, src_lang: str, tgt_lang: str) -> Splits:
  """{"train", "validation", "test"}: (sources, targets) of a Translation dataset."""
  splits, p = set(builder.info.splits), d.holdout_percent
  carved = [s for s in ("validation", "test") if s not in splits]
  start = 100 - p * len(carved)
  names = {"train": f"train[:{start}%]" if carved else "train"}
  for split in ("validation", "test"):
    if split not in carved:
      names[split] = split
    else:
      names[split], start = f"train[{start}%:{start + p}%]", start + p
  out = {}
  for split, tfds_split in names.items():
    source = builder.as_data_source(tfds_split)
    cap = d.train_examples if split == "train" else d.eval_examples
    n = min(cap, len(source)) if cap else len(source)
    rows = [source[i] for i in range(n)]
    out[split] = ([_to_str(r[src_lang]) for r in rows], [_to_str(r[tgt_lang]) for r in rows])
    logging.info(
        "%s: %s (%s): %d pairs %s -> %s", d.source, split, tfds_split, n, src_lang, tgt_lang
    )
  return out


def _to_str(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
