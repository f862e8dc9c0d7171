"""Class-conditional image generation (imagegen): flow matching with a U-Net (flow_matching.py).

Batches are {"image": uint8 (B, H, W, C), "label": int32 (B,)} (eval batches add "weight"), scaled
to [-1, 1] on the device. model_state holds the EMA of the weights ({"ema": {"params", "count"}}),
updated inside the loss on every training step (so it is checkpointed and resumed exactly with the
rest of the state, and a rejected non-finite step leaves it untouched too). Evaluation's loss,
sampling and the quality figures all use the EMA weights.

Final metrics (end of training, --mode=eval; image_quality.py): the held-out split is cut in two
halves A and B (alternate rows). We generate one image for each row of B, conditioned on its class,
and an imagecls classifier trained on the real training images reports
  class_accuracy  the share of generated images it labels as their conditioned class
  fid             Frechet distance of its features: generated vs A
  fid_real        the same between B and A: what real images score at this sample size
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax import flow_matching, image_quality, json_files, models
from bigmodel_jax.data import image_cache, images
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import base

DATASET_FILE = "dataset.json"
SAMPLE_CHUNK = 500  # images generated per compiled call (x2 with guidance)


class Task(base.ArrayTask):
  """Velocity regression (flow matching); metric: loss (mean squared error per pixel)."""

  eval_metrics = ("loss",)
  final_metric_names = ("class_accuracy", "fid", "fid_real")

  def __init__(self, config):
    super().__init__(config)
    d, f, s = config.data, config.flow, config.sample
    if image_cache.is_local(d.source):
      raise UsageError(
          f"data.source={d.source}: imagegen trains on digits or a prepared tfds:<name> dataset "
          "(tfds:mnist, tfds:fashion_mnist, tfds:cifar10)"
      )
    if not 0 < d.test_fraction < 1:
      raise UsageError(f"data.test_fraction={d.test_fraction} must be in (0, 1)")
    if not 0 <= f.label_dropout < 1 or not 0 <= f.ema_decay < 1:
      raise UsageError(
          f"flow.label_dropout={f.label_dropout} and flow.ema_decay={f.ema_decay} must be in "
          "[0, 1)"
      )
    if s.guidance_scale < 0:
      raise UsageError(
          f"sample.guidance_scale={s.guidance_scale} must be >= 0 (0: unconditional, "
          "1: conditional, above 1: stronger guidance)"
      )
    if s.steps < 1:
      raise UsageError(f"sample.steps={s.steps} must be >= 1 (Euler steps from noise to image)")
    if s.per_class < 1 or s.scale < 1:
      raise UsageError(
          f"sample.per_class={s.per_class} and sample.scale={s.scale} must be >= 1 (images "
          "per row; screen pixels per image pixel)"
      )
    self._check_classes(None)
    images.check(d.source, d.tfds_data_dir)  # cheap; the dataset itself is opened on first use
    models.make(config.model, ("unet",), num_classes=2)  # checks the model's settings
    self.classifier_config = image_quality.classifier_config(config.quality.classifier, d)
    self.workdir = ""
    self.modes = {"sample": self.sample}
    self._quality = (None, None)  # (fingerprint of the EMA weights, final metrics) of the last run
    self._real_accuracy = float("nan")  # the classifier's accuracy on real half B

  @functools.cached_property
  def dataset(self) -> images.Source:
    d = self.config.data
    return images.Source(
        d.source, data_dir=d.tfds_data_dir, test_fraction=d.test_fraction, split_seed=d.split_seed
    )

  @functools.cached_property
  def info(self) -> images.Info:  # the dataset's, until setup loads the run's
    return self.dataset.info

  @functools.cached_property
  def model(self):
    return models.make(self.config.model, num_classes=self.info.num_classes)

  # --- data ---------------------------------------------------------------------------------

  def setup(self, workdir: str, create: bool) -> None:
    """Loads the run's dataset facts (source, image shape, classes) or, with create, saves them."""
    path = os.path.join(workdir, DATASET_FILE)
    self.workdir = workdir
    if os.path.exists(path):
      saved = json_files.read_json(path, "dataset facts (shape, class names)")
      self.info = images.Info(tuple(saved["shape"]), saved["class_names"])
      if saved["source"] != self.config.data.source:
        raise RunError(
            f"this run was trained on {saved['source']} (its {DATASET_FILE}) but data.source="
            f"{self.config.data.source}; pass --config.data.source={saved['source']} or use a "
            "new --workdir"
        )
    elif create:
      with open(path, "w") as f:
        json.dump(
            {
                "source": self.config.data.source,
                "shape": list(self.info.shape),
                "class_names": self.info.class_names,
            },
            f,
            indent=2,
        )
    else:
      raise RunError(
          f"no {DATASET_FILE} in {workdir}; train first with python run.py "
          f"--experiment={self.config.experiment} --workdir={workdir}"
      )
    self.model = models.make(self.config.model, num_classes=self.info.num_classes)

  @functools.lru_cache(maxsize=2)
  def split_arrays(self, split: str) -> dict[str, np.ndarray]:
    return self.dataset.load(split)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        "image": jax.ShapeDtypeStruct((batch_size, *self.info.shape), np.uint8),
        "label": jax.ShapeDtypeStruct((batch_size,), np.int32),
    }

  # --- model and loss -----------------------------------------------------------------------

  def init_variables(self, rng):
    x = np.zeros((1, *self.info.shape), np.float32)
    params = self.model.init(rng, x, np.zeros((1,), np.float32), np.zeros((1,), np.int32))["params"]
    return {"params": params, "ema": {"params": params, "count": jnp.zeros((), jnp.float32)}}

  def loss(self, params, model_state, batch, rng, train: bool):
    x1 = flow_matching.from_uint8(batch["image"])  # (B, H, W, C) in [-1, 1]
    b = x1.shape[0]
    rng_t, rng_noise, rng_label, rng_dropout = jax.random.split(rng, 4)
    t = jax.random.uniform(rng_t, (b,))
    xt, target = flow_matching.interpolate(x1, jax.random.normal(rng_noise, x1.shape), t)
    label = batch["label"]
    if train:
      label = flow_matching.drop_labels(
          rng_label, label, self.config.flow.label_dropout, self.info.num_classes
      )
    weights = params if train else model_state["ema"]["params"]
    v = self.model.apply(
        {"params": weights}, xt, t, label, train=train, rngs={"dropout": rng_dropout}
    )
    per_example = ((v - target) ** 2).mean(axis=(1, 2, 3))  # (B,)
    w = batch["weight"] if "weight" in batch else jnp.ones((b,), jnp.float32)
    total, count = (per_example * w).sum(), w.sum()
    return total / jnp.maximum(count, 1.0), ({"loss": (total, count)}, model_state)

  def after_update(self, params, model_state):
    """The EMA moves once per optimizer step, towards the updated weights."""
    ema = flow_matching.ema_update(model_state["ema"], params, self.config.flow.ema_decay)
    return {**model_state, "ema": ema}

  # --- generation ---------------------------------------------------------------------------

  def _velocity(self, variables, x, t, label):
    return self.model.apply(variables, x, t, label, train=False)

  def generate(self, variables, labels: np.ndarray, seed: int) -> np.ndarray:
    """-> uint8 (N, H, W, C): one image per class id in labels, from the EMA weights."""
    s = self.config.sample
    ema = {"params": variables["ema"]["params"]}
    out = []
    for i in range(0, len(labels), SAMPLE_CHUNK):
      x = flow_matching.sample(
          self._velocity,
          ema,
          jnp.asarray(labels[i : i + SAMPLE_CHUNK], jnp.int32),
          jax.random.fold_in(jax.random.key(seed), i),
          jnp.float32(s.guidance_scale),
          shape=tuple(self.info.shape),
          steps=s.steps,
          null=self.info.num_classes,
      )
      out.append(np.asarray(flow_matching.to_uint8(x)))
    return np.concatenate(out) if out else np.zeros((0, *self.info.shape), np.uint8)

  def _check_classes(self, num_classes: int | None) -> list[int]:
    classes = [int(c) for c in self.config.sample.classes]
    top = num_classes if num_classes is not None else float("inf")
    bad = [c for c in classes if not 0 <= c < top]
    if bad:
      valid = f"0..{num_classes - 1}" if num_classes is not None else "class ids >= 0"
      raise UsageError(
          f"sample.classes={tuple(classes)}: class id {bad[0]} is out of range; valid: {valid} "
          "(() = every class)"
      )
    return classes or list(range(num_classes or 0))

  def sample(self, variables) -> str:
    """`--mode=sample`: a PNG grid, one row per class of sample.classes (() = all), sample.per_class
    images each; prints and returns where it went."""
    s = self.config.sample
    classes = self._check_classes(self.info.num_classes)
    output = s.output or os.path.join(self.workdir, "samples.png")
    if os.path.isdir(output):
      raise UsageError(f"sample.output={output} is a directory; give a .png file path")
    labels = np.repeat(np.array(classes, np.int32), s.per_class)
    generated = self.generate(variables, labels, s.seed)
    grid = generated.reshape(len(classes), s.per_class, *self.info.shape)
    image_quality.save_grid(grid, output, s.scale)
    names = [self.info.class_names[c] for c in classes]
    print(
        f"wrote {len(classes)} x {s.per_class} samples (rows: {', '.join(names)}; guidance "
        f"{s.guidance_scale}, {s.steps} steps) to {output}",
        flush=True,
    )
    return output

  # --- quality ------------------------------------------------------------------------------

  def final_metrics(self, variables) -> dict[str, float]:
    """class_accuracy, fid and fid_real (see the module doc); one generation per call."""
    key = float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(variables["ema"])))
    if self._quality[0] == key:
      return dict(self._quality[1])
    q = self.config.quality
    classifier = image_quality.Classifier.load_or_train(
        self.classifier_config, q.classifier_workdir or os.path.join(self.workdir, "classifier")
    )
    test = self.split_arrays("test")
    a, b = np.arange(0, len(test["label"]), 2), np.arange(1, len(test["label"]), 2)
    generated = self.generate(variables, test["label"][b], q.seed)
    probs, gen_features = classifier(generated)
    real_probs, real_b = classifier(test["image"][b])
    _, real_a = classifier(test["image"][a])
    values = {
        "class_accuracy": float((probs.argmax(-1) == test["label"][b]).mean()),
        "fid": image_quality.frechet_distance(gen_features, real_a),
        "fid_real": image_quality.frechet_distance(real_b, real_a),
    }
    self._quality = (key, values)
    self._real_accuracy = float((real_probs.argmax(-1) == test["label"][b]).mean())
    return values

  def showcase(self, variables) -> dict:
    """Writes the sample grid, and prints the quality figures next to the real-vs-real ones."""
    self.sample(variables)
    values = self.final_metrics(variables)
    n = len(self.split_arrays("test")["label"]) // 2
    print(
        f"quality ({n} generated vs {n} held-out real images, judged by "
        f"{self.config.quality.classifier}): classified as their class "
        f"{100 * values['class_accuracy']:.1f}% (real images: {100 * self._real_accuracy:.1f}%); "
        f"Frechet distance {values['fid']:.3f} (real vs real: {values['fid_real']:.3f})",
        flush=True,
    )
    return values
