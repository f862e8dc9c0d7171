"""Recommendation (recsys): implicit feedback, leave-last-out, ranked over every item.

Training batches are (user, item) interactions: {"user": int32 (B,), "item": int32 (B,)}. The loss
(config.loss.name):
  softmax  cross-entropy of the interacted item against every item (loss.num_negatives=0), or
           against loss.num_negatives items drawn uniformly per batch and shared by its rows
           (sampled softmax; uniform draws need no log-Q correction, it is the same constant for
           every logit); a drawn item that is the row's own positive is masked out
  bpr      Bayesian personalised ranking: -log sigmoid(score(pos) - score(neg)), one uniformly
           drawn negative per interaction (Rendle et al. 2009)

Eval batches are evaluated users: {"user" (B,), "targets" int32 (B, holdout), "seen" bool (B, I),
"weight" (B,)}; each user's held-out items are ranked among all items but the user's training
items (bigmodel_jax/ranking.py). The eval "loss" is the held-out items' negative log-likelihood
under the softmax over those candidates, whatever the training loss. The most-popular baseline
(items ranked by their number of training users) is computed on the same split and reported next
to the model (final_metrics popular_*, and the showcase table).
"""

import functools
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigmodel_jax import json_files, models, ranking
from bigmodel_jax.data import arrays, interactions
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import base

IDS_FILE = "interactions.json"
LOSSES = ("softmax", "bpr")
UNKNOWN_USER = ("popular", "error")
_TOP_K = jax.jit(ranking.top_k_metrics)  # compiled once per batch shape, not per call


