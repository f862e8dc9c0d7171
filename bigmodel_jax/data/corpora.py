"""Text corpora as TFDS array_record datasets, read without TensorFlow.

`load_text_splits(source)` returns {"train": docs, "validation": docs}, where
each value is a random-access sequence of document strings. Sources:

  pystdlib           the Python standard library's own .py files (offline default)
  text_files:<glob>  the user's UTF-8 text files (`**` recurses)
  tfds:<name>        a prepared TFDS catalog dataset, e.g. `tfds:lm1b`,
                     `tfds:tiny_shakespeare`, `tfds:name/config:1.0.0`

Local corpora (pystdlib, text_files) are built once by our own TFDS builders into
`<data_dir>/<builder>/<config>/<version>/` (data_dir defaults to
`~/.cache/bigmodel_jax/tensorflow_datasets`). The config name is a fingerprint of
the files (paths, sizes, mtimes) and of val_percent, so a changed corpus builds a
new dataset and an unchanged one is reused.

Each file is read once: files are known by their real path (os.path.realpath), so a
symlink, a `..` detour or a symlink loop does not bring a file in twice (`files.match` also
never walks a real folder twice, so a loop cannot hang the glob); files with the same bytes
under different names are kept once (the first in path order), so no text is in both splits.
How many of each were dropped is logged.

Train/validation split of local corpora is by file: a file goes to validation
when crc32(its real path relative to the real root) % 100 < val_percent, so the
split is stable as files come and go. A single file is split by text instead (its last
val_percent% of lines -> validation); with a few files, if the hash leaves one
split empty, the file with the smallest (or largest) hash moves over to fill it.
"""

from collections.abc import Iterator, Sequence
import glob
import os
import sys
import sysconfig

from absl import logging
import tensorflow_datasets as tfds

from bigmodel_jax.data import files, local_tfds, tfds_source
from bigmodel_jax.errors import RunError, UsageError

DEFAULT_DATA_DIR = local_tfds.DEFAULT_DATA_DIR
SOURCES_HELP = "pystdlib, text_files:<glob>, tfds:<name>[/<config>][:<version>]"
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def load_text_splits(
    source: str,
    *,
    data_dir: str = "",
    val_percent: int = 5,
    text_key: str = "",
) -> dict[str, Sequence[str]]:
  """Returns {"train": docs, "validation": docs} for a corpus named by `source`.

  Args:
    source: `pystdlib`, `text_files:<glob>` or `tfds:<name>` (see module doc).
    data_dir: TFDS data dir; for tfds:<name> where the prepared data lives (empty:
      TFDS's default search path), for local corpora where they are built (empty:
      ~/.cache/bigmodel_jax/tensorflow_datasets).
    val_percent: share of the corpus held out for validation when the source
      has no validation split of its own (1..99).
    text_key: the text feature of a tfds dataset; empty means its only Text one.
  """
  if not 0 < val_percent < 100:
    raise UsageError(f"data.val_percent={val_percent} must be in 1..99")
  scheme, _, arg = source.partition(":")
  if source == "pystdlib":
    return _load_local(_pystdlib_files(), "pystdlib", data_dir, val_percent, builder_cls=PyStdlib)
  if scheme == "text_files" and arg:
    return _load_local(_glob_files(arg), source, data_dir, val_percent, builder_cls=TextFiles)
  if scheme == "tfds" and arg:
    return _load_tfds(arg, data_dir, val_percent, text_key)
  raise UsageError(f"unknown data source {source!r}; valid: {SOURCES_HELP}")


class TextSequence(Sequence[str]):
  """Documents of one split of a TFDS data source, decoded to str on access. A record that fails
  its checksum is a one-line RunError naming the dataset folder (`where`)."""

  def __init__(self, data_source: Sequence[dict], key: str, where: str = ""):
    self._source = data_source
    self._key = key
    self._where = where

  def _read(self, index: int) -> str:
    try:
      return _to_str(self._source[index][self._key])
    except RuntimeError as e:  # array_record: "Corrupted Riegeli/records file: ... hash mismatch"
      raise RunError(
          f"the dataset files in {self._where} are damaged (record {index}: "
          f"{' '.join(str(e).split())[:160]}); delete that folder and run again to rebuild it "
          "(or prepare the tfds dataset again)"
      ) from None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"document {index} out of range (0..{len(self) - 1})")
    return self._read(index)

  def __iter__(self) -> Iterator[str]:
    # ~50 us a record (mostly decoding); reading in blocks with __getitems__
    # measured no faster, and tfds.testing.mock_data breaks __getitems__.
    for i in range(len(self)):
      yield self._read(i)


