"""Continuous batching for a GPT: a fixed number of KV-cache slots decoded together.

The model's own decode interface does the work (`model.clone(decode=True)` and its "cache"
collection, see models/gpt.py); the engine never edits the model. Each slot holds a batch-1
cache, stacked on a leading slot axis, and one decode step `jax.vmap`s the model over the slots,
so every slot's `cache_index` is its own position: requests of any lengths share a step.

  prefill: a waiting request takes a free slot; its prompt, right-padded to a bucket (powers of
           two up to the context), fills a fresh cache in one call; the slot's cache_index is then
           set to the real prompt length, so the padding's keys are overwritten before any query
           can see them (a query at position p only sees keys <= p). The first token is sampled.
  decode:  one token for every slot at once; free slots compute too (the program has one shape)
           and have their cache_index reset to 0 so they never run off the end.

So the programs are: one prefill per bucket and one decode, all compiled at warm-up; `compiles`
counts them and stays fixed after it (tests/test_serve_engine.py). A request joins at the
next step and leaves as soon as it is done or cancelled; its slot is free for the next one.
"""

import collections
from collections.abc import Callable
import dataclasses
import threading
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.serve import sampling

MIN_BUCKET = 16


def buckets(context: int) -> list[int]:
  """Prompt lengths prefill is compiled for: powers of two from MIN_BUCKET, and the context."""
  out, size = [], MIN_BUCKET
  while size < context:
    out.append(size)
    size *= 2
  return [*out, context]


@dataclasses.dataclass(eq=False)
class Request:
  """One sequence to generate. The callbacks run on the engine's thread; keep them short."""

  prompt: np.ndarray  # (P,) int32, 0 < P < context
  max_tokens: int  # >= 1, P + max_tokens <= context
  temperature: float  # 0 = greedy
  top_p: float
  seed: int  # [0, 2**32)
  sample_index: int  # which of a request's n choices this is
  on_token: Callable[[int], None]
  on_done: Callable[[str], None]  # "length" | "cancelled" | "error"
  cancelled: bool = False
  generated: int = 0

  def cancel(self) -> None:
    """Frees the slot at the next step (a stop string was found, or the client left)."""
    self.cancelled = True


class QueueFull(Exception):
  pass


@dataclasses.dataclass(frozen=True)
class Programs:
  """What the engine needs from a model, as pure functions: a live GPT's (`gpt_programs`) or a
  bundle's exported StableHLO (serve_bundle.py), so the engine itself holds no model code."""

  prefill: Callable  # (params, tokens int32 (1, L)) -> (logits (1, L, V), one slot's cache)
  decode: Callable  # (params, caches (S, ...), tokens int32 (S,)) -> (logits (S, V), caches)
  cache: Any  # one slot's cache as ShapeDtypeStructs; "cache_index" is its position
  context: int


def gpt_programs(model) -> Programs:
  """A GPT's decode interface (gpt.py's module docstring) as Programs."""
  decoder = model.clone(decode=True, dropout=0.0, remat="none")
  one = jax.eval_shape(decoder.init, jax.random.key(0), jnp.zeros((1, model.block_size), jnp.int32))
  one = flax.core.unfreeze(one["cache"])

  def prefill(params, tokens):
    fresh = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), one)
    logits, upd = decoder.apply({"params": params, "cache": fresh}, tokens, mutable=["cache"])
    return logits, flax.core.unfreeze(upd["cache"])

  def decode(params, caches, tokens):
    def one_slot(c, token):  # c: one slot's cache; token () int32
      logits, upd = decoder.apply(
          {"params": params, "cache": c}, token[None, None], mutable=["cache"]
      )
      return logits[0, 0], flax.core.unfreeze(upd["cache"])  # (V,)

    return jax.vmap(one_slot)(caches, tokens)

  return Programs(prefill, decode, one, model.block_size)


