"""grain pipelines over in-memory example arrays (classification, translation, tabular, ...).

`arrays` is a dict of equally long numpy arrays, one row per example. Training batches are a
shuffled (reshuffled each epoch), repeated stream, split disjointly across processes, with an
optional per-batch random transform (augmentation) that grain seeds by position, so the stream is
deterministic for a seed and its iterator checkpoints like any grain iterator.
"""

from collections.abc import Callable

import grain
import numpy as np

from bigmodel_jax.errors import UsageError


def num_examples(arrays: dict[str, np.ndarray]) -> int:
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"arrays of different lengths: {lengths}")
  return next(iter(lengths.values()))


class _Gather(grain.transforms.Map):

  def __init__(self, arrays):
    self._arrays = arrays

  def map(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self._arrays.items()}


class _Augment(grain.transforms.RandomMap):

  def __init__(self, fn):
    self._fn = fn

  def random_map(self, batch, rng: np.random.Generator):
    return self._fn(batch, rng)


def train_dataset(
    arrays: dict[str, np.ndarray],
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    augment: Callable[[dict, np.random.Generator], dict] | None = None,
    split: str = "train",
) -> grain.MapDataset:
  """Infinite shuffled batches of `batch_size` (per process) rows; `iter()` it to train."""
  n = num_examples(arrays)
  if n < batch_size * process_count:
    raise UsageError(
        f"the {split} split has {n} examples, fewer than one batch of "
        f"train.batch_size={batch_size * process_count}"
    )
  ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat()
  ds = ds[process_index::process_count].batch(batch_size, drop_remainder=True)
  ds = ds.map(_Gather(arrays))
  return ds.random_map(_Augment(augment), seed=seed) if augment else ds


def eval_batches(
    arrays: dict[str, np.ndarray], *, batch_size: int, max_batches: int = 0
) -> list[dict[str, np.ndarray]]:
  """Every example once, in order; the last batch is padded and rows carry a 0/1 "weight"."""
  n = num_examples(arrays)
  batches = []
  for start in range(0, n, batch_size):
    if max_batches and len(batches) == max_batches:
      break
    rows = min(batch_size, n - start)
    batch = {k: _pad(v[start : start + rows], batch_size) for k, v in arrays.items()}
    batch["weight"] = (np.arange(batch_size) < rows).astype(np.float32)
    batches.append(batch)
  return batches


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  return (
      np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)]) if len(x) < size else x
  )
