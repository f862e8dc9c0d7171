"""Image classification (imagecls): a CNN or ResNet over labelled images, with augmentation.

Batches are {"image": uint8 (B, H, W, C), "label": int32 (B,)} (eval batches add "weight"). The
task normalises on the device with the training split's per-channel mean and standard deviation,
saved with the run (`dataset.json`: source, image shape, class names, mean/std), so eval and predict
use exactly what training used. The eval split is the dataset's test split, or for your own images
(image_folder:, csv:) their validation split.

The dataset is opened on first use, not in __init__: a local source's cache is built (or its
files listed and fingerprinted) then, and a trained run's predict mode never does it, since setup
reads the facts from dataset.json; the training images may be gone by then.
"""

import functools
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax import classification, image_predict, json_files, models
from bigmodel_jax.data import augment as augment_lib
from bigmodel_jax.data import image_cache, image_files, images
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import base

DATASET_FILE = "dataset.json"
INVERT = ("auto", "yes", "no")
MODELS = ("cnn", "resnet", "vit")  # model.name can be any of these


class Task(base.ArrayTask):
  """Cross-entropy over classes; metrics loss and accuracy (top-1)."""

  def __init__(self, config):
    super().__init__(config)
    d, a, p = config.data, config.augment, config.predict
    if not 0 < d.test_fraction < 1:
      raise UsageError(f"data.test_fraction={d.test_fraction} must be in (0, 1)")
    if not 1 <= d.image_size <= 4096 or d.channels not in (0, 1, 3):
      raise UsageError(
          f"data.image_size={d.image_size} must be in 1..4096 (pixels) and "
          f"data.channels={d.channels} one of 1, 3, 0 (0: decide from the data)"
      )
    if not 0 < d.val_percent < 100 or d.on_bad_image not in image_files.ON_BAD_IMAGE:
      raise UsageError(
          f"data.val_percent={d.val_percent} must be in 1..99 and data.on_bad_image="
          f"{d.on_bad_image!r} one of {', '.join(image_files.ON_BAD_IMAGE)}"
      )
    if a.crop_padding < 0 or a.cutout < 0:
      raise UsageError(
          f"augment.crop_padding={a.crop_padding} and augment.cutout={a.cutout} "
          "must be >= 0 (pixels; 0 turns them off)"
      )
    if p.top_k < 1 or p.invert not in INVERT or p.batch_size < 1:
      raise UsageError(
          f"predict.top_k={p.top_k} and predict.batch_size={p.batch_size} must be >= 1 and "
          f"predict.invert={p.invert!r} one of {', '.join(INVERT)}"
      )
    if not 0 < d.label_fraction <= 1:
      raise UsageError(
          f"data.label_fraction={d.label_fraction} must be in (0, 1]: the share of the "
          "training images whose labels are used (1 = all)"
      )
    if config.linear_probe and (config.model.name != "vit" or config.train.weight_decay):
      raise UsageError(
          f"linear_probe=true trains only the head of a frozen encoder: it needs model.name=vit "
          f"(not {config.model.name!r}) and train.weight_decay=0 (not "
          f"{config.train.weight_decay}; decoupled decay would shrink the frozen weights)"
      )
    images.check(d.source, d.tfds_data_dir)  # cheap; the dataset itself is opened on first use
    models.make(config.model, MODELS, num_classes=2)  # checks the model's settings
    self.local = image_cache.Settings.from_config(d) if image_cache.is_local(d.source) else None
    self.workdir = ""
    self.modes = {"predict": self.predict}

  @functools.cached_property
  def dataset(self) -> images.Source:
    d = self.config.data
    return images.Source(
        d.source,
        data_dir=d.tfds_data_dir,
        local=self.local,
        test_fraction=d.test_fraction,
        split_seed=d.split_seed,
    )

  @functools.cached_property
  def info(self) -> images.Info:  # the dataset's, until setup loads the run's
    return self.dataset.info

  @functools.cached_property
  def model(self):
    return self.make_model()

  def make_model(self):
    """The model for this dataset's classes (a subclass may build another, e.g. an encoder)."""
    return models.make(self.config.model, MODELS, num_classes=self.info.num_classes)

  @functools.cached_property
  def stats(self) -> dict:
    # {"mean": [...], "std": [...], "dark_background": bool, ...}: measured or loaded by setup;
    # neutral until then (enough for --mode=plan, which compiles without data).
    channels = self.info.shape[-1]
    return {"mean": [0.0] * channels, "std": [1.0] * channels, "dark_background": False}

  @property
  def eval_name(self) -> str:
    """What the held-out split is called in the showcase (its data split is "test")."""
    return "validation" if self.local else "test"

  # --- data ---------------------------------------------------------------------------------

  def setup(self, workdir: str, create: bool) -> None:
    """Loads the run's dataset facts from the workdir, or (create) measures and saves them."""
    path = os.path.join(workdir, DATASET_FILE)
    self.workdir = workdir
    if os.path.exists(path):
      saved = json_files.read_json(path, "dataset facts (shape, class names, statistics)")
      self.info = images.Info(tuple(saved["shape"]), saved["class_names"])
      self.stats = saved
    elif create:
      # Every training image, labelled or not (data.label_fraction drops labels, not images).
      train = self.split_arrays("train", labelled=False)["image"]
      mean, std = images.channel_stats(train)
      self.stats = {
          "source": self.config.data.source,
          "shape": list(self.info.shape),
          "class_names": self.info.class_names,
          "mean": mean,
          "std": std,
          # Light-on-dark data (digits, MNIST): predict inverts a drawing on white to match. Your
          # own images are taken as they come.
          "dark_background": not self.local and images.border_mean(train.mean(0)) < 0.25,
      }
      with open(path, "w") as f:
        json.dump(self.stats, f, indent=2)
    else:
      raise RunError(
          f"no {DATASET_FILE} in {workdir}; train first with python run.py "
          f"--experiment={self.config.experiment} --workdir={workdir}"
      )
    self.model = self.make_model()

  @functools.lru_cache(maxsize=3)
  def split_arrays(self, split: str, labelled: bool = True) -> dict[str, np.ndarray]:
    d = self.config.data
    if self.stats.get("source", d.source) != d.source:
      raise RunError(
          f"this run was trained on {self.stats['source']} (its {DATASET_FILE}) but "
          f"data.source={d.source}; pass --config.data.source={self.stats['source']} "
          "or use a new --workdir"
      )
    now = self.dataset.info
    if now != self.info:  # e.g. a class folder added, or another data.image_size
      raise RunError(
          f"{d.source} now gives {now.shape} images of classes {', '.join(now.class_names)}, but "
          f"this run was trained on {self.info.shape} images of {', '.join(self.info.class_names)}"
          f" (its {DATASET_FILE}); use the run's data and settings, or a new --workdir"
      )
    rows = self.dataset.load(split)
    if split == "train" and labelled and d.label_fraction < 1:
      keep = images.label_subset(rows["label"], d.label_fraction, d.label_seed)
      logging.info(
          "data.label_fraction=%g: training on %d of %d labelled images (label_seed %d)",
          d.label_fraction,
          len(keep),
          len(rows["label"]),
          d.label_seed,
      )
      rows = {k: v[keep] for k, v in rows.items()}
    return rows

  def train_augment(self):
    a = self.config.augment
    fill = tuple(round(m * 255) for m in self.stats["mean"])
    return augment_lib.make_augment(
        crop_padding=a.crop_padding, flip=a.flip, cutout=a.cutout, fill=fill
    )

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        "image": jax.ShapeDtypeStruct((batch_size, *self.info.shape), np.uint8),
        "label": jax.ShapeDtypeStruct((batch_size,), np.int32),
    }

  # --- model and loss -----------------------------------------------------------------------

  def _normalize(self, image):  # uint8 (B, H, W, C) -> float32, zero mean and unit variance
    mean, std = np.float32(self.stats["mean"]), np.float32(self.stats["std"])
    return (image.astype(jnp.float32) / 255.0 - mean) / std

  def init_variables(self, rng):
    image = np.zeros((1, *self.info.shape), np.float32)
    return self.model.init({"params": rng, "dropout": rng}, image, train=False)

  def loss(self, params, model_state, batch, rng, train: bool):
    return self.loss_and_logits(params, model_state, batch, rng, train)[:2]

  def loss_and_logits(self, params, model_state, batch, rng, train: bool):
    variables = {"params": params, **model_state}
    x = self._normalize(batch["image"])
    if train and model_state:  # BatchNorm: batch statistics, and new running averages
      logits, updates = self.model.apply(
          variables, x, train=True, rngs={"dropout": rng}, mutable=list(model_state)
      )
      model_state = {**model_state, **updates}
    else:
      frozen = {"frozen": True} if self.config.linear_probe else {}
      logits = self.model.apply(variables, x, train=train, rngs={"dropout": rng}, **frozen)
    loss, metrics = classification.softmax_loss(logits, batch)
    return loss, (metrics, model_state), logits  # logits (B, classes)

  def output_names(self) -> list[str]:
    return list(self.info.class_names)

  def probabilities(self, variables, image: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, classes) class probabilities, in batches on the host's device."""
    fn = lambda v, x: jax.nn.softmax(self.model.apply(v, self._normalize(x), train=False))
    return classification.predict(fn, variables, image, batch_size=self.config.train.batch_size)

  # --- what a person sees -------------------------------------------------------------------

  def showcase(self, variables) -> dict:
    """Top-1 accuracy on the eval split, accuracy per class, and the most frequent confusions."""
    test = self.split_arrays("test")
    predicted = self.probabilities(variables, test["image"]).argmax(-1)
    names = self.info.class_names
    m = classification.confusion_matrix(test["label"], predicted, len(names))
    correct, total = np.trace(m), m.sum()
    rows = [
        [name, int(m[i].sum()), int(m[i, i]), f"{100 * m[i, i] / max(m[i].sum(), 1):.1f}%"]
        for i, name in enumerate(names)
    ]
    print(
        f"\n{self.config.data.source}: top-1 {self.eval_name} accuracy "
        f"{100 * correct / total:.2f}% ({correct}/{total})\n"
        + classification.format_table(
            ["class", f"{self.eval_name} images", "correct", "accuracy"], rows
        ),
        flush=True,
    )
    off = m - np.diag(np.diag(m))
    worst = [(off[i, j], i, j) for i, j in zip(*np.nonzero(off))]
    if worst:
      print(
          "  most confused: "
          + ", ".join(
              f"{names[i]} taken for {names[j]} ({n}x)"
              for n, i, j in sorted(worst, reverse=True)[:5]
          ),
          flush=True,
      )
    return {"accuracy": correct / total, "per_class": {r[0]: r[2] / max(r[1], 1) for r in rows}}

  def predict(self, variables) -> list[tuple[str, float]] | str:
    """`--mode=predict --config.predict.input=<image file | folder | glob>`: a file prints (and
    returns) its top classes; a folder or a glob writes the CSV predict.output and returns its
    path (image_predict.py)."""
    p = self.config.predict
    if not p.input:
      raise UsageError(
          "--mode=predict needs --config.predict.input=<image file, folder or glob> "
          f"({image_files.KINDS})"
      )
    if not os.path.isfile(os.path.expanduser(p.input)):
      return self._predict_files(variables, os.path.expanduser(p.input))
    image = images.read_image(os.path.expanduser(p.input), self.info.shape)
    invert = self._invert(image)
    if invert:
      image = 255 - image
      logging.info("predict: inverted %s to light-on-dark like the training images", p.input)
    probs = self.probabilities(variables, image[None])[0]
    top = np.argsort(-probs)[: p.top_k]
    result = [(self.info.class_names[i], float(probs[i])) for i in top]
    print(
        f"{p.input}{' (inverted)' if invert else ''}:\n"
        + classification.format_table(
            ["class", "probability"], [[n, f"{q:.4f}"] for n, q in result]
        ),
        flush=True,
    )
    return result

  def _invert(self, image: np.ndarray) -> bool:
    # Digits and MNIST are light ink on black; a drawing is usually dark ink on white.
    p = self.config.predict
    return p.invert == "yes" or (
        p.invert == "auto" and self.stats["dark_background"] and images.border_mean(image) > 0.5
    )

  def _predict_files(self, variables, spec: str) -> str:
    p = self.config.predict
    output = p.output or os.path.join(self.workdir, "predictions.csv")
    if os.path.isdir(output):
      raise UsageError(f"predict.output={output} is a directory; give a file path for the CSV")
    root, paths = image_predict.list_inputs(spec)
    fn = jax.jit(lambda v, x: jax.nn.softmax(self.model.apply(v, self._normalize(x), train=False)))
    variables = jax.device_put(variables)  # once, not with every batch

    def classify(batch: np.ndarray) -> np.ndarray:  # uint8 (B, H, W, C) -> (B, classes)
      if p.invert != "no":
        flip = np.array([self._invert(x) for x in batch])[:, None, None, None]
        batch = np.where(flip, 255 - batch, batch)
      return np.asarray(fn(variables, batch))

    return image_predict.write_csv(
        paths,
        root=root,
        output=output,
        classify=classify,
        class_names=self.info.class_names,
        shape=self.info.shape,
        top_k=p.top_k,
        batch_size=p.batch_size,
        bad=image_files.BadImages(self.config.data.on_bad_image, "predict.input"),
    )