def _to_str(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------
# Choosing files
# ---------------------------------------------------------------------------


def _is_test_name(name: str) -> bool:
  stem = os.path.splitext(name)[0]
  return stem in ("test", "tests") or stem.startswith("test_") or stem.endswith(("_test", "_tests"))


def _pystdlib_files(root: str = "") -> tuple[str, list[str]]:
  """Returns (root, sorted relative paths) of the stdlib's own .py files.

  Skipped: site-packages, dist-packages, __pycache__, and tests: any folder or
  file whose name (without .py) is `test` or `tests`, starts with `test_` or
  ends with `_test`/`_tests` (test/, lib2to3/tests/, idlelib/idle_test/, ...).
  """
  root = os.path.realpath(root or sysconfig.get_paths()["stdlib"])
  paths = []
  # os.walk does not follow symlinks to folders (followlinks=False), so it cannot loop.
  for folder, dirs, names in os.walk(root):
    dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not _is_test_name(d)]
    for name in names:
      if name.endswith(".py") and not _is_test_name(name):
        paths.append(os.path.realpath(os.path.join(folder, name)))
  unique = sorted(set(paths))
  _log_dropped("pystdlib", len(paths) - len(unique), "paths to a file already matched")
  return root, [os.path.relpath(p, root) for p in unique]


def _glob_files(pattern: str) -> tuple[str, list[str]]:
  """Returns (real root, sorted real paths relative to it) of the files matching, each once."""
  pattern = os.path.expanduser(pattern)
  matches, aliases, loops = files.match(pattern)
  if not matches:
    raise UsageError(
        f"text_files:{pattern} matches no files; give a glob of "
        "UTF-8 text files, e.g. text_files:'data/**/*.txt'"
    )
  _log_dropped(f"text_files:{pattern}", aliases, "paths to a file already matched (symlinks, '..')")
  if loops:
    logging.info(
        "text_files:%s: did not walk %d routes to folders already walked (symlink loops, '..')",
        pattern,
        loops,
    )
  # The root is the pattern's leading folders without glob magic, so relative
  # paths (and so the train/validation split) do not depend on where it lives.
  parts = []
  for part in pattern.split(os.sep)[:-1]:
    if glob.has_magic(part):
      break
    parts.append(part)
  root = os.path.realpath(os.sep.join(parts) or (os.sep if os.path.isabs(pattern) else "."))
  if len(matches) == 1:
    root = os.path.dirname(matches[0])
  return root, [os.path.relpath(p, root) for p in matches]


def _log_dropped(source: str, count: int, what: str) -> None:
  if count:
    logging.warning("%s: read each file once: dropped %d %s", source, count, what)


def _assign_splits(paths: list[str], val_percent: int) -> dict[str, list[str]]:
  """Splits files by a stable hash of their relative paths (see module doc)."""
  val = files.held_out(paths, val_percent)
  return {
      "train": [p for p, v in zip(paths, val) if not v],
      "validation": [p for p, v in zip(paths, val) if v],
  }


# ---------------------------------------------------------------------------
# Our TFDS builders for local corpora
# ---------------------------------------------------------------------------


class _LocalTextBuilder(local_tfds.LocalBuilder, skip_registration=True):
  """Documents {"text", "path"} from local files, in sorted path order."""

  def __init__(self, *, root: str, paths: list[str], val_percent: int, source: str, **kwargs):
    self._root = root
    self._paths = paths
    self._val_percent = val_percent
    self._source = source
    super().__init__(**kwargs)

  def build_message(self) -> str:
    return (
        f"{self._source}: building the local corpus cache from {len(self._paths)} files under "
        f"{self._root} into {self.data_dir}"
    )

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "path": tfds.features.Text()}
        ),
        disable_shuffling=True,  # keep documents in sorted path order
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    paths, repeated = files.drop_repeated_contents(self._paths, self._root)
    _log_dropped(
        self._source,
        repeated,
        "files whose bytes repeat an earlier file's (the first "
        "is kept, so no text is in both train and validation)",
    )
    if len(paths) == 1:
      # Read once, cut by text for both splits.
      parts = _split_text(self._read(paths[0]) or "", self._val_percent)
      return {
          split: self._generate_examples([paths[0]], text=parts[split])
          for split in ("train", "validation")
      }
    splits = _assign_splits(paths, self._val_percent)
    return {split: self._generate_examples(split_paths) for split, split_paths in splits.items()}

  def _generate_examples(self, paths: list[str], text: str | None = None):
    """Documents of `paths`, each read here; or, with `text`, that text as the one file's."""
    for i, path in enumerate(paths):
      doc = self._read(path) if text is None else text
      if doc:
        yield i, {"text": doc, "path": path}

  def _read(self, path: str) -> str | None:
    with open(os.path.join(self._root, path), "rb") as f:
      data = f.read()
    try:
      return data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise UsageError(
          f"{self._source}: {os.path.join(self._root, path)} is not UTF-8 "
          f"({e.reason} at byte {e.start}); the text must be UTF-8"
      ) from None


