"""Object detection (detect): CenterNet over images with boxes; COCO mAP; predict draws the boxes.

Batches are {"image": uint8 (B, S, S, 3), "boxes": float32 (B, M, 4) pixel x0 y0 x1 y1,
"labels": int32 (B, M), -1 = no object} (eval batches add "weight"); detection.py draws the
targets from them on the device. Every evaluation reports the loss and its two parts; the final
one (end of training, --mode=eval) adds pycocotools' mAP and mAP50 over the whole validation split
(decode: the top detect.max_detections peaks, then per-class NMS at IoU detect.nms_iou).

The run saves `dataset.json` (source, image size, class names, per-channel mean/std of the train
split), so eval and predict use what training used, without the data.
"""

import functools
import json
import os

import jax
import numpy as np

from bigmodel_jax import boxes, detection, json_files, models
from bigmodel_jax.data import boxed_images, images
from bigmodel_jax.detect_predict import Predictor
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import base

DATASET_FILE = "dataset.json"


class Task(base.ArrayTask):
  """CenterNet's focal + L1 loss; final metrics COCO mAP@[.5:.95] and mAP@.5."""

  eval_split = "validation"

  eval_metrics = ("loss", "heatmap_loss", "box_loss")
  final_metric_names = ("mAP", "mAP50")

  def __init__(self, config):
    super().__init__(config)
    d, t = config.data, config.detect
    if not 16 <= d.image_size <= 2048 or d.image_size % 32:
      raise UsageError(f"data.image_size={d.image_size} must be a multiple of 32 in 32..2048")
    for key in ("max_objects", "train_canvases", "validation_canvases"):
      if d[key] < 1:
        raise UsageError(f"data.{key}={d[key]} must be >= 1")
    if d.max_examples < 0 or not 0 < d.val_percent < 100:
      raise UsageError(
          f"data.max_examples={d.max_examples} must be >= 0 (0: all) and "
          f"data.val_percent={d.val_percent} in 1..99"
      )
    if t.max_detections < 1 or not 0 < t.nms_iou <= 1 or not 0 <= t.min_score < 1:
      raise UsageError(
          f"detect.max_detections={t.max_detections} must be >= 1, detect.nms_iou={t.nms_iou} "
          f"in (0, 1] and detect.min_score={t.min_score} in [0, 1)"
      )
    if t.size_weight < 0:
      raise UsageError(f"detect.size_weight={t.size_weight} must be >= 0")
    self.settings = boxed_images.Settings.from_config(d)
    if d.source != "canvases":
      # Checks the name, that a tfds dataset is prepared, and every box and class id of a COCO
      # JSON (cheap: no image is read), before the workdir is touched.
      self.dataset = boxed_images.Source(d.source, self.settings)
    models.make(config.model, ("centernet",), num_classes=2)  # checks the model's settings
    self.workdir = ""
    self.modes = {"predict": self.predict}

  @functools.cached_property
  def dataset(self) -> boxed_images.Source:
    return boxed_images.Source(self.config.data.source, self.settings)

  @functools.cached_property
  def facts(self) -> dict:
    # What the model and predict need; until setup, from the source (canvases: no data read) and
    # neutral statistics (enough for --mode=plan, which compiles without data).
    return {"class_names": self.dataset.class_names, "mean": [0.0] * 3, "std": [1.0] * 3}

  @functools.cached_property
  def model(self):
    return models.make(self.config.model, num_classes=len(self.facts["class_names"]))

  # --- data ---------------------------------------------------------------------------------

  def setup(self, workdir: str, create: bool) -> None:
    path = os.path.join(workdir, DATASET_FILE)
    self.workdir = workdir
    if os.path.exists(path):
      self.facts = json_files.read_json(path, "dataset facts (source, classes, statistics)")
    elif create:
      mean, std = images.channel_stats(self.split_arrays("train")["image"])
      self.split_arrays("validation")  # every image is checked before the first step
      self.facts = {
          "source": self.config.data.source,
          "image_size": self.config.data.image_size,
          "class_names": self.dataset.class_names,
          "mean": mean,
          "std": std,
      }
      with open(path, "w") as f:
        json.dump(self.facts, f, indent=2)
    else:
      raise RunError(
          f"no {DATASET_FILE} in {workdir}; train first with python run.py "
          f"--experiment={self.config.experiment} --workdir={workdir}"
      )
    self.model = models.make(self.config.model, num_classes=len(self.facts["class_names"]))

  def split_arrays(self, split: str) -> dict[str, np.ndarray]:
    d, saved = self.config.data, self.facts
    if (saved.get("source", d.source), saved.get("image_size", d.image_size)) != (
        d.source,
        d.image_size,
    ):
      raise RunError(
          f"this run was trained on {saved['source']} at {saved['image_size']} pixels (its "
          f"{DATASET_FILE}) but data.source={d.source}, data.image_size={d.image_size}; use the "
          "run's settings or a new --workdir"
      )
    return self.dataset.load(split)

  def train_augment(self):
    return boxed_images.make_flip() if self.config.augment.flip else None

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    s, m = self.config.data.image_size, self.config.data.max_objects
    return {
        "image": jax.ShapeDtypeStruct((batch_size, s, s, 3), np.uint8),
        "boxes": jax.ShapeDtypeStruct((batch_size, m, 4), np.float32),
        "labels": jax.ShapeDtypeStruct((batch_size, m), np.int32),
    }

  # --- model and loss -----------------------------------------------------------------------

  def normalize(self, image):  # uint8 (B, S, S, 3) -> float32, zero mean and unit variance
    mean, std = np.float32(self.facts["mean"]), np.float32(self.facts["std"])
    return (image.astype(np.float32) / 255.0 - mean) / std

  def init_variables(self, rng):
    s = self.config.data.image_size
    return self.model.init({"params": rng}, np.zeros((1, s, s, 3), np.float32), train=False)

  def loss(self, params, model_state, batch, rng, train: bool):
    del rng  # no dropout
    variables = {"params": params, **model_state}
    x = self.normalize(batch["image"])
    if train:  # BatchNorm: batch statistics, and new running averages
      outputs, updates = self.model.apply(variables, x, train=True, mutable=list(model_state))
      model_state = {**model_state, **updates}
    else:
      outputs = self.model.apply(variables, x, train=False)
    loss, metrics = detection.loss(outputs, batch, self.config.detect.size_weight)
    return loss, (metrics, model_state)

  # --- detections, mAP and what a person sees ---------------------------------------------------

  @functools.cached_property
  def predictor(self) -> Predictor:
    return Predictor(self)

  def final_metrics(self, variables) -> dict[str, float]:
    result = self._evaluate(variables)
    return {"mAP": result["mAP"], "mAP50": result["mAP50"]}

  def _evaluate(self, variables) -> dict:
    val = self.split_arrays("validation")
    found = self.predictor.detect(variables, val["image"])
    truth = [
        {"boxes": b[lab >= 0], "labels": lab[lab >= 0]}
        for b, lab in zip(val["boxes"], val["labels"])
    ]
    s = self.config.data.image_size
    return boxes.coco_map(truth, found, len(self.facts["class_names"]), (s, s))

  def showcase(self, variables) -> dict:
    return self.predictor.showcase(
        variables, self.split_arrays("validation"), self._evaluate(variables)
    )

  def predict(self, variables):
    return self.predictor.predict_file(variables)
