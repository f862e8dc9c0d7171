"""Self-supervised pretraining of an image encoder (the `ssl` experiment): SimCLR, Chen et al. 2020.

Each training image is augmented twice (augment.ops, data/augment.py); the ViT encoder (models/
vit.py with no head) and a projector MLP map both views to unit vectors z, and the NT-Xent loss
asks each view to pick its partner out of the other 2B - 1 views of the batch:

  loss_i = -log( exp(z_i . z_pos(i) / t) / sum_{j != i} exp(z_i . z_j / t) ),   t = ssl.temperature

Labels are never used for training. Why SimCLR and not MAE: it needs only the augmentations we
have and works with any encoder, and on the 8x8 digits (16 patches of 2x2 pixels) a masked patch
is 4 pixels, too little context for MAE's reconstruction to teach shape.

Metrics: `loss`, and `accuracy` = the share of views whose most similar other view is their
partner (chance: 1 / (2B - 1)). Negatives are the views on the same device (under pmap each
device contrasts its own slice of the batch). At the end, `knn_accuracy`: test images classified
by a vote of their ssl.knn_k nearest training images in the encoder's feature space (cosine), the
usual check of an encoder without training anything on top.

Transfer: imagecls with model.name=vit and init_from=<this run's workdir> starts from the encoder
(checkpoint.params_from takes the encoder and leaves the projector); `--mode=transfer_study` runs
the comparison against training from scratch (transfer_study.py).

The data, statistics and dataset.json are imagecls's (this Task extends classify_image.Task).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax import classification, models, transfer_study
from bigmodel_jax.data import arrays
from bigmodel_jax.data import augment as augment_lib
from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import layers
from bigmodel_jax.tasks import classify_image

ENCODERS = ("vit",)
PROJECTOR = "projector"  # the top-level parameter group that is not the encoder


class Projector(nn.Module):
  """SimCLR's projection head: Dense -> ReLU -> Dense (the loss reads its output, not h)."""

  hidden: int
  out: int

  @nn.compact
  def __call__(self, h):  # (B, C) -> (B, out)
    dense = lambda n, name: nn.Dense(  # noqa: E731
        n,
        kernel_init=layers.normal(0.02, (None, None)),
        bias_init=layers.zeros((None,)),
        name=name,
    )
    return dense(self.out, "out")(nn.relu(dense(self.hidden, "fc")(h)))


def nt_xent(z, weight, temperature: float):
  """NT-Xent over z (2B, D): rows i and i + B are the two views of example i; weight (B,) is 0
  on padded rows, which are neither anchors nor negatives. -> (loss, metrics)."""
  n = weight.shape[0]
  z = z.astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-6)
  w = jnp.concatenate([weight, weight])  # (2B,)
  sim = z @ z.T / temperature  # (2B, 2B)
  valid = (w[None, :] > 0) & ~jnp.eye(2 * n, dtype=bool)
  sim = jnp.where(valid, sim, -1e9)
  partner = jnp.concatenate([jnp.arange(n) + n, jnp.arange(n)])  # (2B,)
  positive = jnp.take_along_axis(sim, partner[:, None], axis=1)[:, 0]
  nll = jax.nn.logsumexp(sim, axis=1) - positive
  correct = (sim.argmax(1) == partner).astype(jnp.float32)
  count = w.sum()
  metrics = {"loss": ((nll * w).sum(), count), "accuracy": ((correct * w).sum(), count)}
  return (nll * w).sum() / jnp.maximum(count, 1.0), metrics


