"""Greedy and beam-search decoding for `models.seq2seq.Seq2Seq`, with its KV cache, jitted.

Both encode the source once, prime the decoder's cache (cross-attention keys/values computed once
from the encoder output), then feed one token per step inside a `lax.while_loop` that stops when
every row has finished or after `max_len` steps. `max_len` counts EOS: the last step may only emit
EOS, so every hypothesis ends with one. PAD and BOS are never emitted. Scores are model log-probs
(a softmax over the whole vocabulary), so they equal a teacher-forced rescoring of the output.

Beam search follows fairseq: each step extends the K live hypotheses, ranks the K*V candidates,
finalises the EOS candidates among the top K, and keeps the K best non-EOS ones alive; a row is done
once K hypotheses have finished. A finished hypothesis of n tokens (EOS included) with log-prob lp
scores lp / ((5 + n) / 6) ** length_penalty (GNMT; 0 = plain log-prob). With beam_size=1 this is
exactly greedy decoding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e9  # not -inf: sums and comparisons stay finite


def _start(model, params, src, repeat: int, max_len: int):
  """Encodes src (B, S), repeats rows `repeat` times, primes a cache of max_len steps."""
  decoder = model.clone(decode=True, decode_len=max_len, dropout=0.0)
  encoded, mask = model.apply({"params": params}, src, method="encode")  # (B, S, C), (B, S)
  encoded, mask = jnp.repeat(encoded, repeat, axis=0), jnp.repeat(mask, repeat, axis=0)
  bos = jnp.full((encoded.shape[0], 1), model.tgt_specials[1], jnp.int32)
  _, state = decoder.apply(
      {"params": params}, bos, encoded, mask, method="run_decoder", mutable=["cache"]
  )
  return decoder, state["cache"], mask


def _step(decoder, params, cache, tokens, mask, i, max_len):
  """Feeds tokens (N,) -> log-probs (N, V) of the next token, with the bans applied; new cache."""
  logits, state = decoder.apply(
      {"params": params, "cache": cache},
      tokens[:, None],
      None,
      mask,
      method="run_decoder",
      mutable=["cache"],
  )
  logp = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32))  # (N, V)
  pad, bos, eos = decoder.tgt_specials
  ids = jnp.arange(logp.shape[-1])
  banned = (ids == pad) | (ids == bos) | ((i == max_len - 1) & (ids != eos))
  return jnp.where(banned[None], NEG_INF, logp), state["cache"]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _greedy(model, params, src, max_len):
  B = src.shape[0]
  pad, bos, eos = model.tgt_specials
  decoder, cache, mask = _start(model, params, src, 1, max_len)

  def body(carry):
    i, tokens, last, logp, done, cache = carry
    lp, cache = _step(decoder, params, cache, last, mask, i, max_len)  # (B, V)
    new = jnp.where(done, pad, jnp.argmax(lp, axis=-1).astype(jnp.int32))  # (B,)
    logp = logp + jnp.where(done, 0.0, jnp.take_along_axis(lp, new[:, None], 1)[:, 0])
    tokens = tokens.at[:, i].set(new)
    return i + 1, tokens, new, logp, done | (new == eos), cache

  carry = (
      0,
      jnp.full((B, max_len), pad, jnp.int32),
      jnp.full((B,), bos, jnp.int32),
      jnp.zeros((B,), jnp.float32),
      jnp.zeros((B,), bool),
      cache,
  )
  _, tokens, _, logp, _, _ = jax.lax.while_loop(
      lambda c: (c[0] < max_len) & ~jnp.all(c[4]), body, carry
  )
  return tokens, logp


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _beam(model, params, src, max_len, K, length_penalty):
  B = src.shape[0]
  pad, bos, eos = model.tgt_specials
  decoder, cache, mask = _start(model, params, src, K, max_len)
  rows = jnp.arange(B)[:, None]  # (B, 1)

  def penalty(n):
    return ((5.0 + n) / 6.0) ** length_penalty

  def gather(x, idx):  # x (B, M, ...), idx (B, N) -> (B, N, ...)
    return x[rows, idx]

  def body(carry):
    i, alive, alive_lp, fin, fin_lp, fin_score, cache = carry
    last = jnp.where(i == 0, bos, alive[:, :, jnp.maximum(i - 1, 0)])  # (B, K)
    lp, cache = _step(decoder, params, cache, last.reshape(-1), mask, i, max_len)  # (B*K, V)
    V = lp.shape[-1]
    cand = (alive_lp[:, :, None] + lp.reshape(B, K, V)).reshape(B, K * V)
    top_lp, top = jax.lax.top_k(cand, 2 * K)  # (B, 2K), best first
    beam, token = top // V, (top % V).astype(jnp.int32)
    seqs = gather(alive, beam).at[:, :, i].set(token)  # (B, 2K, L)
    is_eos = token == eos
    # Alive: the K best non-EOS candidates; their caches follow their parent beams.
    alive_lp, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_lp), K)
    alive, parent = gather(seqs, keep), gather(beam, keep)  # (B, K, L), (B, K)
    flat = (rows * K + parent).reshape(-1)
    cache = jax.tree_util.tree_map_with_path(  # cross-attention keys/values are per row: kept
        lambda p, x: x if x.ndim == 0 or "cross" in jax.tree_util.keystr(p) else x[flat], cache
    )
    # Finished: EOS candidates among the top K, for rows that have fewer than K finished.
    done = jnp.all(fin_lp > NEG_INF / 2, axis=1, keepdims=True)  # (B, 1)
    new = is_eos & (jnp.arange(2 * K) < K)[None] & ~done & (top_lp > NEG_INF / 2)
    score = jnp.where(new, top_lp / penalty(i + 1.0), NEG_INF)
    fin_score, best = jax.lax.top_k(jnp.concatenate([fin_score, score], 1), K)
    fin = gather(jnp.concatenate([fin, seqs], 1), best)
    fin_lp = gather(jnp.concatenate([fin_lp, jnp.where(new, top_lp, NEG_INF)], 1), best)
    return i + 1, alive, alive_lp, fin, fin_lp, fin_score, cache

  def cond(carry):
    return (carry[0] < max_len) & ~jnp.all(carry[4] > NEG_INF / 2)

  seqs = jnp.full((B, K, max_len), pad, jnp.int32)
  alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (K - 1), jnp.float32), (B, 1))
  none = jnp.full((B, K), NEG_INF, jnp.float32)
  carry = (0, seqs, alive_lp, seqs, none, none, cache)
  _, _, _, fin, fin_lp, fin_score, _ = jax.lax.while_loop(cond, body, carry)
  return fin[:, 0], fin_score[:, 0], fin_lp[:, 0]  # the best finished hypothesis of each row


def greedy(model, params, src, max_len: int):
  """src int32 (B, S) -> tokens int32 (B, max_len) (PAD after EOS), log-probs float32 (B,)."""
  tokens, logp = _greedy(model, params, jnp.asarray(src, jnp.int32), int(max_len))
  return np.asarray(tokens), np.asarray(logp)


def beam_search(model, params, src, max_len: int, beam_size: int, length_penalty: float):
  """src int32 (B, S) -> best tokens (B, max_len) (PAD after EOS), scores (B,), log-probs (B,)."""
  tokens, score, logp = _beam(
      model,
      params,
      jnp.asarray(src, jnp.int32),
      int(max_len),
      int(beam_size),
      float(length_penalty),
  )
  return np.asarray(tokens), np.asarray(score), np.asarray(logp)


def decode_fn(model, max_len: int, beam_size: int, length_penalty: float):
  """What `decode` runs, as a traceable fn(params, src int32 (B, S)) -> tokens (B, max_len)
  (for jax.export: serve/bundle_predict.py)."""
  if beam_size == 1:
    return lambda params, src: _greedy(model, params, src, int(max_len))[0]
  k, alpha = int(beam_size), float(length_penalty)
  return lambda params, src: _beam(model, params, src, int(max_len), k, alpha)[0]


def decode(model, params, src, max_len: int, beam_size: int, length_penalty: float):
  """Tokens (B, max_len): greedy for beam_size 1, beam search otherwise."""
  if beam_size == 1:
    return greedy(model, params, src, max_len)[0]
  return beam_search(model, params, src, max_len, beam_size, length_penalty)[0]


def strip(tokens, eos: int) -> list[np.ndarray]:
  """Each row up to (not including) its first EOS."""
  out = []
  for row in np.asarray(tokens):
    end = np.flatnonzero(row == eos)
    out.append(row[: end[0]] if len(end) else row)
  return out
