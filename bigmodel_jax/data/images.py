"""Labelled images in memory: loading by name, per-channel statistics, augmentation, user images.

`load(source)` returns {"train": arrays, "test": arrays}, arrays = {"image": uint8 (N, H, W, C),
"label": int32 (N,)}. Sources:

  digits             scikit-learn's bundled 8x8 handwritten digits (offline default, see below)
  tfds:<name>        a prepared TFDS dataset with an Image feature "image" and a ClassLabel "label"
                     and train/test splits: tfds:mnist, tfds:fashion_mnist, tfds:cifar10, ...

Why digits offline: a fresh machine with no internet has no MNIST or CIFAR, and a generated
stand-in would say nothing about real accuracy. `sklearn.datasets.load_digits` ships inside
scikit-learn (already a dependency): 1,797 real scanned handwritten digits (UCI "optdigits": 32x32
bitmaps from 43 writers, ink counted over 4x4 blocks, values 0..16), white ink on black like
MNIST. We scale them to 0..255 and split them once, stratified by class (sklearn's
train_test_split with a fixed seed), so every run and machine sees the same test set.

Augmentation (`make_augment`) runs in the grain pipeline on uint8 training batches only, with the
pipeline's per-batch rng (deterministic for a seed): random crop from a zero-padded image,
horizontal flip (off for digits: a flipped 2 is no digit), and cutout (a square set to the mean
pixel, after DeVries & Taylor 2017).
"""

from collections.abc import Callable
import dataclasses
import warnings

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from bigmodel_jax.data import tfds_source
from bigmodel_jax.errors import UsageError

SOURCES_HELP = "digits, tfds:<name> (e.g. tfds:mnist, tfds:fashion_mnist, tfds:cifar10)"


@dataclasses.dataclass
class Info:
  """What a model and a user's image need to know about a dataset."""

  shape: tuple[int, int, int]  # (H, W, C)
  class_names: list[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def info(source: str, data_dir: str = "") -> Info:
  """The dataset's image shape and classes, cheaply (no images read); checks the source."""
  if source == "digits":
    return Info((8, 8, 1), [str(i) for i in range(10)])
  builder = _tfds_builder(source, data_dir)
  features = builder.info.features
  return Info(tuple(features["image"].shape), list(features["label"].names))


def load(
    source: str,
    *,
    data_dir: str = "",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    splits: tuple[str, ...] = ("train", "test"),
) -> dict[str, dict[str, np.ndarray]]:
  """{split: arrays} for `splits` of "train", "test" (see module doc); test_fraction and
  split_seed are for digits, which has no split of its own."""
  if source == "digits":
    return {k: v for k, v in load_digits(test_fraction, split_seed).items() if k in splits}
  builder = _tfds_builder(source, data_dir)
  out = {}
  for split in splits:
    records = builder.as_data_source(split)
    # One record at a time: ~50 us each (decoding); mock_data breaks __getitems__.
    images = np.stack([np.asarray(records[i]["image"], np.uint8) for i in range(len(records))])
    labels = np.array([records[i]["label"] for i in range(len(records))], np.int32)
    out[split] = {"image": images, "label": labels}
    logging.info("%s: %s: %d images of %s", source, split, len(labels), images.shape[1:])
  return out


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


# --- statistics and augmentation -----------------------------------------------------------------


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
  """Per-channel mean and standard deviation of uint8 images, in 0..1 units."""
  x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
  return x.mean(0).tolist(), np.maximum(x.std(0), 1e-3).tolist()


def make_augment(
    *, crop_padding: int = 0, flip: bool = False, cutout: int = 0, fill: tuple[int, ...] = (0,)
) -> Callable | None:
  """A grain batch transform fn(batch, rng) -> batch over uint8 (B, H, W, C) images, or None."""
  if not (crop_padding or flip or cutout):
    return None
  fill = np.asarray(fill, np.uint8)

  def augment(batch, rng: np.random.Generator):
    x = batch["image"]
    b, h, w, _ = x.shape
    if crop_padding:
      p = crop_padding
      padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
      dy, dx = rng.integers(0, 2 * p + 1, size=(2, b))
      rows = (dy[:, None] + np.arange(h))[:, :, None]  # (B, H, 1)
      cols = (dx[:, None] + np.arange(w))[:, None, :]  # (B, 1, W)
      x = padded[np.arange(b)[:, None, None], rows, cols]
    if flip:
      flipped = rng.random(b) < 0.5
      x = np.where(flipped[:, None, None, None], x[:, :, ::-1], x)
    if cutout:
      # A square centred anywhere on the image (so it may hang over an edge), as in the paper.
      y0 = rng.integers(0, h, size=b) - cutout // 2
      x0 = rng.integers(0, w, size=b) - cutout // 2
      ys, xs = np.arange(h)[None], np.arange(w)[None]
      inside_y = (ys >= y0[:, None]) & (ys < y0[:, None] + cutout)  # (B, H)
      inside_x = (xs >= x0[:, None]) & (xs < x0[:, None] + cutout)  # (B, W)
      hole = inside_y[:, :, None] & inside_x[:, None, :]  # (B, H, W): a cutout x cutout square
      x = np.where(hole[..., None], fill, x)
    return {**batch, "image": np.ascontiguousarray(x)}

  return augment


# --- a user's image ------------------------------------------------------------------------------


def read_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
  """A PNG/JPEG/... file -> uint8 (H, W, C) of the dataset's size and channels (UsageError if the
  file is missing or unreadable). Downsizing averages areas, as the digits were made."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  h, w, c = shape
  try:
    with warnings.catch_warnings():
      # A file that claims more pixels than pillow's limit is refused before it is decoded.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        img = img.convert("L" if c == 1 else "RGB")
        resample = (
            Image.Resampling.BOX
            if img.width >= w and img.height >= h
            else (Image.Resampling.BILINEAR)
        )
        img = img.resize((w, h), resample)
        x = np.asarray(img, np.uint8)
  except FileNotFoundError:
    raise UsageError(
        f"predict.input={path} does not exist; give an image file (PNG, JPEG, ...)"
    ) from None
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise UsageError(
        f"predict.input={path} is too large to decode safely ({e}); give an image "
        f"under {Image.MAX_IMAGE_PIXELS:,} pixels"
    ) from None
  except (UnidentifiedImageError, OSError, ValueError) as e:
    reason = " ".join(str(e).split())[:200]
    raise UsageError(
        f"predict.input={path} is not an image that pillow can read ({reason}); "
        "give a PNG or JPEG file"
    ) from None
  return x.reshape(h, w, c)


def border_mean(image: np.ndarray) -> float:
  """Mean of the outermost pixels in 0..1: tells light from dark backgrounds."""
  x = image.astype(np.float64) / 255.0
  border = np.concatenate([x[0].ravel(), x[-1].ravel(), x[:, 0].ravel(), x[:, -1].ravel()])
  return float(border.mean())
