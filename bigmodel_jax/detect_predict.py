"""What the detect task shows a person: detections of a batch of images, the end-of-training report
and picture, and `--mode=predict` on one image file (a PNG with the boxes drawn).

Detections: the model's top detect.max_detections peaks per image (detection.decode), then greedy
per-class NMS at IoU detect.nms_iou (boxes.nms); mAP counts all of them (COCO's evaluator ranks by
score), while pictures and printed lists keep those scoring at least detect.min_score.
"""

import os

from absl import logging
import jax
import numpy as np
from PIL import Image

from bigmodel_jax import boxes, classification, detection
from bigmodel_jax.data import coco_files, image_files, images
from bigmodel_jax.errors import UsageError

SHOWCASE_FILE = "detections.png"
MIN_SIDE = 384  # pictures are enlarged (nearest pixels) to at least this many pixels a side


class Predictor:
  """Batched detection with one compiled decode, for a task (tasks/detect.py)."""

  def __init__(self, task):
    self.task, self.config = task, task.config
    s, k = self.config.data.image_size, self.config.detect.max_detections
    self.size = s
    self._fn = jax.jit(
        lambda v, x: detection.decode(
            task.model.apply(v, task.normalize(x), train=False), k, (s, s)
        )
    )

  def detect(self, variables, images: np.ndarray, min_score: float = 0.0) -> list[dict]:
    """uint8 (N, S, S, 3) -> per image {"boxes" (n, 4), "scores" (n,), "classes" (n,)} after NMS,
    highest score first, scores >= min_score."""
    batch = self.config.train.batch_size
    variables = jax.device_put(variables)  # once, not with every batch
    out = []
    for start in range(0, len(images), batch):
      x = images[start : start + batch]
      rows = len(x)
      if rows < batch:  # one compiled shape
        x = np.concatenate([x, np.zeros((batch - rows, *x.shape[1:]), x.dtype)])
      b, s, c = (np.asarray(a)[:rows] for a in self._fn(variables, x))
      for bi, si, ci in zip(b, s, c):
        keep = boxes.nms(bi, si, ci, self.config.detect.nms_iou)
        keep = keep[si[keep] >= min_score]
        out.append({"boxes": bi[keep], "scores": si[keep], "classes": ci[keep]})
    return out

  # --- end of training ------------------------------------------------------------------------

  def showcase(self, variables, val: dict, result: dict) -> dict:
    """Prints mAP, mAP50 and AP50 per class, and writes the first (up to) 8 validation images with
    their detections (score >= detect.min_score) to <workdir>/detections.png."""
    names = self.task.facts["class_names"]
    rows = [
        [name, int((val["labels"] == i).sum()), f"{100 * ap:.1f}" if ap == ap else "-"]
        for i, (name, ap) in enumerate(zip(names, result["ap50_per_class"]))
    ]
    print(
        f"\n{self.config.data.source}: COCO mAP@[.5:.95] {100 * result['mAP']:.1f}, "
        f"mAP@.5 {100 * result['mAP50']:.1f} on {len(val['image'])} validation images\n"
        + classification.format_table(["class", "objects", "AP@.5"], rows),
        flush=True,
    )
    found = self.detect(variables, val["image"][:8], self.config.detect.min_score)
    scale = max(1.0, MIN_SIDE / 2 / self.size)
    tiles = [
        np.asarray(boxes.draw(img, d["boxes"], d["scores"], d["classes"], names, scale))
        for img, d in zip(val["image"][:8], found)
    ]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 4)
    grid = np.concatenate([np.concatenate(tiles[i : i + 4], 1) for i in range(0, len(tiles), 4)], 0)
    path = os.path.join(self.task.workdir, SHOWCASE_FILE)
    Image.fromarray(grid).save(path)
    print(
        f"  detections on {len(found)} validation images (score >= "
        f"{self.config.detect.min_score}): {path}"
    )
    return result

  # --- --mode=predict ------------------------------------------------------------------------

  def predict_file(self, variables) -> list[tuple[str, float, list[float]]]:
    """`--mode=predict --config.predict.input=<image>`: prints the detections (class, score, box
    in the image's own pixels) and writes the image with the boxes drawn to predict.output
    ("" -> <workdir>/<image name>.detections.png). -> [(class, score, [x0, y0, x1, y1])]."""
    p = self.config.predict
    if not p.input:
      raise UsageError(
          f"--mode=predict needs --config.predict.input=<image file> ({image_files.KINDS})"
      )
    path = os.path.expanduser(p.input)
    image = read(path)
    h, w = image.shape[:2]
    small = np.asarray(
        Image.fromarray(image).resize(
            (self.size, self.size),
            Image.Resampling.BOX if min(h, w) >= self.size else Image.Resampling.BILINEAR,
        )
    )
    found = self.detect(variables, small[None], self.config.detect.min_score)[0]
    found["boxes"] = found["boxes"] * np.float32([w / self.size, h / self.size] * 2)
    names = self.task.facts["class_names"]
    output = p.output or os.path.join(
        self.task.workdir, os.path.splitext(os.path.basename(path))[0] + ".detections.png"
    )
    if os.path.isdir(output) or not os.path.isdir(os.path.dirname(os.path.abspath(output))):
      raise UsageError(f"predict.output={output} must be a PNG file path in an existing folder")
    picture = boxes.draw(
        image,
        found["boxes"],
        found["scores"],
        found["classes"],
        names,
        max(1.0, MIN_SIDE / min(h, w)),
    )
    picture.save(output, format="PNG")
    result = [
        (names[c], float(s), [round(float(v), 1) for v in b])
        for b, s, c in zip(found["boxes"], found["scores"], found["classes"])
    ]
    print(
        f"{p.input}: {len(result)} detection(s) with score >= {self.config.detect.min_score}\n"
        + classification.format_table(
            ["class", "score", "x0", "y0", "x1", "y1"],
            [[n, f"{s:.3f}", *(f"{v:.1f}" for v in b)] for n, s, b in result],
        )
        + f"\nwrote {output}",
        flush=True,
    )
    logging.info("predict: %d detections on %s -> %s", len(result), p.input, output)
    return result


def read(path: str) -> np.ndarray:
  """An image file at its own size -> uint8 (H, W, 3); a one-line UsageError if it is missing,
  and images.read_image's (as imagecls's predict) if it is not an image."""
  if not os.path.isfile(path):  # (read_image would also offer folders and globs: not here)
    raise UsageError(
        f"predict.input={path} is not a file; give an image file ({image_files.KINDS})"
    )
  try:
    size = coco_files.upright_size(path)
  except (OSError, ValueError, SyntaxError):
    size = (1, 1)  # unreadable: read_image fails on it too, and says why in one line
  return images.read_image(path, (*size, 3))
