"""detect: object detection with CenterNet (anchor-free) on a small ResNet; COCO mAP.

  python run.py --experiment=detect                     # CPU, ~3-6 min on 2 cores (see below)
  python run.py --experiment=detect --mode=eval         # loss, and pycocotools mAP / mAP50
  python run.py --experiment=detect --mode=predict --config.predict.input=photo.png
  python run.py --experiment=detect:voc --config.data.tfds_data_dir=DIR
  python run.py --experiment=detect --config.data.source=coco_json:labels.json --workdir=runs/mine

Offline default: 5,000 generated 64x64 canvases (500 more for validation), each with 1-5 objects
of 13 classes: the real handwritten digit scans of scikit-learn's digits (validation canvases use
the digits' held-out scans) and circles, squares and triangles, scaled, stretched, in random
colours, possibly overlapping, on textured backgrounds (bigmodel_jax/data/canvases.py).
Model: CenterNet (models/centernet.py) with focal loss on class heatmaps, L1 on log box size and
centre offset (detection.py); decoding keeps 3x3 peaks, then per-class NMS (boxes.py). The final
evaluation is pycocotools' COCOeval on the validation canvases. Last run (seed 0, 1,500 steps):
mAP@[.5:.95] 0.682, mAP@.5 0.931 (target >= 0.9); AP@.5 per class 79.0 (the digit 8) to 99.4
(circles). It used 330 s of CPU time (269 user + 61 system) and took 27.7 min of wall time on 2
CPU cores shared with ~8 other jobs (load average ~20); alone on 2 cores it would take at least
CPU/2 = 2.8 min, about 3-6 min (not measured alone: the machine was never idle).
At the end of training the per-class AP@.5 is printed and 8 validation canvases with their
detections are drawn to <workdir>/detections.png; predict draws the boxes on any image.

Data (`data.source`): canvases | tfds:<name> (a prepared TFDS dataset with "image" and "objects"
{"bbox", "label"}, train and validation splits) | coco_json:<file> (your images and a COCO-format
annotation file; boxes and class ids are checked, bad ones are one-line errors).

Presets (`--experiment=detect:<preset>`):
  tiny  a few seconds; used by tests
  voc   tfds:voc/2007 at 256x256, wider model, flips (for a GPU; needs the prepared dataset,
        which needs TensorFlow to prepare; untested at full size)
  coco  tfds:coco/2017:1.1.0 at 320x320, the first 30,000 train images (for a GPU; the same)
"""

import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax import models

MODELS = ("centernet",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base_config(task="detect")

  c.data = ml_collections.ConfigDict()
  c.data.source = "canvases"  # | tfds:<name> | coco_json:<file>
  # Where tfds:<name> is prepared ("" -> TFDS's default); also where the canvases are cached ("" ->
  # ~/.cache/bigmodel_jax/tensorflow_datasets).
  c.data.tfds_data_dir = ""
  c.data.image_size = 64  # every image is resized to image_size x image_size (a multiple of 32)
  c.data.max_objects = 5  # boxes kept per image (canvases: at most this many are drawn)
  c.data.max_examples = 0  # tfds / coco_json: images read per split; 0 = all
  c.data.train_canvases = 5000  # canvases only: how many to generate for training
  c.data.validation_canvases = 500  # canvases only: and for validation
  c.data.seed = 0  # canvases only: the generator's seed
  c.data.image_dir = ""  # coco_json only: the folder file_name is relative to ("": the JSON's)
  c.data.val_percent = 10  # coco_json only: images held out for validation, by a hash of the name

  c.augment = ml_collections.ConfigDict()
  c.augment.flip = False  # random left-right flips of images and boxes (not for digits)

  c.model = models.default_config(*MODELS)

  c.detect = ml_collections.ConfigDict()
  c.detect.size_weight = 1.0  # weight of the L1 loss on log box size (offset's weight is 1)
  c.detect.max_detections = 100  # peaks decoded per image (COCO counts up to 100)
  c.detect.nms_iou = 0.5  # same-class boxes overlapping a better one by more IoU are dropped
  c.detect.min_score = 0.3  # pictures and printed lists show detections scoring at least this

  c.train.steps = 1500
  c.train.batch_size = 32
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.01
  c.train.weight_decay = 1e-4
  c.train.log_every = 100
  c.train.eval_every = 500
  c.checkpoint.every_steps = 500

  c.predict = ml_collections.ConfigDict()
  c.predict.input = ""  # --mode=predict: an image file
  c.predict.output = ""  # the PNG with the boxes drawn ("" -> <workdir>/<name>.detections.png)
  return config_lib.apply_preset(c, arg, PRESETS)


_BIG = {"model.widths": (32, 64, 128, 256), "model.stage_sizes": (2, 2, 2, 2)}

PRESETS = {
    "tiny": {
        "model.widths": (8, 16),
        "model.stage_sizes": (1, 1),
        "model.head_width": 8,
        "data.train_canvases": 64,
        "data.validation_canvases": 16,
        "train.steps": 20,
        "train.batch_size": 16,
        "train.warmup_steps": 5,
        "train.log_every": 10,
        "train.eval_every": 10,
        "checkpoint.every_steps": 10,
    },
    "voc": {
        **_BIG,
        "data.source": "tfds:voc/2007",
        "data.image_size": 256,
        "data.max_objects": 42,
        "augment.flip": True,
        "model.head_width": 128,
        "train.steps": 30000,
        "train.batch_size": 32,
        "train.learning_rate": 1e-3,
        "train.warmup_steps": 1000,
        "train.eval_every": 2000,
        "checkpoint.every_steps": 2000,
    },
    "coco": {
        **_BIG,
        "data.source": "tfds:coco/2017:1.1.0",
        "data.image_size": 320,
        "data.max_objects": 100,
        "data.max_examples": 30000,
        "augment.flip": True,
        "model.head_width": 128,
        "train.steps": 90000,
        "train.batch_size": 32,
        "train.learning_rate": 1e-3,
        "train.warmup_steps": 1000,
        "train.eval_every": 5000,
        "checkpoint.every_steps": 5000,
    },
}
