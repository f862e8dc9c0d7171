"""Packed training rows for translation (tasks/translate.py with `data.pack`): several (source,
target) pairs per row, the sources in a row of data.packed_source_len tokens and their targets, in
the same order, in a row of data.packed_target_len, with segment ids (data/packing.py `streams`)
that keep the pairs apart in the model (models/seq2seq.py). Only training reads packed rows:
validation, BLEU, beam search, --mode=translate and serving read one pair (or source) per row."""

import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.data import arrays, packing
from bigmodel_jax.errors import UsageError

SEGMENT_KEYS = ("src_segments", "tgt_segments")


class PackedPairs:
  """Mixed into the translate Task, whose `split_arrays(split)` gives {"inputs" (N, S), "targets"
  (N, T)} PAD-filled (one pair per row); reads data.pack, data.packed_{source,target}_len."""

  def check_packing(self) -> None:
    # .get: a translate config written before packing (a fork's own get_config) trains unpacked.
    d = self.config.data
    self.pack = d.get("pack", False)
    if not isinstance(self.pack, bool):
      raise UsageError(f"data.pack={self.pack!r} must be true or false")
    for side in ("source", "target"):
      width, longest = d.get(f"packed_{side}_len", 0), d[f"max_{side}_len"]
      if width != 0 and width < longest:
        raise UsageError(
            f"data.packed_{side}_len={width} must be 0 (= data.max_{side}_len) or >= "
            f"data.max_{side}_len={longest}: every pair that fits max_{side}_len must fit a row"
        )

  def packed_widths(self) -> tuple[int, int]:
    d = self.config.data
    return (
        d.get("packed_source_len", 0) or d.max_source_len,
        d.get("packed_target_len", 0) or d.max_target_len,
    )

  @functools.lru_cache(maxsize=4)
  def packed_rows(self, split: str, pack: bool = True) -> dict[str, np.ndarray]:
    """The split's pairs (the training split: those that fit) several to a row, or (pack=False)
    one to a row, in rows of packed_widths(): {"inputs", "src_segments"} (R, S'), {"targets",
    "tgt_segments"} (R, T'), PAD where the segment id is 0."""
    data = self.split_arrays(split)
    pad = self.model.tgt_specials[0]  # one PAD id for both sides (special_ids)
    pairs = [
        ({"inputs": s[s != pad]}, {"targets": t[t != pad]})
        for s, t in zip(data["inputs"], data["targets"])
    ]
    widths = self.packed_widths() if pack else (data["inputs"].shape[1], data["targets"].shape[1])
    src, tgt = packing.streams(pairs, widths, pack)
    out = {
        "inputs": np.where(src["segment_ids"] > 0, src["inputs"], pad).astype(np.int32),
        "src_segments": src["segment_ids"],
        "targets": np.where(tgt["segment_ids"] > 0, tgt["targets"], pad).astype(np.int32),
        "tgt_segments": tgt["segment_ids"],
    }
    logging.info(
        "%s split: %d pairs in %d rows of %d + %d tokens (%s): %.1f%% padding",
        split,
        len(pairs),
        len(out["inputs"]),
        *widths,
        "packed" if pack else "one pair per row",
        100 * self._waste(out),
    )
    return out

  @staticmethod
  def _waste(rows: dict[str, np.ndarray]) -> float:
    """Padding positions over all positions, source and target rows together."""
    segments = np.concatenate([rows[k].ravel() for k in SEGMENT_KEYS])
    return packing.waste(segments)

  def padding_waste(self, split: str = "train") -> dict[str, float]:
    """{"unpacked": fraction, "packed": fraction} of padding positions in the split's rows
    (source and target rows together; unpacked rows are data.max_{source,target}_len wide)."""
    return {
        name: self._waste(self.packed_rows(split, pack))
        for name, pack in (("unpacked", False), ("packed", True))
    }

  def train_iterator(self, batch_size: int, seed: int, process_index: int, process_count: int):
    if not self.pack:
      return super().train_iterator(batch_size, seed, process_index, process_count)
    rows = self.packed_rows(self.train_split)
    # The throughput line counts pairs, not rows: the mean number of pairs a row holds.
    self.units_per_example = float(rows["src_segments"].max(1).mean())
    return iter(
        arrays.train_dataset(
            rows,
            batch_size=batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            split=f"{self.train_split} (rows of packed pairs)",
        )
    )

  def packed_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    (s, t), int32 = self.packed_widths(), np.int32
    return {
        "inputs": jax.ShapeDtypeStruct((batch_size, s), int32),
        "src_segments": jax.ShapeDtypeStruct((batch_size, s), int32),
        "targets": jax.ShapeDtypeStruct((batch_size, t), int32),
        "tgt_segments": jax.ShapeDtypeStruct((batch_size, t), int32),
    }


def segment_starts(segments):
  """(B, T) segment ids -> (B, T) bool: each pair's first target token (where BOS goes in)."""
  before = jnp.concatenate([jnp.zeros_like(segments[:, :1]), segments[:, :-1]], axis=1)
  return (segments != before) & (segments > 0)


def exact_pairs(correct, mask, segments):
  """correct, mask (B, T) bool and segment ids (B, T) -> (pairs whose every target token is
  right, pairs), as float32 scalars. Segment ids are < T + 1 (a pair has >= 1 target token)."""
  onehot = jax.nn.one_hot(segments, segments.shape[1] + 1, dtype=jnp.int32)[..., 1:]  # (B, T, T)
  present = jnp.einsum("bt,bts->bs", mask.astype(jnp.int32), onehot) > 0  # (B, T) slots
  wrong = jnp.einsum("bt,bts->bs", (mask & ~correct).astype(jnp.int32), onehot) > 0
  return (present & ~wrong).sum().astype(jnp.float32), present.sum().astype(jnp.float32)
