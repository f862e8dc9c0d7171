"""Which image files a local source names, their classes and their train/validation split.

  image_folder:<dir>  one subfolder per class, named after it; images at any depth below a class
                      folder belong to that class. A `validation/` (or `val/`) subfolder holding
                      (some of) the same class folders is the validation split; then the training
                      classes are the other subfolders, or those of `train/` when there is one.
                      `train/` beside `test/` (and no validation/ or val/): test/ is validation.
  csv:<path>          a CSV with a header row and one row per image: data.image_column (the file's
                      path, relative to the CSV's folder unless absolute) and data.label_column
                      (its class name)

Class names are the folder names (or labels) sorted; labels that are all integers sort as numbers.
Files are known by their real path, so a file reached twice (a symlink, a repeated CSV row) is
listed once, under the first class in class order. Without a validation folder, a file goes to
validation when crc32(its real path relative to the real root) % 100 < data.val_percent, per class,
so the split is stable as files come and go; a class the hash leaves with no file on one side
gives that side the file with the smallest (or largest) hash, which needs two files per class.
"""

import dataclasses
import os

from absl import logging

from bigmodel_jax.data import files, image_files, tables
from bigmodel_jax.errors import UsageError

VALIDATION_FOLDERS = ("validation", "val")


@dataclasses.dataclass
class Listing:
  root: str  # real folder that the shown paths are relative to
  class_names: list[str]
  splits: dict[str, list[tuple[str, int]]]  # "train"/"validation" -> [(real path, label)]
  validation: str  # where the validation split came from, for the log


def list_images(
    source: str,
    *,
    val_percent: int,
    bad: image_files.BadImages,
    image_column: str = "image",
    label_column: str = "label",
) -> Listing:
  """The files of `image_folder:<dir>` or `csv:<path>` (see module doc); errors are one line."""
  scheme, _, path = source.partition(":")
  path = os.path.expanduser(path)
  if scheme == "image_folder":
    return _folder(source, path, val_percent)
  return _csv(source, path, val_percent, bad, image_column, label_column)


# --- image_folder:<dir> --------------------------------------------------------------------------


def _subfolders(folder: str) -> list[str]:
  return [name for name, is_dir in _entries(folder) if is_dir]


def _entries(folder: str) -> list[tuple[str, bool]]:
  """Sorted [(name, is a folder or a link to one)] of the names not starting with "."."""
  out = []
  with os.scandir(folder) as it:
    for e in it:
      if not e.name.startswith("."):
        try:
          out.append((e.name, e.is_dir()))
        except OSError:  # e.g. a link that loops onto itself: not a folder
          out.append((e.name, False))
  return sorted(out)


def _folder(source: str, path: str, val_percent: int) -> Listing:
  if not os.path.isdir(path):
    raise UsageError(
        f"data.source={source}: {path} is not a folder; give a folder with one subfolder of "
        "images per class (e.g. pets/cat/1.jpg, pets/dog/2.png)"
    )
  root = os.path.realpath(path)
  subfolders = _subfolders(root)
  val_names = [v for v in VALIDATION_FOLDERS if v in subfolders]
  if len(val_names) > 1:
    raise UsageError(
        f"data.source={source} has both validation/ and val/; keep one as the validation split"
    )
  if not val_names and {"train", "test"} <= set(subfolders):
    val_names = ["test"]  # train/ and test/ (as many downloads come): never classes "train", "test"
  train_root = root
  if val_names and "train" in subfolders:
    train_root = os.path.join(root, "train")
  names = [n for n in _subfolders(train_root) if n not in val_names]
  if len(names) < 2:
    loose = len(image_files.find(train_root)[0]) if not names else 0
    raise UsageError(
        f"data.source={source}: {train_root} has {len(names)} class folder(s)"
        f"{f' ({names[0]})' if names else ''}"
        f"{f' and {loose} image(s) not in a class folder' if loose else ''}; a classifier needs "
        "at least 2: put each class's images in a subfolder named after it (e.g. cat/1.jpg)"
    )
  stray = [n for n, is_dir in _entries(train_root) if not is_dir and image_files.is_image_name(n)]
  if stray:
    logging.warning(
        "%s: %d images directly in %s (e.g. %s) belong to no class folder and are not used",
        source,
        len(stray),
        train_root,
        stray[0],
    )
  train, seen = _class_files(source, train_root, names, names, set())
  if not val_names:
    return Listing(
        root, names, _hash_split(source, root, train, val_percent, names), "a hash of each path"
    )
  val_root = os.path.join(root, val_names[0])
  val_classes = _subfolders(val_root)
  unknown = [n for n in val_classes if n not in names]
  if unknown or not val_classes:
    raise UsageError(
        f"data.source={source}: {val_root} must hold class folders of the training classes "
        f"({', '.join(names)}); it has {', '.join(val_classes) or 'none'}"
    )
  val, _ = _class_files(source, val_root, val_classes, names, seen)
  return Listing(root, names, {"train": train, "validation": val}, val_root)


