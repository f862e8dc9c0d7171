"""Small image folders for tests, drawn with pillow (three classes of simple shapes), and an
imagecls config that trains on one."""

import os

import numpy as np
from PIL import Image, ImageDraw

from bigmodel_jax import config as config_lib

CLASSES = ("circle", "square", "stripes")
FORMATS = ("png", "jpg", "bmp", "webp")


def draw(kind: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
  """A light shape of a random colour on a dark background, off-centre by up to 10%."""
  w, h = size
  img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 60, 3)))
  colour = tuple(int(v) for v in rng.integers(120, 256, 3))
  pen = ImageDraw.Draw(img)
  s = min(w, h)
  r = rng.uniform(0.25, 0.4) * s
  cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
  if kind == "circle":
    pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
  elif kind == "square":
    pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
  else:
    for x in range(0, w, max(2, s // 6)):
      pen.rectangle([x, 0, x + max(1, s // 12), h], fill=colour)
  return img


def write_shapes(root, per_class: int, seed: int = 0, classes=CLASSES) -> list[str]:
  """`per_class` images per class folder under `root`, 16..79 pixels a side, cycling through PNG,
  JPEG, BMP and WebP; every fifth in a nested subfolder. Returns the paths written."""
  rng = np.random.default_rng(seed)
  paths = []
  for kind in classes:
    for i in range(per_class):
      folder = os.path.join(root, kind, "more" if i % 5 == 4 else "")
      os.makedirs(folder, exist_ok=True)
      size = (int(rng.integers(16, 80)), int(rng.integers(16, 80)))
      path = os.path.join(folder, f"{kind}{i:04d}.{FORMATS[i % len(FORMATS)]}")
      draw(kind, rng, size).save(path)
      paths.append(path)
  return paths


def image_config(source: str, cache, **overrides):
  """imagecls:tiny on `source` at 16x16, cached in `cache`; overrides as name__sub=value."""
  c = config_lib.load_experiment("imagecls:tiny")
  values = {"data.source": source, "data.image_size": 16, "data.tfds_data_dir": str(cache)}
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  config_lib.set_values(c, values, "test")
  config_lib.validate(c)
  return c
