"""How good generated images are, judged by a classifier our own imagecls trained on real images.

  class accuracy   the share of generated images the classifier labels as the class they were
                   conditioned on
  Frechet distance between Gaussians fitted to the classifier's penultimate features of two image
                   sets (Heusel et al. 2017's FID, with our classifier in place of Inception):
                   ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

The classifier is an imagecls run (`Classifier.load_or_train`): trained once through the one
trainer on the same data source and cached in its workdir; pointing at an existing imagecls
workdir reuses that run. Also here: the PNG grid that sampling writes.
"""

import functools
import os

from absl import logging
import jax
import numpy as np
from PIL import Image
import scipy.linalg

from bigmodel_jax import checkpoint, optim, parallel, steps, tasks
from bigmodel_jax import config as config_lib
from bigmodel_jax.errors import RunError, UsageError

CLASSIFIER_TASK = "classify_image"


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to features a (N, D) and b (M, D)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mu1, mu2 = a.mean(0), b.mean(0)
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():  # singular product: nudge both diagonals, as pytorch-fid does
    eps = np.eye(len(s1)) * 1e-6
    covmean = scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))
  covmean = np.real(covmean)  # rounding leaves tiny imaginary parts
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def classifier_config(spec: str, data) -> object:
  """The imagecls experiment `spec` (e.g. "imagecls", "imagecls:tiny") on our data settings."""
  try:
    config = config_lib.load_experiment(spec)
  except UsageError as e:
    raise UsageError(f"quality.classifier={spec!r}: {e}") from None
  if config.task != CLASSIFIER_TASK:
    raise UsageError(
        f"quality.classifier={spec!r} is a {config.task} experiment; give an image "
        "classification one, e.g. imagecls or imagecls:tiny"
    )
  same = {k: data[k] for k in ("source", "tfds_data_dir", "test_fraction", "split_seed")}
  config_lib.set_values(config, {f"data.{k}": v for k, v in same.items()}, "quality.classifier")
  config_lib.validate(config)
  return config


def restore(config, workdir: str):
  """-> (task set up from the workdir, the latest TrainState on one device, its step) of a run."""
  task = tasks.get(config.task)(config)
  task.setup(workdir, create=False)
  tx, _ = optim.make_optimizer(config.train)
  init_fn = functools.partial(steps.init_state, task=task, tx=tx)
  one_device = parallel.PmapStrategy(jax.local_devices()[:1])
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
  restored = ckpt.restore_latest(one_device.abstract(init_fn, jax.random.key(0)), None, config)
  ckpt.close()
  if restored is None:
    raise RunError(f"no checkpoint in {ckpt.directory}")
  return task, *restored


class Classifier:
  """A trained imagecls model: class probabilities and penultimate features of uint8 images."""

  def __init__(self, task, variables):
    self.task, self.variables = task, variables

  @classmethod
  def load_or_train(cls, config, workdir: str) -> "Classifier":
    if checkpoint.latest_step_number(os.path.join(workdir, checkpoint.DIRECTORY)) is None:
      logging.info("Training the quality classifier (%s) in %s", config.experiment, workdir)
      # Imported here: the trainer runs tasks, and this module is used by one.
      from bigmodel_jax import trainer  # pylint: disable=g-import-not-at-top

      trainer.run(config, workdir)
    task, state, _ = restore(config, workdir)
    return cls(task, {"params": state.params, **state.model_state})

  @functools.cached_property
  def _apply(self):
    task = self.task
    # The CNN's hidden layer, or (ResNet, no hidden layer) its last block, average-pooled.
    feature_layer = "hidden" if "hidden" in self.variables["params"] else None

    def fn(variables, image):
      logits, state = task.model.apply(
          variables,
          task._normalize(image),  # pylint: disable=protected-access (the task's own scaling)
          train=False,
          capture_intermediates=lambda m, _: m.name == feature_layer
          if feature_layer
          else m.name is not None and m.name.startswith("stage"),
          mutable=["intermediates"],
      )
      captured = state["intermediates"]
      h = captured[sorted(captured)[-1] if not feature_layer else feature_layer]["__call__"][0]
      if h.ndim == 4:
        h = h.mean(axis=(1, 2))  # (B, H, W, C) -> (B, C)
      return jax.nn.softmax(logits), h

    return jax.jit(fn)

  def __call__(self, image: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, C) -> (probabilities (N, classes), features (N, D))."""
    outs = [
        self._apply(self.variables, image[i : i + batch_size])
        for i in range(0, len(image), batch_size)
    ]
    return tuple(np.concatenate([np.asarray(o[k]) for o in outs]) for k in range(2))


def save_grid(image: np.ndarray, path: str, scale: int) -> str:
  """uint8 (rows, cols, H, W, C) -> a PNG of rows x cols cells, each pixel `scale` x `scale`,
  on a mid-grey canvas with a gap of max(1, scale // 4) pixels between cells; returns the path."""
  rows, cols, h, w, c = image.shape
  gap, cell_h, cell_w = max(1, scale // 4), h * scale, w * scale
  canvas = np.full((rows * (cell_h + gap) + gap, cols * (cell_w + gap) + gap, c), 128, np.uint8)
  big = image.repeat(scale, axis=2).repeat(scale, axis=3)  # (rows, cols, H*scale, W*scale, C)
  for r in range(rows):
    for k in range(cols):
      y, x = gap + r * (cell_h + gap), gap + k * (cell_w + gap)
      canvas[y : y + cell_h, x : x + cell_w] = big[r, k]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(path)
  return path
