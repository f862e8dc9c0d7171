"""Images with boxes, for detection: loading by name, resizing, and box-aware augmentation.

`Source(source, settings).load(split)` -> arrays {"image": uint8 (N, S, S, 3), "boxes": float32
(N, M, 4) pixel x0 y0 x1 y1 in the resized image, "labels": int32 (N, M), -1 = no object}, with S
= data.image_size and M = data.max_objects; split is "train" or "validation". Sources:

  canvases            generated digit scans and shapes on textures (canvases.py; offline default)
  tfds:<name>         a prepared TFDS dataset with an Image "image" and a Sequence "objects" of
                      BBoxFeature "bbox" and ClassLabel "label", and train and validation splits:
                      tfds:voc/2007, tfds:coco/2017:1.1.0 (coco's builder code imports TensorFlow;
                      naming its version makes TFDS read the prepared files without that code).
                      COCO's crowd boxes (is_crowd) are dropped.
  coco_json:<file>    your images and a COCO-format annotation file (coco_files.py)

Images are squashed to S x S (no aspect kept, nothing cut off) and the boxes scaled with them, so
mAP is measured in that frame. A tfds or coco_json split is decoded into memory once per run
(VOC's 5,011 train images at 256 x 256: about 1 GB); data.max_examples caps each split (COCO's
118k train images would not fit). Objects beyond M in an image are dropped, and counted in the log.
"""

import dataclasses
import functools

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from bigmodel_jax.data import canvases, coco_files, tfds_source
from bigmodel_jax.errors import UsageError

SOURCES_HELP = "canvases, tfds:<name> (e.g. tfds:voc/2007, tfds:coco/2017:1.1.0), coco_json:<file>"
SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class Settings:
  """The data.* settings (see experiments/detect.py)."""

  image_size: int = 64
  max_objects: int = 5
  max_examples: int = 0
  train_canvases: int = 5000
  validation_canvases: int = 500
  seed: int = 0
  image_dir: str = ""
  val_percent: int = 10
  tfds_data_dir: str = ""

  @classmethod
  def from_config(cls, data) -> "Settings":
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


class Source:
  """The dataset named by `source`, checked (cheaply) on construction; splits load on request."""

  def __init__(self, source: str, settings: Settings):
    self.source, self.settings = source, settings
    scheme, _, rest = source.partition(":")
    if source == "canvases":
      self.class_names = list(canvases.CLASS_NAMES)
    elif scheme == "coco_json" and rest:
      self._coco = coco_files.Annotations(rest, settings.image_dir, settings.val_percent)
      self.class_names = self._coco.class_names
    elif scheme == "tfds" and rest:
      self._builder = _tfds_builder(rest, settings.tfds_data_dir)
      self.class_names = list(self._builder.info.features["objects"]["label"].names)
    else:
      raise UsageError(f"data.source={source!r} is not valid; valid: {SOURCES_HELP}")

  @functools.lru_cache(maxsize=2)
  def load(self, split: str) -> dict[str, np.ndarray]:
    s = self.settings
    if self.source == "canvases":
      return _generated(s)[split]
    if hasattr(self, "_coco"):
      examples = self._coco.examples(split, s.max_examples)
    else:
      examples = _tfds_examples(self._builder, split, s.max_examples)
    out = pack(examples, s.image_size, s.max_objects)
    logging.info("%s: %s: %d images", self.source, split, len(out["image"]))
    return out


@functools.lru_cache(maxsize=1)
def _generated(s: Settings) -> dict:
  return canvases.load(
      size=s.image_size,
      max_objects=s.max_objects,
      train=s.train_canvases,
      validation=s.validation_canvases,
      seed=s.seed,
      data_dir=s.tfds_data_dir,
  )


