"""Image augmentations by name, on the host: the one place every image experiment takes them from.

An op is fn(x uint8 (B, H, W, C), rng: np.random.Generator, settings) -> uint8 (B, H, W, C); a
pipeline (`make`) applies named ops in order inside the grain pipeline, with grain's per-batch
rng, so a stream is deterministic for a seed and checkpoints like any grain iterator.

  crop          random crop from an image zero-padded by `crop_padding` pixels (a shift)
  flip          horizontal flip of half the images (not for digits: a flipped 2 is no digit)
  cutout        a `cutout`-pixel square set to the mean pixel, centred anywhere (DeVries & Taylor
                2017)
  resized_crop  a random box of `min_area`..1 of the image (aspect 3/4..4/3) resized back to the
                full size (bilinear): SimCLR's main augmentation (Chen et al. 2020, Table 3)
  jitter        brightness and contrast scaled by 1 +- `jitter` (SimCLR's colour distortion,
                without hue and saturation, which grayscale digits lack)

imagecls builds crop/flip/cutout from its fields (`make_augment`); ssl names its ops in
`augment.ops` (an unknown name is a one-line UsageError listing these).
"""

from collections.abc import Callable, Sequence
import dataclasses

import numpy as np

from bigmodel_jax.errors import UsageError, did_you_mean


@dataclasses.dataclass(frozen=True)
class Settings:
  crop_padding: int = 0
  cutout: int = 0
  min_area: float = 0.3
  jitter: float = 0.4
  fill: tuple[int, ...] = (0,)  # cutout's fill: the mean pixel, per channel


def _crop(x, rng, s: Settings):
  b, h, w, _ = x.shape
  p = s.crop_padding
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  dy, dx = rng.integers(0, 2 * p + 1, size=(2, b))
  rows = (dy[:, None] + np.arange(h))[:, :, None]  # (B, H, 1)
  cols = (dx[:, None] + np.arange(w))[:, None, :]  # (B, 1, W)
  return padded[np.arange(b)[:, None, None], rows, cols]


def _flip(x, rng, s: Settings):
  flipped = rng.random(x.shape[0]) < 0.5
  return np.where(flipped[:, None, None, None], x[:, :, ::-1], x)


def _cutout(x, rng, s: Settings):
  b, h, w, _ = x.shape
  size = s.cutout
  # A square centred anywhere on the image (so it may hang over an edge), as in the paper.
  y0 = rng.integers(0, h, size=b) - size // 2
  x0 = rng.integers(0, w, size=b) - size // 2
  ys, xs = np.arange(h)[None], np.arange(w)[None]
  inside_y = (ys >= y0[:, None]) & (ys < y0[:, None] + size)  # (B, H)
  inside_x = (xs >= x0[:, None]) & (xs < x0[:, None] + size)  # (B, W)
  hole = inside_y[:, :, None] & inside_x[:, None, :]  # (B, H, W): a size x size square
  return np.where(hole[..., None], np.asarray(s.fill, np.uint8), x)


def _resized_crop(x, rng, s: Settings):
  b, h, w, _ = x.shape
  area = rng.uniform(s.min_area, 1.0, b)
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), b))
  ch = np.clip(np.sqrt(area / aspect) * h, 1, h)  # (B,) box height in pixels
  cw = np.clip(np.sqrt(area * aspect) * w, 1, w)
  y0, x0 = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
  # Output pixel centres mapped into the box, then bilinear interpolation from the source.
  ys = y0[:, None] + (np.arange(h)[None] + 0.5) * (ch / h)[:, None] - 0.5  # (B, H)
  xs = x0[:, None] + (np.arange(w)[None] + 0.5) * (cw / w)[:, None] - 0.5  # (B, W)
  ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
  y_lo, x_lo = np.floor(ys).astype(int), np.floor(xs).astype(int)
  y_hi, x_hi = np.minimum(y_lo + 1, h - 1), np.minimum(x_lo + 1, w - 1)
  fy, fx = (ys - y_lo)[:, :, None, None], (xs - x_lo)[:, None, :, None]
  idx = np.arange(b)[:, None, None]
  f = x.astype(np.float32)
  at = lambda yy, xx: f[idx, yy[:, :, None], xx[:, None, :]]  # (B, H, W, C)
  top = at(y_lo, x_lo) * (1 - fx) + at(y_lo, x_hi) * fx
  bottom = at(y_hi, x_lo) * (1 - fx) + at(y_hi, x_hi) * fx
  return np.clip(np.round(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)


def _jitter(x, rng, s: Settings):
  b = x.shape[0]
  brightness = rng.uniform(1 - s.jitter, 1 + s.jitter, b)[:, None, None, None]
  contrast = rng.uniform(1 - s.jitter, 1 + s.jitter, b)[:, None, None, None]
  f = x.astype(np.float32) * brightness
  mean = f.mean(axis=(1, 2, 3), keepdims=True)
  return np.clip(np.round((f - mean) * contrast + mean), 0, 255).astype(np.uint8)


OPS: dict[str, Callable] = {
    "crop": _crop,
    "flip": _flip,
    "cutout": _cutout,
    "resized_crop": _resized_crop,
    "jitter": _jitter,
}


def check(names: Sequence[str], settings: Settings, key: str = "augment.ops") -> None:
  """One-line UsageErrors for an unknown op name or a setting out of range."""
  for name in names:
    if name not in OPS:
      raise UsageError(
          f"{key}: unknown augmentation {name!r}{did_you_mean(name, list(OPS))}; "
          f"valid: {', '.join(OPS)}"
      )
  s = settings
  if s.crop_padding < 0 or s.cutout < 0 or not 0 < s.min_area <= 1 or not 0 <= s.jitter < 1:
    raise UsageError(
        f"augment.crop_padding={s.crop_padding} and augment.cutout={s.cutout} must be >= 0, "
        f"augment.min_area={s.min_area} in (0, 1] and augment.jitter={s.jitter} in [0, 1)"
    )


def apply(names: Sequence[str], x: np.ndarray, rng: np.random.Generator, s: Settings):
  """The named ops in order on uint8 (B, H, W, C) images."""
  for name in names:
    x = OPS[name](x, rng, s)
  return np.ascontiguousarray(x)


def make(names: Sequence[str], settings: Settings) -> Callable | None:
  """A grain batch transform fn(batch, rng) -> batch applying `names` to batch["image"]."""
  check(names, settings)
  if not names:
    return None
  names = tuple(names)
  return lambda batch, rng: {**batch, "image": apply(names, batch["image"], rng, settings)}


def make_augment(
    *, crop_padding: int = 0, flip: bool = False, cutout: int = 0, fill: tuple[int, ...] = (0,)
) -> Callable | None:
  """imagecls's augmentation from its fields: crop, flip, cutout (each on when set), or None."""
  names = [n for n, on in (("crop", crop_padding), ("flip", flip), ("cutout", cutout)) if on]
  return make(names, Settings(crop_padding=crop_padding, cutout=cutout, fill=tuple(fill)))
