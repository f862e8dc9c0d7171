"""Binary classification of table rows (tabular): an MLP on standardised, one-hot encoded features.

Batches are {"features": float32 (B, D), "label": float32 0/1 (B,)} (eval batches add "weight").
The model gives one logit per row; the loss is sigmoid binary cross-entropy on that logit, a row is
predicted positive when sigmoid(logit) >= 0.5, and AUC is computed on the host at the end
(`final_metrics`). The encoding is fitted on the training split only and saved with the run
(`preprocessing.json`, see bigmodel_jax/data/tables.py); the eval split is the held-out test split.
"""

import csv
import os

from absl import logging
import jax
import numpy as np

from bigmodel_jax import classification, models
from bigmodel_jax.data import tables
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import base

PREPROCESSING_FILE = "preprocessing.json"
BUNDLED_LABEL = {"breast_cancer": "diagnosis"}


class Task(base.ArrayTask):
  """Metrics: loss (mean BCE), accuracy (threshold 0.5); final_metrics adds auc."""

  final_metric_names = ("auc",)

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    if not 0 < d.test_fraction < 1:
      raise UsageError(f"data.test_fraction={d.test_fraction} must be in (0, 1)")
    if d.max_categories < 1:
      raise UsageError(f"data.max_categories={d.max_categories} must be >= 1")
    self.label_column = BUNDLED_LABEL.get(d.source, d.label_column)
    # The data are small: read, split and encode now, so every data error comes before any write.
    table = tables.load(d.source, label_column=d.label_column, drop_columns=tuple(d.drop_columns))
    self.tables = dict(zip(("train", "test"), tables.split(table, d.test_fraction, d.split_seed)))
    self.pre = tables.Preprocessing.fit(
        table, self.tables["train"], label_column=self.label_column, max_categories=d.max_categories
    )
    self.model = models.make(config.model, ("mlp",), num_outputs=1)
    self.modes = {"predict": self.predict}
    self.workdir = ""
    self._arrays = {}

  # --- data ---------------------------------------------------------------------------------

  def setup(self, workdir: str, create: bool) -> None:
    """Loads the run's preprocessing from the workdir, or (create) saves the one fitted here."""
    path = os.path.join(workdir, PREPROCESSING_FILE)
    if os.path.exists(path):
      self.pre = tables.Preprocessing.load(path)
    elif create:
      self.pre.save(path)
    else:
      raise RunError(
          f"no {PREPROCESSING_FILE} in {workdir}; train first with python run.py "
          f"--experiment={self.config.experiment} --workdir={workdir}"
      )
    self.workdir = workdir
    self._arrays = {}
    logging.info(
        "tabular: %d features after encoding (%d train rows, %d test rows); label %s: "
        "0 = %s, 1 = %s",
        len(self.pre.feature_names),
        len(self.tables["train"]),
        len(self.tables["test"]),
        self.pre.label_column,
        *self.pre.label_values,
    )

  def split_arrays(self, split: str) -> dict[str, np.ndarray]:
    if split not in self._arrays:
      table = self.tables[split]
      labels = self.pre.encode_labels(table.labels)
      if np.isnan(labels).any():
        raise RunError(
            f"{table.name}: the {split} split has labels other than "
            f"{self.pre.label_values} that this run's {PREPROCESSING_FILE} knows"
        )
      self._arrays[split] = {"features": self.pre.transform(table), "label": labels}
    return self._arrays[split]

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        "features": jax.ShapeDtypeStruct((batch_size, len(self.pre.feature_names)), np.float32),
        "label": jax.ShapeDtypeStruct((batch_size,), np.float32),
    }

  # --- model and loss -----------------------------------------------------------------------

  def init_variables(self, rng):
    features = np.zeros((1, len(self.pre.feature_names)), np.float32)
    return self.model.init({"params": rng, "dropout": rng}, features, train=False)

  def loss(self, params, model_state, batch, rng, train: bool):
    logits = self.model.apply(
        {"params": params, **model_state}, batch["features"], train=train, rngs={"dropout": rng}
    )[
        :, 0
    ]  # (B,)
    loss, metrics = classification.sigmoid_loss(logits, batch)
    return loss, (metrics, model_state)

  def probabilities(self, variables, features: np.ndarray) -> np.ndarray:
    """float32 (N, D) -> (N,) probability that the label is label_values[1]."""
    fn = lambda v, x: jax.nn.sigmoid(self.model.apply(v, x, train=False)[:, 0])
    return classification.predict(fn, variables, features, batch_size=self.config.train.batch_size)

  def final_metrics(self, variables) -> dict[str, float]:
    test = self.split_arrays("test")
    return {"auc": _auc(test["label"], self.probabilities(variables, test["features"]))}

  # --- what a person sees -------------------------------------------------------------------

  def showcase(self, variables) -> dict:
    """Test accuracy, AUC and the confusion matrix."""
    test = self.split_arrays("test")
    probs = self.probabilities(variables, test["features"])
    m = classification.confusion_matrix(test["label"], probs >= 0.5, 2)
    accuracy, auc = np.trace(m) / m.sum(), _auc(test["label"], probs)
    names = [f"{v} ({i})" for i, v in enumerate(self.pre.label_values)]
    print(
        f"\n{self.config.data.source}: {len(probs)} test rows, label {self.pre.label_column!r}\n"
        f"  test accuracy {100 * accuracy:.2f}% ({np.trace(m)}/{m.sum()}), AUC {auc:.4f}\n"
        + classification.format_confusion(m, names),
        flush=True,
    )
    return {"accuracy": float(accuracy), "auc": auc, "confusion": m.tolist()}

  def predict(self, variables) -> str:
    """`--mode=predict --config.predict.input=<csv>`: writes probability and predicted label per
    row to predict.output (default <workdir>/predictions.csv) and returns that path."""
    p = self.config.predict
    if not p.input:
      raise UsageError(
          "--mode=predict needs --config.predict.input=<csv file> with the feature "
          f"columns: {', '.join(f['name'] for f in self.pre.features)}"
      )
    output = p.output or os.path.join(self.workdir, "predictions.csv")
    if os.path.isdir(output):
      raise UsageError(f"predict.output={output} is a directory; give a file path for the CSV")
    if (
        os.path.exists(output)
        and os.path.exists(os.path.expanduser(p.input))
        and (os.path.samefile(output, os.path.expanduser(p.input)))
    ):
      raise UsageError(
          f"predict.output={output} is the input file; writing it would destroy the "
          "input, so give another path"
      )
    table = tables.read_csv(
        os.path.expanduser(p.input),
        label_column=self.pre.label_column,
        require_label=False,
        key="predict.input",
    )
    probs = self.probabilities(variables, self.pre.transform(table, key="predict.input"))
    predicted = (probs >= 0.5).astype(int)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["line", "probability", "prediction"])
      for line, q, k in zip(table.lines, probs, predicted):
        writer.writerow([int(line), f"{q:.6f}", self.pre.label_values[k]])
    counts = ", ".join(
        f"{int((predicted == k).sum())} {v}" for k, v in enumerate(self.pre.label_values)
    )
    print(
        f"wrote {len(probs)} predictions ({counts}) to {output}; probability = "
        f"P({self.pre.label_column} = {self.pre.label_values[1]}), prediction at >= 0.5",
        flush=True,
    )
    if table.labels is not None:  # the file also has the label: say how the model did on it
      truth = self.pre.encode_labels(table.labels)
      known = ~np.isnan(truth)
      if known.any():
        print(
            f"accuracy on the {int(known.sum())} labelled rows: "
            f"{100 * np.mean(predicted[known] == truth[known]):.2f}%",
            flush=True,
        )
    return output


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
  from sklearn import metrics  # pylint: disable=g-import-not-at-top

  if len(np.unique(labels)) < 2:
    return float("nan")  # undefined with one class
  return float(metrics.roc_auc_score(labels, scores))