def pack(examples, size: int, max_objects: int) -> dict[str, np.ndarray]:
  """(uint8 (H, W, 3) image, float (n, 4) pixel x0 y0 x1 y1 boxes, int (n,) labels) triples ->
  arrays (module doc): each image resized to size x size and its boxes scaled with it."""
  images, boxes, labels, dropped = [], [], [], 0
  for image, b, lab in examples:
    h, w = image.shape[:2]
    picture = Image.fromarray(image)
    method = Image.Resampling.BOX if h >= size and w >= size else Image.Resampling.BILINEAR
    images.append(np.asarray(picture.resize((size, size), method), np.uint8))
    row_boxes = np.zeros((max_objects, 4), np.float32)
    row_labels = np.full((max_objects,), -1, np.int32)
    n = min(len(lab), max_objects)
    dropped += len(lab) - n
    row_boxes[:n] = np.asarray(b, np.float32)[:n] * np.float32([size / w, size / h] * 2)
    row_labels[:n] = np.asarray(lab)[:n]
    boxes.append(row_boxes)
    labels.append(row_labels)
  if not images:
    raise UsageError("the data has no images in one of its splits; give it some")
  if dropped:
    logging.warning(
        "%d objects beyond data.max_objects=%d per image were dropped", dropped, max_objects
    )
  return {"image": np.stack(images), "boxes": np.stack(boxes), "labels": np.stack(labels)}


def _tfds_builder(name: str, data_dir: str):
  try:
    builder = tfds_source.open_prepared(name, data_dir)
  except ImportError:  # TFDS fell back to the builder's code, which imports TensorFlow
    raise UsageError(
        f"tfds:{name} is not prepared in {data_dir or 'the default TFDS data_dir'} and its builder "
        "code needs TensorFlow; prepare it on a machine with TensorFlow and internet (`tfds build "
        f"{name.split(':')[0]} --file_format=array_record`), copy the data_dir here and pass "
        "--config.data.tfds_data_dir=<that data_dir>"
    ) from None
  features = builder.info.features
  objects = features["objects"] if "objects" in features else None
  if (
      type(features["image"] if "image" in features else None) is not tfds.features.Image
      or not isinstance(objects, tfds.features.Sequence)
      or "bbox" not in objects.feature
      or "label" not in objects.feature
      or not isinstance(objects.feature["label"], tfds.features.ClassLabel)
  ):
    raise UsageError(
        f"tfds:{name} needs an Image 'image' and a Sequence 'objects' of 'bbox' and ClassLabel "
        f"'label' (as voc and coco have); its features: {', '.join(features)}"
    )
  missing = set(SPLITS) - set(builder.info.splits)
  if missing:
    raise UsageError(
        f"tfds:{name} has no {' or '.join(sorted(missing))} split; its splits: "
        f"{', '.join(sorted(builder.info.splits))}"
    )
  return builder


def _tfds_examples(builder, split: str, max_examples: int):
  records = builder.as_data_source(split)
  n = len(records) if not max_examples else min(max_examples, len(records))
  for i in range(n):  # one at a time: mock_data breaks __getitems__
    r = records[i]
    image = np.asarray(r["image"], np.uint8)
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, -1)
    h, w = image.shape[:2]
    objects = {k: np.asarray(v) for k, v in r["objects"].items()}
    # Real records give every field of an object; tfds.testing.mock_data draws each field's
    # length on its own, so the shortest decides.
    n = min(len(v) for v in objects.values())
    keep = ~objects["is_crowd"][:n].astype(bool) if "is_crowd" in objects else np.ones(n, bool)
    ymin, xmin, ymax, xmax = objects["bbox"].astype(np.float32).reshape(-1, 4)[:n][keep].T
    boxes = np.stack([xmin * w, ymin * h, xmax * w, ymax * h], -1)
    yield image, boxes, objects["label"].astype(np.int32)[:n][keep]


def make_flip():
  """A grain batch transform: each image flipped left-right with probability 1/2, boxes with it
  (not for digits: a mirrored 3 is no 3)."""

  def flip(batch, rng: np.random.Generator):
    image, boxes = batch["image"], batch["boxes"]
    size = image.shape[2]
    flipped = rng.random(len(image)) < 0.5
    mirrored = np.stack(
        [size - boxes[..., 2], boxes[..., 1], size - boxes[..., 0], boxes[..., 3]], -1
    )
    return {
        **batch,
        "image": np.where(flipped[:, None, None, None], image[:, :, ::-1], image),
        "boxes": np.where(flipped[:, None, None], mirrored, boxes).astype(np.float32),
    }

  return flip
