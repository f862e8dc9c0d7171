"""The detect experiment's offline data: canvases of digit scans and shapes, with boxes, generated.

Each canvas is an RGB square (data.image_size pixels a side) with a textured background (smooth
noise plus a random stripe pattern, all dark to mid grey-ish colours) and 1..data.max_objects
objects painted on it, each scaled to 12..40% of the canvas side (each axis stretched
independently by up to 20%), in a random bright colour, possibly overlapping (later objects are
painted over earlier ones; two objects' boxes may share up to 30% of the smaller one, so every
object stays mostly visible):

  classes 0..9   the real handwritten digit scans of scikit-learn's digits (8x8, upscaled
                 bilinearly and used as the ink's opacity); train canvases draw from the digits'
                 train split, validation canvases from its test split (images.load_digits), so the
                 scans of validation are never seen in training
  circle, square, triangle   filled shapes drawn with pillow (ellipses and rectangles, since
                 the axes are stretched)

A box is the tight box around the object's visible-when-alone pixels (opacity > 0.25), in pixels
(x0, y0, x1, y1), as COCO and our detector use. Everything follows from data.seed: the same seed
gives byte-identical canvases on every machine. The arrays are cached, keyed by every setting, in
`<data.tfds_data_dir or ~/.cache/bigmodel_jax/tensorflow_datasets>/detect_canvases/<key>.npz`, and
reused by later runs (generating the default 6,000 canvases takes about 5 s).
"""

import hashlib
import os

from absl import logging
import numpy as np
from PIL import Image, ImageDraw

from bigmodel_jax.data import images, local_tfds

CLASS_NAMES = [str(i) for i in range(10)] + ["circle", "square", "triangle"]
SPLITS = ("train", "validation")
VERSION = 1  # bump when generation changes: it is part of the cache key


def load(
    *, size: int, max_objects: int, train: int, validation: int, seed: int, data_dir: str = ""
) -> dict[str, dict[str, np.ndarray]]:
  """{"train": arrays, "validation": arrays}, arrays = {"image": uint8 (N, S, S, 3), "boxes":
  float32 (N, max_objects, 4) pixel x0 y0 x1 y1, "labels": int32 (N, max_objects), -1 = none}."""
  settings = (VERSION, size, max_objects, train, validation, seed)
  key = hashlib.sha256(repr(settings).encode()).hexdigest()[:16]
  folder = os.path.join(
      os.path.expanduser(data_dir or local_tfds.DEFAULT_DATA_DIR), "detect_canvases"
  )
  path = os.path.join(folder, f"{key}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      out = {s: {k: f[f"{s}/{k}"] for k in ("image", "boxes", "labels")} for s in SPLITS}
    logging.info("canvases: reusing %s", path)
    return out
  digits = images.load_digits()
  out = {}
  for i, (split, n) in enumerate((("train", train), ("validation", validation))):
    scans = digits["train" if split == "train" else "test"]
    rng = np.random.default_rng([seed, i])
    out[split] = generate(n, size, max_objects, scans, rng)
  os.makedirs(folder, exist_ok=True)
  partial = f"{path}.{os.getpid()}.partial.npz"
  np.savez(partial, **{f"{s}/{k}": v for s, a in out.items() for k, v in a.items()})
  os.replace(partial, path)  # a crash leaves no half-written cache that a later run would trust
  logging.info(
      "canvases: generated %d train / %d validation canvases into %s", train, validation, path
  )
  return out


def generate(n: int, size: int, max_objects: int, scans: dict, rng: np.random.Generator) -> dict:
  """n canvases (see module doc) drawn with `rng`, the digits from `scans` ({"image", "label"})."""
  by_class = [scans["image"][scans["label"] == c, :, :, 0] for c in range(10)]
  image = np.empty((n, size, size, 3), np.uint8)
  boxes = np.zeros((n, max_objects, 4), np.float32)
  labels = np.full((n, max_objects), -1, np.int32)
  for i in range(n):
    canvas = _background(size, rng)
    placed = []
    for _ in range(rng.integers(1, max_objects + 1)):
      obj = _place(size, placed, by_class, rng)
      if obj is None:
        continue
      label, (x0, y0), alpha, box = obj
      colour = rng.integers(150, 256, 3).astype(np.float32)
      h, w = alpha.shape
      region = canvas[y0 : y0 + h, x0 : x0 + w]
      region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
      boxes[i, len(placed)] = box
      labels[i, len(placed)] = label
      placed.append(box)
    image[i] = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
  return {"image": image, "boxes": boxes, "labels": labels}


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
  """float32 (S, S, 3) in 0..120: smooth colour noise plus a faint random stripe pattern."""
  coarse = rng.uniform(0, 80, (4, 4, 3)).astype(np.uint8)
  smooth = np.asarray(
      Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR), np.float32
  )
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  angle, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
  stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
  grain = rng.normal(0, 6, (size, size, 3))
  return smooth + rng.uniform(5, 25) * (stripes[..., None] + 1) + grain


def _place(size, placed, by_class, rng):
  """(label, (x0, y0), opacity (h, w) float32, box) of a new object covering at most 30% of any
  placed box (or of itself), or None after 20 tries."""
  for _ in range(20):
    label = int(rng.integers(len(CLASS_NAMES)))
    side = rng.uniform(0.12, 0.4) * size
    w, h = (max(4, int(round(side * rng.uniform(0.8, 1.2)))) for _ in range(2))
    alpha = _opacity(label, w, h, by_class, rng)
    ys, xs = np.nonzero(alpha > 0.25)
    x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    box = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], np.float32)
    if all(_overlap(box, other) <= 0.3 for other in placed):
      return label, (x0, y0), alpha, box
  return None


def _opacity(label: int, w: int, h: int, by_class, rng) -> np.ndarray:
  """float32 (h, w) in 0..1: a digit scan upscaled, or a shape drawn at 4x and box-downsampled."""
  if label < 10:
    scans = by_class[label]
    scan = Image.fromarray(scans[rng.integers(len(scans))])
    return np.asarray(scan.resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255
  big = Image.new("L", (4 * w, 4 * h), 0)
  pen = ImageDraw.Draw(big)
  shape = CLASS_NAMES[label]
  if shape == "circle":
    pen.ellipse([0, 0, 4 * w - 1, 4 * h - 1], fill=255)
  elif shape == "square":
    pen.rectangle([0, 0, 4 * w - 1, 4 * h - 1], fill=255)
  else:
    pen.polygon([(2 * w, 0), (4 * w - 1, 4 * h - 1), (0, 4 * h - 1)], fill=255)
  return np.asarray(big.resize((w, h), Image.Resampling.BOX), np.float32) / 255


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection of two x0 y0 x1 y1 boxes over the smaller one's area."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
  return float(w * h / smaller)
