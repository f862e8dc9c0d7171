"""Detections on the host: non-maximum suppression, COCO evaluation with pycocotools, drawing.

Boxes are float (N, 4) pixel x0 y0 x1 y1 (COCO's own files say x, y, width, height; `coco_map`
converts). COCO mAP is pycocotools' COCOeval (the evaluator of the COCO benchmark, not a copy):
mAP is AP averaged over IoU thresholds .50:.05:.95 and over classes, mAP50 the same at IoU .50;
both over up to 100 detections per image.
"""

import contextlib
import io

import numpy as np

PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
)  # fmt: skip  (Sasha Trubetskoy's 20 distinct colours, less black and white)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(N, 4), (M, 4) -> (N, M) intersection over union."""
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), -1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)
  return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
  """Greedy per-class non-maximum suppression: indices of the kept boxes, highest score first.
  A box is dropped when a higher-scoring kept box of its class overlaps it by more than `iou`."""
  order = np.argsort(-scores, kind="stable")
  overlap = iou_matrix(boxes, boxes) > iou
  same = classes[:, None] == classes[None, :]
  suppressed = np.zeros(len(boxes), bool)
  keep = []
  for i in order:
    if not suppressed[i]:
      keep.append(i)
      suppressed |= overlap[i] & same[i]
  return np.array(keep, np.int64)


def coco_map(gt: list[dict], detections: list[dict], num_classes: int, image_hw) -> dict:
  """COCOeval over images i = 0..len(gt)-1, each of size image_hw.

  gt[i] = {"boxes": (n, 4), "labels": (n,)}; detections[i] = {"boxes", "scores", "classes"}.
  -> {"mAP", "mAP50", "ap50_per_class": [num_classes floats, nan where a class has no object]}.
  """
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top

  h, w = image_hw
  xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
  annotations = []
  for i, g in enumerate(gt):
    for b, c in zip(g["boxes"], g["labels"]):
      box = xywh(b)
      # ids from 1: COCOeval takes a match with id 0 for "unmatched"
      annotations.append(
          {
              "id": len(annotations) + 1,
              "image_id": i,
              "category_id": int(c) + 1,
              "bbox": box,
              "area": box[2] * box[3],
              "iscrowd": 0,
          }
      )
  results = [
      {"image_id": i, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
      for i, d in enumerate(detections)
      for b, s, c in zip(d["boxes"], d["scores"], d["classes"])
  ]
  if not annotations or not results:  # pycocotools cannot load empty results: nothing found
    return {"mAP": 0.0, "mAP50": 0.0, "ap50_per_class": [float("nan")] * num_classes}
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
    truth = COCO()
    truth.dataset = {
        "images": [{"id": i, "height": h, "width": w} for i in range(len(gt))],
        "annotations": annotations,
        "categories": [{"id": c + 1} for c in range(num_classes)],
    }
    truth.createIndex()
    evaluator = COCOeval(truth, truth.loadRes(results), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  # precision: (IoU thresholds, recall points, classes, area ranges, max dets); -1 = no objects
  p50 = evaluator.eval["precision"][0, :, :, 0, -1]  # IoU .50, all areas, 100 detections
  per_class = [float(p[p > -1].mean()) if (p > -1).any() else float("nan") for p in p50.T]
  # stats are -1 when no class has objects; report 0 then (nothing to find, nothing found)
  return {
      "mAP": max(float(evaluator.stats[0]), 0.0),
      "mAP50": max(float(evaluator.stats[1]), 0.0),
      "ap50_per_class": per_class,
  }


def draw(image: np.ndarray, boxes, scores, classes, class_names, scale: float = 1.0):
  """A PIL image: `image` (uint8 (H, W, 3) or (H, W, 1)) enlarged `scale` times (nearest pixels,
  so small images stay readable) with each box outlined in its class's colour and labelled
  "<class> <score>"."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

  picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
  if scale != 1.0:
    size = (round(picture.width * scale), round(picture.height * scale))
    picture = picture.resize(size, Image.Resampling.NEAREST)
  pen = ImageDraw.Draw(picture)
  for box, score, c in zip(boxes, scores, classes):
    colour = PALETTE[int(c) % len(PALETTE)]
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    pen.rectangle([x0, y0, x1, y1], outline=colour, width=2)
    text = f"{class_names[int(c)]} {score:.2f}"
    left, top, right, bottom = pen.textbbox((x0, y0), text)
    top_y = y0 - (bottom - top) - 2 if y0 >= bottom - top + 2 else y0
    pen.rectangle([x0, top_y, x0 + right - left + 2, top_y + bottom - top + 2], fill=colour)
    pen.text((x0 + 1, top_y), text, fill=(0, 0, 0))
  return picture
