"""Labelled images in memory: loading by name, per-channel statistics, a user's image.

`load(source)` returns {"train": arrays, "test": arrays}, arrays = {"image": uint8 (N, H, W, C),
"label": int32 (N,)}. Sources:

  digits              scikit-learn's bundled 8x8 handwritten digits (offline default, see below)
  tfds:<name>         a prepared TFDS dataset with an Image feature "image" and a ClassLabel "label"
                      and train/test splits: tfds:mnist, tfds:fashion_mnist, tfds:cifar10, ...
  image_folder:<dir>  your images, one subfolder per class (image_folders.py); "test" is its
                      validation split. Decoded and resized once into a cached TFDS dataset
                      (image_cache.py), then read as the tfds sources are.
  csv:<path>          your images listed in a CSV of (path, class) rows, as image_folder

Why digits offline: a fresh machine with no internet has no MNIST or CIFAR, and a generated
stand-in would say nothing about real accuracy. `sklearn.datasets.load_digits` ships inside
scikit-learn (already a dependency): 1,797 real scanned handwritten digits (UCI "optdigits": 32x32
bitmaps from 43 writers, ink counted over 4x4 blocks, values 0..16), white ink on black like
MNIST. We scale them to 0..255 and split them once, stratified by class (sklearn's
train_test_split with a fixed seed), so every run and machine sees the same test set.

Augmentation lives in data/augment.py (shared by every image experiment); `make_augment` is
re-exported here for older callers.
"""

import dataclasses
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from bigmodel_jax.data import image_cache, image_files, tfds_source
from bigmodel_jax.data.augment import make_augment  # noqa: F401  (re-exported)
from bigmodel_jax.errors import UsageError

SOURCES_HELP = (
    "digits, tfds:<name> (e.g. tfds:mnist, tfds:fashion_mnist, tfds:cifar10), image_folder:<dir>, "
    "csv:<file>"
)


@dataclasses.dataclass
class Info:
  """What a model and a user's image need to know about a dataset."""

  shape: tuple[int, int, int]  # (H, W, C)
  class_names: list[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def check(source: str, data_dir: str = "") -> None:
  """Checks the source cheaply: its name; a tfds dataset is prepared; a local path exists."""
  if image_cache.is_local(source):
    path = os.path.expanduser(source.partition(":")[2])
    if not os.path.exists(path):
      what = (
          "a folder with one subfolder of images per class"
          if source.startswith("image_folder:")
          else "a CSV file of (image path, class) rows"
      )
      raise UsageError(f"data.source={source}: {path} does not exist; give {what}")
  elif source != "digits":
    _tfds_builder(source, data_dir)


class Source:
  """A dataset named by `source`, opened once: its Info, and its splits as arrays on request.

  test_fraction and split_seed are for digits, which has no split of its own; `local` holds the
  settings of a local source, whose cache is built (or reused) here, once.
  """

  def __init__(
      self,
      source: str,
      *,
      data_dir: str = "",
      local: image_cache.Settings | None = None,
      test_fraction: float = 0.2,
      split_seed: int = 0,
  ):
    self.source, self._digits = source, (test_fraction, split_seed)
    if source == "digits":
      self.info = Info((8, 8, 1), [str(i) for i in range(10)])
      return
    if image_cache.is_local(source):
      self._builder = image_cache.prepare(source, local or image_cache.Settings(data_dir=data_dir))
      self._names = {"test": "validation"}
    else:
      self._builder, self._names = _tfds_builder(source, data_dir), {}
    features = self._builder.info.features
    self.info = Info(tuple(features["image"].shape), list(features["label"].names))

  def load(self, split: str) -> dict[str, np.ndarray]:
    """Arrays of split "train" or "test" (see module doc)."""
    if self.source == "digits":
      return load_digits(*self._digits)[split]
    records = self._builder.as_data_source(self._names.get(split, split))
    # One record at a time: ~50 us each (decoding); mock_data breaks __getitems__.
    rows = [records[i] for i in range(len(records))]
    images = np.stack([np.asarray(r["image"], np.uint8) for r in rows])
    labels = np.array([r["label"] for r in rows], np.int32)
    name = self._names.get(split, split)
    logging.info("%s: %s: %d images of %s", self.source, name, len(labels), images.shape[1:])
    return {"image": images, "label": labels}


def info(source: str, data_dir: str = "", local: image_cache.Settings | None = None) -> Info:
  """The dataset's image shape and classes; checks the source. Cheap (no images read) except for
  a local source, whose cache this builds the first time."""
  return Source(source, data_dir=data_dir, local=local).info


def load(source: str, *, splits: tuple[str, ...] = ("train", "test"), **kwargs):
  """{split: arrays} for `splits` of "train", "test"; kwargs as for Source."""
  opened = Source(source, **kwargs)
  return {split: opened.load(split) for split in splits}


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
  labels = digits.target.astype(np.int32)
  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
  )
  return {
      split: {"image": images[np.sort(idx)], "label": labels[np.sort(idx)]}
      for split, idx in (("train", train), ("test", test))
  }


