"""Sampling from a GPT: `generate` (KV cache), `generate_without_cache`, `sample_logits`.

Both generators draw the token at step s with `jax.random.fold_in(rng, s)`, so for the same rng
they agree whenever the two forward passes agree (always, for greedy decoding).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models.gpt import GPT


def sample_logits(logits, rng, temperature, top_k, top_p):
  """Draws one id per row of logits (B, V) -> (B,) int32.

  temperature == 0 is greedy argmax; top_k == 0 and top_p == 1.0 are off. Nucleus (top_p) keeps
  the smallest set of most likely tokens whose probability reaches top_p (never fewer than one).
  The three settings are Python numbers (they pick the program, not values inside it).
  """
  logits = logits.astype(jnp.float32)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k > 0:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]  # (B, 1)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V), descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
    keep = mass_before < top_p  # the first token always has mass_before = 0 < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)  # (B, 1)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _check(model, prompt, max_new_tokens, temperature, top_k, top_p, num_samples):
  """Returns the prompt as a 1-D int32 array, or raises a one-line UsageError."""
  prompt = np.asarray(prompt)
  if prompt.ndim != 1:
    raise UsageError(f"prompt must be a 1-D array of token ids; got shape {prompt.shape}")
  if prompt.size == 0:
    raise UsageError("prompt is empty; give at least one token")
  if not np.issubdtype(prompt.dtype, np.integer):
    raise UsageError(f"prompt must hold integer token ids; got dtype {prompt.dtype}")
  if prompt.min() < 0 or prompt.max() >= model.vocab_size:
    raise UsageError(
        f"prompt has token ids outside [0, {model.vocab_size}) (model.vocab_size); "
        f"got min {prompt.min()}, max {prompt.max()}"
    )
  n, context = len(prompt), model.block_size
  if n >= context:
    raise UsageError(f"prompt is {n} tokens; the model's context (model.block_size) is {context}")
  if max_new_tokens < 0 or n + max_new_tokens > context:
    raise UsageError(
        f"max_new_tokens={max_new_tokens} with a {n}-token prompt does not fit the model's context "
        f"(model.block_size) of {context}; use 0 <= max_new_tokens <= {context - n}"
    )
  if temperature < 0:
    raise UsageError(f"temperature={temperature} must be >= 0 (0 means greedy)")
  if not 0 < top_p <= 1:
    raise UsageError(f"top_p={top_p} must be in (0, 1] (1 means off)")
  if top_k < 0:
    raise UsageError(f"top_k={top_k} must be >= 0 (0 means off)")
  if num_samples < 1:
    raise UsageError(f"num_samples={num_samples} must be >= 1")
  return prompt.astype(np.int32)


def _settings(temperature, top_k, top_p):
  return float(temperature), int(top_k), float(top_p)


# ---------------------------------------------------------------- with a KV cache


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8))
def _generate_cached(
    decoder, params, prompt, rng, num_samples, max_new_tokens, temperature, top_k, top_p
):
  P, N = prompt.shape[0], max_new_tokens
  # A cache of the P + N positions this call fills, not of the whole context (block_size): every
  # step attends over (and reads) all of the cache, so at gpt2_124m's 1,024 positions a 144-token
  # generation would move 7x the keys/values it needs (python -m bigmodel_jax.interop.bench).
  shapes = jax.eval_shape(
      decoder.init, jax.random.key(0), jnp.zeros((num_samples, P + N), jnp.int32)
  )
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])

  def forward(cache, tokens):  # tokens (B, L) -> logits of the last position (B, V), new cache
    logits, updated = decoder.apply({"params": params, "cache": cache}, tokens, mutable=["cache"])
    return logits[:, -1], updated["cache"]

  prompts = jnp.broadcast_to(prompt, (num_samples, P))  # (B, P)
  logits, cache = forward(cache, prompts)  # prefill: the whole prompt in one call
  first = sample_logits(logits, jax.random.fold_in(rng, 0), temperature, top_k, top_p)  # (B,)
  tokens = jnp.zeros((num_samples, P + N), jnp.int32).at[:, :P].set(prompts).at[:, P].set(first)

  def step(s, carry):  # token P+s-1 is known: feed it, sample token P+s
    tokens, cache = carry
    last = jax.lax.dynamic_slice_in_dim(tokens, P + s - 1, 1, axis=1)  # (B, 1)
    logits, cache = forward(cache, last)
    new = sample_logits(logits, jax.random.fold_in(rng, s), temperature, top_k, top_p)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], P + s, axis=1)
    return tokens, cache

  tokens, _ = jax.lax.fori_loop(1, N, step, (tokens, cache))
  return tokens


def generate(
    model: GPT,
    params,
    prompt: np.ndarray,
    *,
    max_new_tokens: int,
    rng,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    num_samples=1,
) -> np.ndarray:
  """Samples continuations of `prompt` (P,) -> int32 (num_samples, P + max_new_tokens).

  `model` is the training model; this decodes with a KV cache (`decode=True`), one compiled
  program: prefill the prompt in one call, then a `fori_loop` of single-token steps.
  """
  prompt = _check(model, prompt, max_new_tokens, temperature, top_k, top_p, num_samples)
  if max_new_tokens == 0:
    return np.tile(prompt, (num_samples, 1))
  decoder = model.clone(decode=True, dropout=0.0, remat="none")
  tokens = _generate_cached(
      decoder,
      params,
      jnp.asarray(prompt),
      rng,
      int(num_samples),
      int(max_new_tokens),
      *_settings(temperature, top_k, top_p),
  )
  return np.asarray(tokens)


# ---------------------------------------------------------------- without a cache


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8))
def _generate_recompute(
    model, params, prompt, rng, num_samples, max_new_tokens, temperature, top_k, top_p
):
  P, N = prompt.shape[0], max_new_tokens
  prompts = jnp.broadcast_to(prompt, (num_samples, P))
  tokens = jnp.zeros((num_samples, P + N), jnp.int32).at[:, :P].set(prompts)

  def step(s, tokens):  # full forward over the buffer; causal, so the zeros after P+s don't matter
    logits = model.apply({"params": params}, tokens)  # (B, P + N, V)
    logits = jax.lax.dynamic_index_in_dim(logits, P + s - 1, axis=1, keepdims=False)  # (B, V)
    new = sample_logits(logits, jax.random.fold_in(rng, s), temperature, top_k, top_p)
    return jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], P + s, axis=1)

  return jax.lax.fori_loop(0, N, step, tokens)


def generate_without_cache(
    model: GPT,
    params,
    prompt: np.ndarray,
    *,
    max_new_tokens: int,
    rng,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    num_samples=1,
) -> np.ndarray:
  """Same as `generate`, but recomputes the full forward pass for every new token (O(T^2) each)."""
  prompt = _check(model, prompt, max_new_tokens, temperature, top_k, top_p, num_samples)
  if max_new_tokens == 0:
    return np.tile(prompt, (num_samples, 1))
  model = model.clone(decode=False, dropout=0.0)
  tokens = _generate_recompute(
      model,
      params,
      jnp.asarray(prompt),
      rng,
      int(num_samples),
      int(max_new_tokens),
      *_settings(temperature, top_k, top_p),
  )
  return np.asarray(tokens)