class Task(classify_image.Task):
  """SimCLR on imagecls's images; metrics loss and accuracy (the partner found among the views)."""

  final_metric_names = ("knn_accuracy",)

  def __init__(self, config):
    super().__init__(config)
    s, a = config.ssl, config.augment
    if config.model.name not in ENCODERS:
      raise UsageError(
          f"model.name={config.model.name!r} cannot be pretrained by ssl; valid: "
          f"{', '.join(ENCODERS)}"
      )
    if s.temperature <= 0 or min(s.proj_hidden, s.proj_dim, s.knn_k) < 1:
      raise UsageError(
          f"ssl.temperature={s.temperature} must be > 0 and ssl.proj_hidden={s.proj_hidden}, "
          f"ssl.proj_dim={s.proj_dim}, ssl.knn_k={s.knn_k} positive integers"
      )
    self.settings = augment_lib.Settings(
        crop_padding=a.crop_padding, cutout=a.cutout, min_area=a.min_area, jitter=a.jitter
    )
    augment_lib.check(a.ops, self.settings)
    transfer_study.check(config.study)
    self.projector = Projector(s.proj_hidden, s.proj_dim)
    self.modes = {"transfer_study": self.transfer_study}

  def make_model(self):
    return models.make(self.config.model, ENCODERS, num_classes=0)  # the encoder: features

  def _settings(self) -> augment_lib.Settings:  # cutout fills with the mean pixel
    fill = tuple(round(m * 255) for m in self.stats["mean"])
    return augment_lib.Settings(**{**self.settings.__dict__, "fill": fill})

  def _two_views(self, batch, rng):
    ops, s = self.config.augment.ops, self._settings()
    x = batch["image"]
    return {
        **batch,
        "image": augment_lib.apply(ops, x, rng, s),
        "view2": augment_lib.apply(ops, x, rng, s),
    }

  def train_iterator(self, batch_size: int, seed: int, process_index: int, process_count: int):
    return iter(
        arrays.train_dataset(
            self.split_arrays("train", labelled=False),  # every image; labels are not used
            batch_size=batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            augment=self._two_views,
        )
    )

  def eval_batches(self, batch_size: int):
    # The same views at every evaluation (a fixed rng), so evaluations compare.
    return self._eval_batches(batch_size, self.config.train.eval_batches)

  @functools.lru_cache(maxsize=2)
  def _eval_batches(self, batch_size: int, max_batches: int):
    rng = np.random.default_rng(0)
    batches = arrays.eval_batches(
        self.split_arrays("test"), batch_size=batch_size, max_batches=max_batches
    )
    return [self._two_views(b, rng) for b in batches]

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    spec = super().batch_spec(batch_size)
    return {**spec, "view2": spec["image"]}

  def init_variables(self, rng):
    image = np.zeros((1, *self.info.shape), np.float32)
    encoder = self.model.init({"params": rng, "dropout": rng}, image)
    h = jax.eval_shape(self.model.apply, encoder, image)
    projector = self.projector.init(rng, jnp.zeros(h.shape, h.dtype))
    return {"params": {**encoder["params"], PROJECTOR: projector["params"]}}

  def features(self, params, image):  # uint8 (B, H, W, C) -> (B, C') encoder output
    encoder = {k: v for k, v in params.items() if k != PROJECTOR}
    return self.model.apply({"params": encoder}, self._normalize(image))

  def loss(self, params, model_state, batch, rng, train: bool):
    encoder = {k: v for k, v in params.items() if k != PROJECTOR}
    x = self._normalize(jnp.concatenate([batch["image"], batch["view2"]]))  # (2B, H, W, C)
    h = self.model.apply({"params": encoder}, x, train=train, rngs={"dropout": rng})
    z = self.projector.apply({"params": params[PROJECTOR]}, h)  # (2B, proj_dim)
    weight = batch.get("weight", jnp.ones(batch["image"].shape[:1], jnp.float32))
    loss, metrics = nt_xent(z, weight, self.config.ssl.temperature)
    return loss, (metrics, model_state)

  # --- what a person sees -------------------------------------------------------------------

  def knn_accuracy(self, variables) -> float:
    """Test images classified by a similarity-weighted vote of their ssl.knn_k nearest training
    images (cosine similarity of encoder features)."""
    fn = lambda v, x: self.features(v["params"], x)
    train, test = self.split_arrays("train"), self.split_arrays("test")
    size = self.config.train.batch_size
    f_train = classification.predict(fn, variables, train["image"], batch_size=size)
    f_test = classification.predict(fn, variables, test["image"], batch_size=size)
    f_train /= np.maximum(np.linalg.norm(f_train, axis=1, keepdims=True), 1e-6)
    f_test /= np.maximum(np.linalg.norm(f_test, axis=1, keepdims=True), 1e-6)
    k = min(self.config.ssl.knn_k, len(f_train))
    correct = 0
    for start in range(0, len(f_test), 1024):  # (1024, N_train) similarities at a time
      sim = f_test[start : start + 1024] @ f_train.T
      top = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (b, k)
      votes = np.zeros((len(sim), self.info.num_classes))
      np.add.at(
          votes,
          (np.arange(len(sim))[:, None], train["label"][top]),
          np.take_along_axis(sim, top, 1),
      )
      correct += int((votes.argmax(1) == test["label"][start : start + 1024]).sum())
    return correct / len(f_test)

  def final_metrics(self, variables) -> dict[str, float]:
    return {"knn_accuracy": self.knn_accuracy(variables)}

  def showcase(self, variables) -> dict:
    acc = self.knn_accuracy(variables)
    print(
        f"\n{self.config.data.source}: {self.config.ssl.knn_k}-nearest-neighbour "
        f"{self.eval_name} accuracy of the encoder's features (no labels in training): "
        f"{100 * acc:.2f}%\n  transfer: python run.py --experiment={self.config.experiment} "
        f"--mode=transfer_study "
        f"--workdir={self.workdir}",
        flush=True,
    )
    return {"knn_accuracy": acc}

  def transfer_study(self, variables):
    """`--mode=transfer_study`: imagecls from scratch vs from this encoder (transfer_study.py)."""
    del variables  # the runs start from the checkpoint in the workdir
    return transfer_study.run(self.config, self.workdir, self.split_arrays("train")["label"])
