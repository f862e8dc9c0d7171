"""CTC decoding on the host: greedy (best path) and prefix beam search. Label 0 is the blank.

Greedy takes the most probable label at each frame, merges repeats and drops blanks. Beam search
(Hannun et al. 2014, "First-pass large vocabulary continuous speech recognition", without a
language model) keeps the `beam_size` most probable label prefixes, each scored by the total
probability of every alignment that yields it, split into paths ending in blank and not.
"""

import collections

import numpy as np


def greedy(log_probs: np.ndarray) -> list[int]:
  """(T, V) log-probabilities of the real frames -> labels (blank 0 removed)."""
  best = log_probs.argmax(-1)
  return [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]


def beam_search(log_probs: np.ndarray, beam_size: int, prune: float = -12.0) -> list[int]:
  """(T, V) log-probabilities -> the most probable labelling found with `beam_size` prefixes.
  Labels whose frame log-probability is below `prune` are not tried (a speed-up that never
  changes a prefix's score by more than about e^prune per frame)."""
  neg_inf = -np.inf
  # prefix -> (log P(prefix, ending in blank), log P(prefix, ending in a label))
  beams = {(): (0.0, neg_inf)}
  for frame in log_probs:
    candidates = [int(c) for c in np.nonzero(frame >= prune)[0] if c != 0]
    nxt = collections.defaultdict(lambda: [neg_inf, neg_inf])
    for prefix, (p_blank, p_label) in beams.items():
      total = np.logaddexp(p_blank, p_label)
      entry = nxt[prefix]  # stays the same prefix: a blank, or the last label repeated
      entry[0] = np.logaddexp(entry[0], total + frame[0])
      if prefix:
        entry[1] = np.logaddexp(entry[1], p_label + frame[prefix[-1]])
      for c in candidates:
        longer = nxt[prefix + (c,)]
        # After a label, the same label again starts a new one only across a blank.
        from_prev = p_blank if prefix and c == prefix[-1] else total
        longer[1] = np.logaddexp(longer[1], from_prev + frame[c])
    ranked = sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))
    beams = {prefix: tuple(p) for prefix, p in ranked[:beam_size]}
  best = max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]))[0]
  return list(best)


def decode(log_probs: np.ndarray, lengths: np.ndarray, beam_size: int) -> list[list[int]]:
  """(B, T, V) with real frame counts (B,) -> label lists; beam_size <= 1 decodes greedily."""
  if beam_size <= 1:
    return [greedy(lp[:n]) for lp, n in zip(log_probs, lengths)]
  return [beam_search(lp[:n], beam_size) for lp, n in zip(log_probs, lengths)]