def _class_files(source, folder, classes, names, seen) -> tuple[list[tuple[str, int]], set]:
  """[(real path, label)] of the images in each class folder, skipping files in `seen`."""
  out, repeated, others = [], 0, 0
  for name in classes:
    found, passed = image_files.find(os.path.join(folder, name))
    others += passed
    if not found:
      raise UsageError(
          f"data.source={source}: class folder {os.path.join(folder, name)} has no "
          f"{image_files.KINDS} images; add some or remove the folder"
      )
    for path in found:
      if path in seen:
        repeated += 1
      else:
        seen.add(path)
        out.append((path, names.index(name)))
  if repeated:
    logging.warning(
        "%s: read each file once: dropped %d paths to a file already listed (symlinks)",
        source,
        repeated,
    )
  if others:
    logging.info(
        "%s: passed over %d files in %s that are not %s images by extension",
        source,
        others,
        folder,
        image_files.KINDS,
    )
  return out, seen


# --- csv:<path> ----------------------------------------------------------------------------------


def _csv(source, path, val_percent, bad, image_column, label_column) -> Listing:
  table = tables.read_csv(path, label_column=label_column)
  if image_column not in table.columns:
    raise UsageError(
        f"data.image_column={image_column!r} is not a column of {path}; set "
        f"--config.data.image_column to one of: {', '.join(table.columns)}"
    )
  labels = sorted(set(table.labels.tolist()))
  if all(v.lstrip("-").isdigit() for v in labels):
    labels.sort(key=int)
  if len(labels) < 2:
    raise UsageError(
        f"data.source={source}: column {label_column!r} has {len(labels)} class(es); a "
        "classifier needs at least 2"
    )
  folder = os.path.dirname(os.path.realpath(path))
  items, seen, repeated = [], set(), 0
  for cell, label, line in zip(table.columns[image_column], table.labels, table.lines):
    if not cell:
      raise UsageError(f"data.source={source} line {line} has no image path ({image_column!r})")
    real = os.path.realpath(os.path.join(folder, os.path.expanduser(cell)))
    if not os.path.isfile(real):
      bad(real, "does not exist", shown=f"line {line}: {cell}")
    elif real in seen:
      repeated += 1
    else:
      seen.add(real)
      items.append((real, labels.index(label)))
  if repeated:
    logging.warning("%s: dropped %d rows naming a file already listed", source, repeated)
  if not items:
    raise UsageError(f"data.source={source}: none of the files it names exists")
  return Listing(
      folder, labels, _hash_split(source, folder, items, val_percent, labels), "a hash of each path"
  )


# --- the split -----------------------------------------------------------------------------------


def _hash_split(source, root, items, val_percent, names) -> dict[str, list[tuple[str, int]]]:
  """Per class, by a stable hash of the real path relative to `root` (see module doc)."""
  by_class: dict[int, list[str]] = {}
  for path, label in items:
    by_class.setdefault(label, []).append(path)
  splits = {"train": [], "validation": []}
  for label, paths in sorted(by_class.items()):
    if len(paths) < 2:
      raise UsageError(
          f"data.source={source}: class {names[label]!r} has 1 image ({paths[0]}); a train/"
          "validation split needs at least 2 per class: add images, or give a validation/ folder"
      )
    val = files.held_out([os.path.relpath(p, root) for p in paths], val_percent)
    splits["train"] += [(p, label) for p, v in zip(paths, val) if not v]
    splits["validation"] += [(p, label) for p, v in zip(paths, val) if v]
  return {k: sorted(v) for k, v in splits.items()}