class PyStdlib(_LocalTextBuilder, skip_registration=True):
  """The .py files of the Python standard library, tests excluded."""

  name = "pystdlib"

  def _read(self, path: str) -> str | None:
    try:
      return super()._read(path)
    except UsageError:
      logging.info("pystdlib: skipping %s (not UTF-8)", path)
      return None


class TextFiles(_LocalTextBuilder, skip_registration=True):
  """UTF-8 text files chosen by a glob."""

  name = "text_files"


def _split_text(text: str, val_percent: int) -> dict[str, str]:
  """Cuts one text at a line start near (100 - val_percent)% of its length."""
  cut = len(text) * (100 - val_percent) // 100
  line_start = text.rfind("\n", 0, cut) + 1
  if line_start > 0:
    cut = line_start
  return {"train": text[:cut], "validation": text[cut:]}


def _load_local(files, source, data_dir, val_percent, *, builder_cls):
  root, paths = files
  key, total = local_tfds.fingerprint(paths, root=root)
  if total == 0:
    raise UsageError(
        f"{source}: all {len(paths)} matched files are empty; give files with text in them"
    )
  if builder_cls is PyStdlib:
    prefix = f"py{sys.version_info.major}{sys.version_info.minor}"
  else:
    prefix = "files"
  config = tfds.core.BuilderConfig(
      name=f"{prefix}-{key}-val{val_percent}",
      description=f"{source}: {len(paths)} files under {root}",
  )
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  try:
    builder = builder_cls(
        root=root,
        paths=paths,
        val_percent=val_percent,
        source=source,
        config=config,
        data_dir=data_dir,
        file_format="array_record",
    )
  except Exception as e:  # tfds raises protobuf ParseError and others for a damaged cache
    cache = os.path.join(data_dir, builder_cls.name, config.name)
    raise RunError(
        f"{source}: the corpus cache in {cache} is damaged ({type(e).__name__}: "
        f"{' '.join(str(e).split())[:160]}); delete that folder and run again to rebuild it"
    ) from None
  local_tfds.prepare(builder, source)
  return _read_splits(builder, source, {"train": "train", "validation": "validation"}, "text")


# ---------------------------------------------------------------------------
# TFDS catalog datasets
# ---------------------------------------------------------------------------


def _load_tfds(name, data_dir, val_percent, text_key):
  builder = tfds_source.open_prepared(name, data_dir)

  features = builder.info.features
  if text_key:
    if text_key not in features or not isinstance(features[text_key], tfds.features.Text):
      raise UsageError(
          f"data.text_key={text_key!r} is not a text feature of "
          f"tfds:{name}; features: {_describe(features)}"
      )
  else:
    texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    if len(texts) != 1:
      raise UsageError(
          f"tfds:{name} has {len(texts)} text features; set data.text_key to "
          f"one of them; features: {_describe(features)}"
      )
    text_key = texts[0]

  splits = set(builder.info.splits)
  if "train" not in splits:
    raise UsageError(f"tfds:{name} has no train split; its splits: {', '.join(sorted(splits))}")
  for val in ("validation", "test"):
    if val in splits:
      split_names = {"train": "train", "validation": val}
      break
  else:
    keep = 100 - val_percent
    split_names = {"train": f"train[:{keep}%]", "validation": f"train[{keep}%:]"}
  return _read_splits(builder, f"tfds:{name}", split_names, text_key)


def _describe(features) -> str:
  return ", ".join(f"{k} ({type(f).__name__})" for k, f in sorted(features.items()))


def _read_splits(builder, source, split_names, key) -> dict[str, Sequence[str]]:
  out = {}
  for split, tfds_split in split_names.items():
    out[split] = TextSequence(builder.as_data_source(tfds_split), key, str(builder.data_dir))
    try:
      size = f", {builder.info.splits[tfds_split].num_bytes / 2**20:.1f} MiB"
    except (KeyError, ValueError):
      size = ""
    name = split if split == tfds_split else f"{split} ({tfds_split})"
    logging.info(
        "%s: %s: %d documents%s, from %s", source, name, len(out[split]), size, builder.data_dir
    )
  return out
