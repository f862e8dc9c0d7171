"""Sequence packing: several examples per row, with segment ids so a model keeps them apart.

A row of length T holds examples back to back in their order (next-fit: an example that does not
fit the rest of the row starts a new one; keeping order keeps the rows deterministic and the cost
linear). Each token carries its example's segment id (1, 2, ... within the row; 0 is padding), so
attention stays within a segment and positions restart at each segment's start (see
models/attention.py `packed_positions_and_mask`; models/text_encoder.py, which also pools each
segment into a logit slot of its own: `classification_rows`). Without packing, each example is a
row of its own, padded to T, which is what padding costs today.

Waste is the fraction of row positions that are padding. Measured on the default data: sft's
20,000 generated exchanges (26.7 bytes each on average, rows of 256) 89.6% unpacked, 5.4% packed
(2,204 rows instead of 20,000); sentiment's 20,000 reviews (14.5 tokens, rows of max_len 40)
63.8% unpacked, 22.0% packed (9,286 rows); translate's 30,000 date pairs (source and target rows
of 32 + 12 tokens) 43.1% unpacked, 15.6% packed in rows of 64 + 48 (7,948 rows, `streams`).
`python -m bigmodel_jax.tools.padding_waste` prints these.
"""

from collections.abc import Sequence

import numpy as np

from bigmodel_jax.data import too_long
from bigmodel_jax.errors import UsageError

Fields = dict[str, np.ndarray]  # name -> (L,) per-token values of one example


def lm_fields(pieces: Sequence[tuple[str, bool]], tokenizer) -> Fields:
  """(text, is_target) pieces -> {"inputs", "targets", "weights"} (L - 1,) for next-token
  prediction on a tokenized example of L tokens: a target token is one a target piece wrote."""
  ids = [np.asarray(tokenizer.encode(text), np.int32) for text, _ in pieces]
  tokens = np.concatenate(ids) if ids else np.zeros((0,), np.int32)
  marks = np.concatenate([np.full(len(t), target, bool) for t, (_, target) in zip(ids, pieces)])
  return {
      "inputs": tokens[:-1],
      "targets": tokens[1:],
      "weights": marks[1:].astype(np.float32),
  }


def rows(
    examples: Sequence[Fields],
    seq_len: int,
    pack: bool,
    split: str,
    limit: str,
    max_segments: int = 0,
) -> tuple[Fields, int]:
  """Examples (each a dict of equal-length (L,) arrays, L <= seq_len) -> ({name: (N, seq_len)}
  plus "segment_ids" (N, seq_len) int32, number of real tokens). Examples longer than seq_len are
  left out and counted in the log (`limit` names the setting); all of them too long is an error.
  max_segments > 0 caps the examples in a row (a model with a slot per example has that many)."""
  fitting = [e for e in examples if 0 < len(next(iter(e.values()))) <= seq_len]
  too_long.log_split(
      split, len(examples) - len(fitting), len(examples), "examples", limit, "left out"
  )
  if not fitting:
    raise UsageError(
        f"every example of the {split} split is longer than {limit} (or empty); raise it or "
        "shorten the examples"
    )
  (out,) = streams([(e,) for e in fitting], (seq_len,), pack, max_segments)
  return out, sum(len(next(iter(e.values()))) for e in fitting)


def streams(
    examples: Sequence[Sequence[Fields]],
    widths: Sequence[int],
    pack: bool,
    max_segments: int = 0,
) -> list[Fields]:
  """Examples made of several streams (e.g. a translation pair: the source, the target), each
  stream's part (a dict of equal-length (L_i,) arrays, 0 < L_i <= widths[i]) -> per stream {name:
  (N, widths[i])} plus "segment_ids". An example's parts share a row and a segment id, so the
  streams' rows match one to one; an example starts a new row when any part does not fit the
  rest of its stream's row (next-fit, in order), or when the row holds max_segments (> 0)."""
  placement, row, used, count = [], 0, [0] * len(widths), 0  # (row, offsets) of each example
  for parts in examples:
    sizes = [len(next(iter(p.values()))) for p in parts]
    full = any(u + n > w for u, n, w in zip(used, sizes, widths)) or 0 < max_segments <= count
    if any(used) and (not pack or full):
      row, used, count = row + 1, [0] * len(widths), 0
    placement.append((row, tuple(used)))
    used, count = [u + n for u, n in zip(used, sizes)], count + 1
  out = []
  for i, width in enumerate(widths):
    fields = {k: np.zeros((row + 1, width), v.dtype) for k, v in examples[0][i].items()}
    fields["segment_ids"] = np.zeros((row + 1, width), np.int32)
    out.append(fields)
  segment = np.zeros(row + 1, np.int32)
  for parts, (r, offsets) in zip(examples, placement):
    segment[r] += 1
    for fields, part, offset in zip(out, parts, offsets):
      n = len(next(iter(part.values())))
      for k, v in part.items():
        fields[k][r, offset : offset + n] = v
      fields["segment_ids"][r, offset : offset + n] = segment[r]
  return out


def waste(segment_ids: np.ndarray) -> float:
  """The fraction of positions that are padding (segment id 0)."""
  return float((segment_ids == 0).mean()) if segment_ids.size else 0.0


def classification_rows(
    tokens: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    *,
    pack: bool,
    max_segments: int,
    cls_slot: bool,
    split: str,
) -> Fields:
  """Padded texts (N, T) int32 with their lengths (N,) (<= T) and labels (N,) -> rows for a
  classifier with a slot per text: {"tokens", "segment_ids"} (R, T + cls_slot) and {"label",
  "label_weight"} (R, max_segments), slot s holding segment s + 1 (weight 0 on empty slots).
  cls_slot leaves a position (token 0) before each text for the model's [CLS]."""
  examples = []
  for row, n, y in zip(tokens, lengths, labels):
    ids = np.concatenate([np.zeros(int(cls_slot), np.int32), row[:n]])
    examples.append({"tokens": ids, "label": np.full(len(ids), y, np.int32)})
  # Every text fits (it was cut to T); an empty one (no [CLS] slot) is left out, and logged.
  width = tokens.shape[1] + cls_slot
  out, _ = rows(examples, width, pack, split, f"{width} tokens", max_segments)
  slots = out["segment_ids"][:, None, :] == np.arange(1, max_segments + 1)[None, :, None]
  return {
      "tokens": out["tokens"],
      "segment_ids": out["segment_ids"],
      # (R, S): the label every token of segment s + 1 carries (labels are >= 0)
      "label": np.where(slots, out["label"][:, None, :], 0).max(-1).astype(np.int32),
      "label_weight": slots.any(-1).astype(np.float32),
  }
