"""Your own detection data: images and a COCO-format annotation file (data.source=coco_json:<file>).

The file is COCO's object-detection JSON: {"images": [{"id", "file_name", "width", "height"}],
"annotations": [{"id", "image_id", "category_id", "bbox": [x, y, width, height] in pixels}],
"categories": [{"id", "name"}]}, as written by COCO itself, CVAT, Label Studio, Roboflow and others.
file_name is relative to data.image_dir ("" -> the JSON file's folder). Classes are the categories
in order of id. data.val_percent of the images (chosen by a hash of file_name, so adding images
moves no others) are the validation split; annotations with iscrowd 1 are left out.

Everything is checked before any training, and the first problem is a one-line UsageError naming
the file, the annotation and what is valid: a category_id that is no category's id, a box that is
empty or reaches outside its image (by more than half a pixel, which rounding explains), an image
whose file is missing or not an image, or whose size is not what the JSON says.
"""

import json
import os
import zlib

import numpy as np

from bigmodel_jax.data import image_files
from bigmodel_jax.errors import UsageError

TOLERANCE = 0.5  # pixels a box may reach past its image's edge (rounding in annotation tools)


class Annotations:
  """The parsed, checked annotation file; `examples(split)` decodes its images."""

  def __init__(self, path: str, image_dir: str, val_percent: int):
    path = os.path.expanduser(path)
    where = f"data.source=coco_json:{path}"
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
    except FileNotFoundError:
      raise UsageError(f"{where}: no such file; give a COCO-format annotation JSON") from None
    except (ValueError, UnicodeDecodeError) as e:
      raise UsageError(f"{where} is not valid JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
      raise UsageError(
          f"{where} needs lists 'images', 'annotations' and 'categories' (COCO format)"
      )
    try:
      categories = sorted(data["categories"], key=lambda c: c["id"])
      self.class_names = [str(c["name"]) for c in categories]
      index = {c["id"]: i for i, c in enumerate(categories)}
      self.images = {im["id"]: im for im in data["images"]}
      self.root = os.path.expanduser(image_dir) or os.path.dirname(os.path.abspath(path))
      self.objects = {i: ([], []) for i in self.images}
      for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
          continue
        self._add(ann, index, where)
    except (KeyError, TypeError) as e:
      raise UsageError(
          f"{where}: an entry lacks the COCO field {e} or has the wrong type"
      ) from None
    if not self.class_names:
      raise UsageError(f"{where} has no categories; list the classes in 'categories'")
    self.val_percent = val_percent

  def _add(self, ann: dict, index: dict, where: str) -> None:
    if ann["category_id"] not in index:
      raise UsageError(
          f"{where}: annotation {ann['id']} has category_id {ann['category_id']}, which is no "
          f"category's id; valid: {', '.join(str(i) for i in sorted(index))}"
      )
    image = self.images.get(ann["image_id"])
    if image is None:
      raise UsageError(
          f"{where}: annotation {ann['id']} names image_id {ann['image_id']}, no image's id"
      )
    x, y, w, h = (float(v) for v in ann["bbox"])
    width, height = image["width"], image["height"]
    if not (
        w > 0
        and h > 0
        and x >= -TOLERANCE
        and y >= -TOLERANCE
        and x + w <= width + TOLERANCE
        and y + h <= height + TOLERANCE
    ):
      raise UsageError(
          f"{where}: annotation {ann['id']} has bbox [x, y, w, h] = {ann['bbox']}, which is empty "
          f"or outside its image {image['file_name']} ({width}x{height} pixels); a box must lie "
          "inside its image"
      )
    boxes, labels = self.objects[ann["image_id"]]
    boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)])
    labels.append(index[ann["category_id"]])

  def split_of(self, image: dict) -> str:
    bucket = zlib.crc32(str(image["file_name"]).encode("utf-8")) % 100
    return "validation" if bucket < self.val_percent else "train"

  def examples(self, split: str, max_examples: int = 0):
    """(uint8 (H, W, 3) image, (n, 4) pixel x0 y0 x1 y1 boxes, (n,) labels) of the split, in order
    of image id."""
    chosen = [im for _, im in sorted(self.images.items()) if self.split_of(im) == split]
    for image in chosen[:max_examples] if max_examples else chosen:
      path = os.path.join(self.root, image["file_name"])
      size = (image["height"], image["width"])
      try:
        pixels = image_files.decode(path, size, 3)  # resizes only a file of the wrong size
        actual = upright_size(path)
      except FileNotFoundError:
        raise UsageError(f"image {path} (in the COCO JSON) does not exist") from None
      except image_files.BadImage as e:
        raise UsageError(f"image {path} is not an image pillow can read ({e})") from None
      if actual != size:
        raise UsageError(
            f"image {path} is {actual[1]}x{actual[0]} pixels but the COCO JSON says "
            f"{size[1]}x{size[0]}; fix its width and height there"
        )
      boxes, labels = self.objects[image["id"]]
      yield pixels, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int32)


def upright_size(path: str) -> tuple[int, int]:
  """(height, width) of an image file as image_files.decode reads it (EXIF orientation applied);
  raises what pillow raises for a file it cannot open."""
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top

  with Image.open(path) as img:
    img = ImageOps.exif_transpose(img)
    return img.height, img.width
