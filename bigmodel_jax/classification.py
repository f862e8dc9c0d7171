"""What classification tasks share: losses with their metrics, batched host-side inference, tables.

Used by `tasks/classify_image.py` (softmax over classes) and `tasks/tabular.py` (one sigmoid logit).
Metrics follow the task contract: {name: (sum, count)} float32 scalars, every sum and count
weighted by the batch's 0/1 "weight" (eval batches: 0 on padding rows; training batches have none).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _weights(batch: dict, n: int):
  return batch["weight"] if "weight" in batch else jnp.ones((n,), jnp.float32)


def softmax_loss(logits, batch: dict):
  """Mean cross-entropy over integer `batch["label"]`; logits (B, classes)."""
  labels = batch["label"]
  w = _weights(batch, labels.shape[0])
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  correct = (logits.argmax(-1) == labels).astype(jnp.float32)
  return _reduce(nll, correct, w)


def sigmoid_loss(logits, batch: dict):
  """Mean binary cross-entropy of one logit per row (B,) against 0/1 `batch["label"]`.

  The loss is on logits (numerically stable), never on probabilities; a row is predicted positive
  when its probability sigmoid(logit) is at least 0.5, i.e. when its logit is >= 0.
  """
  labels = batch["label"].astype(jnp.float32)
  w = _weights(batch, labels.shape[0])
  logits = logits.astype(jnp.float32)
  nll = optax.sigmoid_binary_cross_entropy(logits, labels)
  correct = ((logits >= 0).astype(jnp.float32) == labels).astype(jnp.float32)
  return _reduce(nll, correct, w)


def _reduce(nll, correct, w):
  count = w.sum()
  metrics = {"loss": ((nll * w).sum(), count), "accuracy": ((correct * w).sum(), count)}
  return (nll * w).sum() / jnp.maximum(count, 1.0), metrics


# --- host side -----------------------------------------------------------------------------------


def predict(fn: Callable, variables, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """`fn(variables, x)` over `inputs` in fixed-size batches (one compilation), as numpy."""
  jitted = jax.jit(fn)
  out = []
  for start in range(0, len(inputs), batch_size):
    x = inputs[start : start + batch_size]
    rows = len(x)
    if rows < batch_size:
      x = np.concatenate([x, np.zeros((batch_size - rows,) + x.shape[1:], x.dtype)])
    out.append(np.asarray(jitted(variables, x))[:rows])
  return np.concatenate(out)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """(num_classes, num_classes) counts: row = true class, column = predicted class."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
  return m


def format_table(header: Sequence[str], rows: Sequence[Sequence], indent: str = "  ") -> str:
  """A plain-text table: the first column left-aligned, the others right-aligned."""
  cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = []
  for r in cells:
    parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
    lines.append(indent + "  ".join(parts).rstrip())
  return "\n".join(lines)


def format_confusion(matrix: np.ndarray, names: Sequence[str]) -> str:
  header = ["true \\ predicted", *names]
  return format_table(header, [[n, *row] for n, row in zip(names, matrix.tolist())])
