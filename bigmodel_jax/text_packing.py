"""Packed rows for a text classifier (tasks/classify_text.py with `data.pack`): several texts per
row with segment ids and a logit slot each (data/packing.py `classification_rows`), for training
and eval; the task's own (unpacked) arrays stay what prediction and the showcase read."""

import functools

from absl import logging
import jax
import numpy as np

from bigmodel_jax.data import arrays, packing
from bigmodel_jax.errors import UsageError


class PackedRows:
  """Mixed into an ArrayTask with `_texts(split)` -> (texts, labels) and `_encode(texts)` ->
  (tokens (N, max_len), lengths before truncation); reads config.data.pack and max_segments."""

  def check_packing(self) -> None:
    config = self.config
    self.pack = bool(config.data.get("pack", False))
    if self.pack and config.model.name != "text_encoder":
      raise UsageError(
          f"data.pack=true needs model.name=text_encoder (segment ids); model.name="
          f"{config.model.name!r} reads one text per row: set data.pack=false"
      )
    self.max_segments = config.data.get("max_segments", 1)
    if self.pack and (not isinstance(self.max_segments, int) or self.max_segments < 1):
      raise UsageError(f"data.max_segments={self.max_segments!r} must be a positive integer")

  @functools.lru_cache(maxsize=4)
  def packed_rows(self, split: str, pack: bool = True) -> dict[str, np.ndarray]:
    """The split's texts in rows of several (or, pack=False, one) with segment ids: see
    packing.classification_rows."""
    texts, labels = self._texts(split)
    tokens, lengths = self._encode(texts)
    out = packing.classification_rows(
        tokens,
        np.minimum(lengths, tokens.shape[1]),
        labels,
        pack=pack,
        max_segments=self.max_segments if pack else 1,
        cls_slot=self.config.model.get("pooling") == "first",
        split=split,
    )
    logging.info(
        "%s split: %d texts in %d rows of %d (%s): %.1f%% padding",
        split,
        len(texts),
        len(out["tokens"]),
        out["tokens"].shape[1],
        "packed" if pack else "one text per row",
        100 * packing.waste(out["segment_ids"]),
    )
    return out

  def padding_waste(self, split: str = "train") -> dict[str, float]:
    """{"unpacked": fraction, "packed": fraction} of padding positions in the split's rows."""
    return {
        name: packing.waste(self.packed_rows(split, pack)["segment_ids"])
        for name, pack in (("unpacked", False), ("packed", True))
    }

  def train_iterator(self, batch_size: int, seed: int, process_index: int, process_count: int):
    if not self.pack:
      return super().train_iterator(batch_size, seed, process_index, process_count)
    self.split_arrays(self.train_split)  # logs the truncation
    return iter(
        arrays.train_dataset(
            self.packed_rows(self.train_split),
            batch_size=batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
        )
    )

  def eval_batches(self, batch_size: int):
    if not self.pack:
      return super().eval_batches(batch_size)
    return arrays.eval_batches(
        self.packed_rows(self.eval_split),
        batch_size=batch_size,
        max_batches=self.config.train.eval_batches,
    )

  def packed_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    width = self.config.model.max_len + (self.config.model.pooling == "first")
    rows, slots = (batch_size, width), (batch_size, self.max_segments)
    return {
        "tokens": jax.ShapeDtypeStruct(rows, np.int32),
        "segment_ids": jax.ShapeDtypeStruct(rows, np.int32),
        "label": jax.ShapeDtypeStruct(slots, np.int32),
        "label_weight": jax.ShapeDtypeStruct(slots, np.float32),
    }