def cache_size(cache) -> tuple[str, str]:
  """(its bytes, in KiB/MiB/GiB, and the keys' storage type) of a GPT cache (model.kv_cache)."""
  size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
  unit = next(u for u in range(4) if size < 1024 ** (u + 1) or u == 3)
  leaves = jax.tree_util.tree_leaves_with_path(cache)
  kinds = {str(x.dtype) for path, x in leaves if "cached_key" in jax.tree_util.keystr(path)}
  return f"{size / 1024**unit:.1f} {('B', 'KiB', 'MiB', 'GiB')[unit]}", "/".join(sorted(kinds))


class Engine:
  """Owns the slots, the compiled programs and the scheduling thread."""

  def __init__(self, programs: Programs, params, vocab_size: int, max_batch: int, max_queue: int):
    self.programs = programs
    self.context, self.vocab_size = programs.context, vocab_size
    self.max_batch, self.max_queue = max_batch, max_queue
    self.buckets = buckets(self.context)
    self.ready = False
    # Committed to one device from the start: jit keys its compiled programs on where the inputs
    # live too, and the cache comes back from every call committed; an uncommitted first cache
    # made the first real request compile its bucket again (seen: 5 s on a bundle).
    device = jax.devices()[0]
    self.params = jax.device_put(params, device)
    # Every cache leaf gets a leading slot axis: cached_key (S, 1, context, H, D), cache_index (S,).
    self.cache = jax.device_put(
        jax.tree.map(lambda s: jnp.zeros((max_batch, *s.shape), s.dtype), programs.cache), device
    )
    logging.info("KV cache: %d slots, %s, %s", max_batch, *cache_size(self.cache))
    self._prefill = jax.jit(self._prefill_fn, donate_argnums=1)
    self._decode = jax.jit(self._decode_fn, donate_argnums=1)
    S = max_batch
    self.slots: list[Request | None] = [None] * S
    self._tokens = np.zeros(S, np.int32)  # each slot's last token, the next decode's input
    self._settings = {
        "seed": np.zeros(S, np.uint32),
        "sample_index": np.zeros(S, np.int32),
        "temperature": np.zeros(S, np.float32),
        "top_p": np.ones(S, np.float32),
    }
    self.waiting: collections.deque[Request] = collections.deque()
    self._cv = threading.Condition()
    self._stopping = False
    self._thread = None
    self.on_step: Callable[[int], None] = lambda active: None  # metrics hook: slots in a step

  # --- the compiled programs ------------------------------------------------------------------

  @property
  def compiles(self) -> int:
    """Programs compiled so far: executables in the two jit caches, so a new shape, a retrace
    or a new input placement all count. warm_up compiles them all; it stays fixed after."""
    return self._prefill._cache_size() + self._decode._cache_size()  # noqa: SLF001

  def _prefill_fn(self, params, cache, slot, tokens, length, seed, sample_index, temp, top_p):
    logits, one = self.programs.prefill(params, tokens)  # logits (1, bucket, V)
    one = dict(one, cache_index=length.astype(jnp.int32))
    cache = jax.tree.map(lambda all_, x: all_.at[slot].set(x), cache, one)
    last = jax.lax.dynamic_index_in_dim(logits[0], length - 1, keepdims=False)  # (V,)
    token = sampling.sample_row(last, seed, sample_index, 0, temp, top_p, self.vocab_size)
    return cache, token

  def _decode_fn(self, params, cache, tokens, active, steps, seed, sample_index, temp, top_p):
    logits, cache = self.programs.decode(params, cache, tokens)  # (S, V)
    cache = dict(cache, cache_index=jnp.where(active, cache["cache_index"], 0))
    new = sampling.sample_rows(
        logits, seed, sample_index, steps, temp, top_p, self.vocab_size
    )  # (S,)
    return cache, new

  def warm_up(self) -> None:
    """Compiles every program the engine will ever run (each prefill bucket, the decode)."""
    zeros = {k: v[0] for k, v in self._settings.items()}
    for size in self.buckets:
      self.cache, _ = self._prefill(
          self.params, self.cache, 0, np.zeros((1, size), np.int32), np.int32(1), *zeros.values()
      )
    self.cache, new = self._decode(
        self.params, self.cache, self._tokens, np.zeros(self.max_batch, bool),
        np.zeros(self.max_batch, np.int32), *self._settings.values(),
    )  # fmt: skip
    jax.block_until_ready(new)
    self.ready = True

  # --- scheduling ----------------------------------------------------------------------------

  def start(self) -> None:
    self._thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
    self._thread.start()

  def stop(self) -> None:
    with self._cv:
      self._stopping = True
      self._cv.notify()
    if self._thread:
      self._thread.join()

  def submit(self, request: Request) -> None:
    """Queues a request (it joins the batch at the next step); QueueFull when too many wait."""
    with self._cv:
      if self._stopping or len(self.waiting) >= self.max_queue:
        raise QueueFull
      self.waiting.append(request)
      self._cv.notify()

  def run_all(self, settings: list[dict]) -> list[list[int]]:
    """Blocking: submits Requests made of `settings` (prompt, max_tokens, temperature, top_p,
    seed) at once and returns their tokens (for golden outputs and checks)."""
    outs, done = [[] for _ in settings], threading.Semaphore(0)
    for i, s in enumerate(settings):
      self.submit(
          Request(**s, sample_index=0, on_token=outs[i].append, on_done=lambda r: done.release())
      )
    for _ in settings:
      done.acquire()
    return outs

  @property
  def free_slots(self) -> int:
    return sum(r is None for r in self.slots)

  def _loop(self) -> None:
    while True:
      with self._cv:
        while not self._stopping and not self.waiting and self.free_slots == self.max_batch:
          self._cv.wait()
        if self._stopping:
          break
        admitted = []
        for slot in range(self.max_batch):
          if self.slots[slot] is None and self.waiting:
            admitted.append((slot, self.waiting.popleft()))
      try:
        for slot, request in admitted:
          self._admit(slot, request)
        self._release_cancelled()
        if self.free_slots < self.max_batch:
          self._step()
      except Exception:  # a bug must not leave clients waiting forever
        logging.exception("the serving engine failed; failing its requests")
        for slot in range(self.max_batch):
          self._finish(slot, "error")
    with self._cv:
      for request in [*self.waiting, *[r for r in self.slots if r is not None]]:
        request.on_done("cancelled")
      self.waiting.clear()

  def _admit(self, slot: int, r: Request) -> None:
    if r.cancelled:
      r.on_done("cancelled")
      return
    P = len(r.prompt)
    size = next(b for b in self.buckets if b >= P)
    tokens = np.zeros((1, size), np.int32)
    tokens[0, :P] = r.prompt
    self.slots[slot] = r
    for key, value in (("seed", r.seed), ("sample_index", r.sample_index)):
      self._settings[key][slot] = value
    self._settings["temperature"][slot], self._settings["top_p"][slot] = r.temperature, r.top_p
    self.cache, token = self._prefill(
        self.params, self.cache, slot, tokens, np.int32(P),
        *(v[slot] for v in self._settings.values()),
    )  # fmt: skip
    self._emit(slot, int(token))

  def _step(self) -> None:
    active = np.array([r is not None for r in self.slots])
    steps = np.array([r.generated if r else 0 for r in self.slots], np.int32)
    self.on_step(int(active.sum()))
    self.cache, new = self._decode(
        self.params, self.cache, self._tokens, active, steps, *self._settings.values()
    )
    new = np.asarray(new)
    for slot in np.flatnonzero(active):
      self._emit(slot, int(new[slot]))

  def _emit(self, slot: int, token: int) -> None:
    r = self.slots[slot]
    self._tokens[slot] = token
    r.generated += 1
    r.on_token(token)
    if r.generated >= r.max_tokens:
      self._finish(slot, "length")

  def _release_cancelled(self) -> None:
    for slot, r in enumerate(self.slots):
      if r is not None and r.cancelled:
        self._finish(slot, "cancelled")

  def _finish(self, slot: int, reason: str) -> None:
    r, self.slots[slot] = self.slots[slot], None
    if r is not None:
      r.on_done(reason)