def _tfds_builder(source: str, data_dir: str):
  scheme, _, name = source.partition(":")
  if scheme != "tfds" or not name:
    raise UsageError(f"data.source={source!r} is not valid; valid: {SOURCES_HELP}")
  builder = tfds_source.open_prepared(name, data_dir)
  features = builder.info.features
  kinds = {k: type(f) for k, f in features.items()}
  if kinds.get("image") is not tfds.features.Image or (
      kinds.get("label") is not tfds.features.ClassLabel
  ):
    raise UsageError(
        f"tfds:{name} needs an Image feature 'image' and a ClassLabel 'label'; its "
        f"features: {', '.join(f'{k} ({t.__name__})' for k, t in kinds.items())}"
    )
  if features["image"].shape[0] is None or features["image"].shape[1] is None:
    raise UsageError(
        f"tfds:{name} has images of varying sizes; only fixed-size images are "
        f"supported here (e.g. {SOURCES_HELP})"
    )
  missing = {"train", "test"} - set(builder.info.splits)
  if missing:
    raise UsageError(
        f"tfds:{name} has no {' or '.join(sorted(missing))} split; its splits: "
        f"{', '.join(sorted(builder.info.splits))}"
    )
  return builder


# --- statistics ----------------------------------------------------------------------------------


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
  """Per-channel mean and standard deviation of uint8 images, in 0..1 units."""
  x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
  return x.mean(0).tolist(), np.maximum(x.std(0), 1e-3).tolist()


def label_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of `fraction` of the rows, drawn per class (at least one of each class), so
  that a small fraction still shows every class; the same rows for the same seed."""
  rng = np.random.default_rng(seed)
  keep = []
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    keep.append(rng.permutation(rows)[: max(1, round(fraction * len(rows)))])
  return np.sort(np.concatenate(keep))


# --- a user's image ------------------------------------------------------------------------------


def read_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
  """A PNG/JPEG/... file -> uint8 (H, W, C) of the dataset's size and channels, read as the
  training images were (image_files.decode); UsageError if it is missing or unreadable."""
  h, w, c = shape
  try:
    return image_files.decode(path, (h, w), c)
  except FileNotFoundError:
    raise UsageError(
        f"predict.input={path} does not exist; give an image file ({image_files.KINDS}), a "
        "folder of them or a glob"
    ) from None
  except image_files.TooLarge as e:
    raise UsageError(f"predict.input={path} is {e}") from None
  except image_files.BadImage as e:
    raise UsageError(
        f"predict.input={path} is not an image that pillow can read ({e}); give a "
        f"{image_files.KINDS} file"
    ) from None


def border_mean(image: np.ndarray) -> float:
  """Mean of the outermost pixels in 0..1: tells light from dark backgrounds."""
  x = image.astype(np.float64) / 255.0
  border = np.concatenate([x[0].ravel(), x[-1].ravel(), x[:, 0].ravel(), x[:, -1].ravel()])
  return float(border.mean())
