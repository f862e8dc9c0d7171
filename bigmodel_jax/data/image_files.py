"""Image files read with pillow: finding them, decoding each to one size, and bad files.

`find(folder)` is every JPEG, PNG, BMP or WebP file (by extension, any case) at any depth below a
folder, each once by its real path: `files.match` walks it, so a symlink loop neither repeats nor
hangs it. Hidden files and folders (".name") are passed over, and so are other files (notes,
Thumbs.db), counted for a log line.

`decode(path, (h, w), channels)` -> uint8 (h, w, channels). Every image is read the same way, for
training and for prediction: EXIF orientation applied (a phone's portrait JPEG stands upright),
converted to grayscale ("L") or RGB (pillow's conversion: alpha dropped, palettes expanded), and
resized to (h, w) without keeping the aspect ratio (nothing is cut off). Downsizing averages areas
(Image.BOX, as the digits were made); upsizing is bilinear. A JPEG much larger than (h, w) is
decoded at a reduced scale first (pillow's draft mode, DCT scaling; measured on a noisy 4000x3000
JPEG to 32x32: 131 -> 54 ms, pixels within 1 of a full decode). A file that claims more pixels
than pillow's limit is refused before it is decoded (a decompression bomb).

`decoded(paths, ...)` decodes in threads (pillow releases the GIL while decoding and resizing), in
order, a few chunks ahead of the caller, so memory stays bounded however many files there are and
the caller's work (the model, writing) overlaps the decoding. `BadImages` applies
data.on_bad_image to each file that fails: stop with a one-line error naming it, or skip it and
count.
"""

import collections
from collections.abc import Iterable, Iterator
import glob
import itertools
import os
import warnings

from absl import logging
import numpy as np

from bigmodel_jax.data import files
from bigmodel_jax.errors import UsageError

EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
KINDS = "JPEG, PNG, BMP or WebP"
ON_BAD_IMAGE = ("stop", "skip")
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


class BadImage(Exception):
  """A file pillow cannot decode, or one too large to decode safely; str() is the reason."""


class TooLarge(BadImage):
  """A file that claims more pixels than pillow's limit (a decompression bomb), not decoded."""


def is_image_name(path: str) -> bool:
  return path.lower().endswith(EXTENSIONS)


def find(folder: str) -> tuple[list[str], int]:
  """(sorted real paths of the image files at any depth below `folder`, each once; how many other
  files were passed over)."""
  found = files.match(os.path.join(glob.escape(folder), "**")).paths
  images = [p for p in found if is_image_name(p)]
  return images, len(found) - len(images)


def decode(path: str, size: tuple[int, int], channels: int) -> np.ndarray:
  """uint8 (h, w, channels) of the image at `path` (see module doc). Raises FileNotFoundError, or
  BadImage with the reason pillow gave."""
  from PIL import Image, ImageOps, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  h, w = size
  try:
    with warnings.catch_warnings():
      # A file that claims more pixels than pillow's limit is refused before it is decoded.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        img.draft("L" if channels == 1 else "RGB", (w, h))  # JPEG only: decode at a smaller scale
        img = ImageOps.exif_transpose(img).convert("L" if channels == 1 else "RGB")
        downsizing = img.width >= w and img.height >= h
        img = img.resize((w, h), Image.Resampling.BOX if downsizing else Image.Resampling.BILINEAR)
        x = np.asarray(img, np.uint8)
  except FileNotFoundError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise TooLarge(
        f"too large to decode safely: {e}; images must be under {Image.MAX_IMAGE_PIXELS:,} pixels"
    ) from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    reason = str(e).replace(f" '{path}'", "")  # pillow names the file, which the message does
    raise BadImage(" ".join(reason.split())[:200] or type(e).__name__) from None
  return x.reshape(h, w, channels)


def is_grayscale(path: str) -> bool | None:
  """Whether the file's pixels are gray (from its header alone); None if pillow cannot open it."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        return img.mode in _GRAY_MODES
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
    return None


def decoded(
    paths: Iterable[str], size: tuple[int, int], channels: int, chunk: int = 16
) -> Iterator[tuple[str, np.ndarray | None, str]]:
  """(path, image, "") or (path, None, reason) for each path, in order. Decoded in threads, at most
  two tasks a thread ahead of the caller, `chunk` files a task: predicting 2,100 small images on
  2 busy cores ran at ~1,300 images/s with a task per file and ~2,300 with chunks of 16 (one thread
  or two: the same there)."""
  from concurrent import futures  # pylint: disable=g-import-not-at-top

  def some(group: list[str]) -> list[tuple[str, np.ndarray | None, str]]:
    out = []
    for path in group:
      try:
        out.append((path, decode(path, size, channels), ""))
      except FileNotFoundError:
        out.append((path, None, "does not exist"))
      except BadImage as e:
        out.append((path, None, str(e)))
    return out

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  workers = min(8, cores or 1)
  remaining = iter(paths)
  groups = iter(lambda: list(itertools.islice(remaining, chunk)), [])
  with futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque(pool.submit(some, g) for g in itertools.islice(groups, 2 * workers))
    while pending:
      done = pending.popleft().result()
      for group in itertools.islice(groups, 1):
        pending.append(pool.submit(some, group))
      yield from done


class BadImages:
  """data.on_bad_image for one source of files: `stop` raises on the first bad file, `skip`
  counts them for `report()`. `where` names the source in messages (e.g. "predict.input")."""

  def __init__(self, policy: str, where: str):
    self.policy, self.where = policy, where
    self.skipped: list[tuple[str, str]] = []

  def __call__(self, path: str, reason: str, shown: str = "") -> None:
    shown = shown or path
    if self.policy == "stop":
      what = reason if reason == "does not exist" else f"is not a readable image ({reason})"
      raise UsageError(
          f"{self.where}: {shown} {what}; fix or remove it, or pass "
          "--config.data.on_bad_image=skip to skip such files with a warning"
      )
    self.skipped.append((shown, reason))

  def report(self) -> None:
    if self.skipped:
      shown, reason = self.skipped[0]
      logging.warning(
          "%s: skipped %d unreadable image file(s) (data.on_bad_image=skip), e.g. %s: %s",
          self.where,
          len(self.skipped),
          shown,
          reason,
      )