class Task(base.Task):
  """Metrics: loss; recall, NDCG and hit rate at 10; final_metrics adds the popular baseline's."""

  unit = "interactions"
  eval_metrics = ("loss", *ranking.NAMES)
  final_metric_names = tuple(f"popular_{n}" for n in ranking.NAMES)

  def __init__(self, config):
    super().__init__(config)
    d, loss, r = config.data, config.loss, config.recommend
    if d.holdout < 1:
      raise UsageError(f"data.holdout={d.holdout} must be >= 1 (last interactions held out)")
    if loss.name not in LOSSES:
      raise UsageError(f"loss.name={loss.name!r} is not valid; valid: {', '.join(LOSSES)}")
    if loss.num_negatives < 0:
      raise UsageError(f"loss.num_negatives={loss.num_negatives} must be >= 0 (0: every item)")
    if r.count < 1:
      raise UsageError(f"recommend.count={r.count} must be a positive integer")
    if r.unknown_user not in UNKNOWN_USER:
      raise UsageError(
          f"recommend.unknown_user={r.unknown_user!r} is not valid; "
          f"valid: {', '.join(UNKNOWN_USER)}"
      )
    # The data are small: read and split now, so every data error comes before any write.
    self.data = interactions.load(d)
    self.split = interactions.leave_last_out(self.data, d.holdout)
    if not len(self.split.eval_users):
      raise UsageError(
          f"data.source={d.source}: no user has more than data.holdout={d.holdout} "
          "interactions, so there is nothing to hold out and evaluate"
      )
    self.num_items = self.data.num_items
    self.model = models.make(
        config.model,
        ("mf", "two_tower"),
        num_users=self.data.num_users,
        num_items=self.num_items,
        user_features=self.data.user_features,
        item_features=self.data.item_features,
    )
    self.modes = {"recommend": self.recommend}
    self._popular = None

  # --- data ---------------------------------------------------------------------------------

  def setup(self, workdir: str, create: bool) -> None:
    """Checks the data against the user and item ids the run was trained on (saved at its start
    in IDS_FILE): an index means the same user and item in training and serving."""
    path = os.path.join(workdir, IDS_FILE)
    ids = {"users": self.data.user_ids, "items": self.data.item_ids}
    if os.path.exists(path):
      saved = json_files.read_json(path, "user and item ids")
      if saved.get("users") != ids["users"] or saved.get("items") != ids["items"]:
        raise RunError(
            f"data.source={self.config.data.source} now has other users or items than this run "
            f"was trained on ({path}); use the data it was trained on, or a fresh workdir"
        )
    elif create:
      with open(path, "w", encoding="utf-8") as f:
        json.dump(ids, f)
    else:
      raise RunError(
          f"no {IDS_FILE} in {workdir}; train first with python run.py "
          f"--experiment={self.config.experiment} --workdir={workdir}"
      )
    s = self.split
    logging.info(
        "recsys: %s; %d users, %d items; %d training interactions; %d users evaluated on their "
        "last %d",
        self.data.description,
        self.data.num_users,
        self.num_items,
        len(s.train_users),
        len(s.eval_users),
        self.config.data.holdout,
    )

  def train_iterator(self, batch_size: int, seed: int, process_index: int, process_count: int):
    s = self.split
    return iter(
        arrays.train_dataset(
            {"user": s.train_users, "item": s.train_items},
            batch_size=batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
        )
    )

  def eval_batches(self, batch_size: int):
    """Built one at a time as the evaluator asks (each holds a (B, I) mask)."""
    s, limit = self.split, self.config.train.eval_batches
    for n, start in enumerate(range(0, len(s.eval_users), batch_size)):
      if limit and n == limit:
        return
      users = s.eval_users[start : start + batch_size]
      rows = len(users)
      pad = batch_size - rows
      yield {
          "user": np.pad(users, (0, pad)),
          "targets": np.pad(
              s.targets[start : start + rows], ((0, pad), (0, 0)), constant_values=-1
          ),
          "seen": np.pad(s.seen_mask(users, self.num_items), ((0, pad), (0, 0))),
          "weight": (np.arange(batch_size) < rows).astype(np.float32),
      }

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        "user": jax.ShapeDtypeStruct((batch_size,), np.int32),
        "item": jax.ShapeDtypeStruct((batch_size,), np.int32),
    }

  # --- model and loss -----------------------------------------------------------------------

  def init_variables(self, rng):
    ids = jnp.zeros((1,), jnp.int32)
    return self.model.init(rng, ids, ids)

  def scores(self, params, users):
    """int (B,) -> float32 (B, I): every item's score for each user."""
    apply = functools.partial(self.model.apply, {"params": params})
    vectors, bias = apply(jnp.arange(self.num_items), method="items")
    return apply(users, method="users") @ vectors.T + bias

  def loss(self, params, model_state, batch, rng, train: bool):
    if "targets" in batch:  # an eval batch
      loss, metrics = self._eval(params, batch)
      return loss, (metrics, model_state)
    apply = functools.partial(self.model.apply, {"params": params})
    users, items = batch["user"], batch["item"]
    u = apply(users, method="users")  # (B, D)
    pos_vec, pos_bias = apply(items, method="items")
    pos = jnp.sum(u * pos_vec, -1) + pos_bias  # (B,)
    lc = self.config.loss
    if lc.name == "bpr":
      neg_items = jax.random.randint(rng, items.shape, 0, self.num_items)
      neg_vec, neg_bias = apply(neg_items, method="items")
      neg = jnp.sum(u * neg_vec, -1) + neg_bias
      nll = jnp.where(neg_items == items, 0.0, -jax.nn.log_sigmoid(pos - neg))
    elif lc.num_negatives == 0 or lc.num_negatives >= self.num_items:
      nll = optax.softmax_cross_entropy_with_integer_labels(self.scores(params, users), items)
    else:
      neg_items = jax.random.randint(rng, (lc.num_negatives,), 0, self.num_items)
      neg_vec, neg_bias = apply(neg_items, method="items")
      neg = u @ neg_vec.T + neg_bias  # (B, N)
      neg = jnp.where(neg_items[None, :] == items[:, None], -1e9, neg)
      nll = jax.nn.logsumexp(jnp.concatenate([pos[:, None], neg], 1), -1) - pos
    loss = jnp.mean(nll)
    return loss, ({"loss": (jnp.sum(nll), jnp.float32(nll.size))}, model_state)

  @staticmethod
  def _eval_nll(scores, batch):
    """(B,) mean NLL of each user's held-out items under the softmax over their candidates."""
    logits = jnp.where(batch["seen"], -1e9, scores)
    logp = jax.nn.log_softmax(logits, -1)
    valid = batch["targets"] >= 0
    nll = -jnp.take_along_axis(logp, jnp.maximum(batch["targets"], 0), -1)  # (B, H)
    return jnp.sum(nll * valid, -1) / jnp.maximum(valid.sum(-1), 1)

  def _eval(self, params, batch):
    w = batch["weight"]
    scores = self.scores(params, batch["user"])  # (B, I)
    values = ranking.top_k_metrics(scores, batch["seen"], batch["targets"])
    values["loss"] = self._eval_nll(scores, batch)
    metrics = {k: (jnp.sum(v * w), jnp.sum(w)) for k, v in values.items()}
    return metrics["loss"][0] / jnp.maximum(metrics["loss"][1], 1), metrics

  # --- host-side evaluation -----------------------------------------------------------------

  def evaluate(self, score_fn) -> dict[str, float]:
    """Ranking metrics of `score_fn(users int (B,)) -> (B, I) scores` over the evaluated users,
    computed as the eval step does, over the same batches (train.eval_batches counts them), so
    the popular baseline and the benchmark's ALS see exactly the users the model is scored on."""
    totals, count = {}, 0.0
    for batch in self.eval_batches(self.config.train.batch_size):
      w = batch["weight"]
      values = _TOP_K(score_fn(batch["user"]), batch["seen"], batch["targets"])
      for k, v in values.items():
        totals[k] = totals.get(k, 0.0) + float(np.sum(np.asarray(v) * w))
      count += float(w.sum())
    return {k: v / count for k, v in totals.items()}

  def popular_metrics(self) -> dict[str, float]:
    if self._popular is None:
      counts = self.split.popularity(self.num_items)
      self._popular = self.evaluate(
          lambda users: np.broadcast_to(counts, (len(users), len(counts)))
      )
    return self._popular

  def final_metrics(self, variables) -> dict[str, float]:
    del variables  # the baseline does not depend on the model
    return {f"popular_{k}": v for k, v in self.popular_metrics().items()}

  # --- what a person sees -------------------------------------------------------------------

  def showcase(self, variables) -> dict:
    """The model's ranking metrics next to the popular baseline's, and one user's list."""
    from bigmodel_jax import recommend  # pylint: disable=g-import-not-at-top

    return recommend.showcase(self, variables)

  def recommend(self, variables):
    """`--mode=recommend --config.recommend.user=<id>`: prints the top items with scores."""
    from bigmodel_jax import recommend  # pylint: disable=g-import-not-at-top

    return recommend.for_user(self, variables, self.config.recommend)
