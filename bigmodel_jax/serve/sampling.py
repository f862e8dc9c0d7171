"""Per-row sampling for the serving engine: every slot brings its own temperature, top_p and seed.

`generate.sample_logits` takes its settings as Python numbers (they pick the program); a batch
of unrelated requests needs them as arrays, in one program, so that mixing requests never
compiles anything new. Greedy rows (temperature 0) are a plain argmax of the same logits, so a
greedy request's tokens cannot depend on what else is in the batch.
"""

import jax
import jax.numpy as jnp


def sample_row(logits, seed, sample_index, step, temperature, top_p, vocab_size):
  """One token id from logits (V,): argmax when temperature == 0, else nucleus sampling.

  The draw for a request's `step`-th new token uses key(seed) folded with its sample index (n > 1
  choices differ) and the step, so a seeded request gives the same tokens in any batch.
  `vocab_size` (static) masks the padding rows a model's embedding rounds up to.
  """
  logits = logits.astype(jnp.float32)
  logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)  # (V,)
  greedy = jnp.argmax(logits).astype(jnp.int32)
  scaled = logits / jnp.maximum(temperature, 1e-6)
  ordered = jnp.sort(scaled)[::-1]  # (V,), descending
  probs = jax.nn.softmax(ordered)
  mass_before = jnp.cumsum(probs) - probs  # the first token always has 0 < top_p: never empty
  threshold = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf))
  scaled = jnp.where(scaled < threshold, -jnp.inf, scaled)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), sample_index), step)
  drawn = jax.random.categorical(key, scaled).astype(jnp.int32)
  return jnp.where(temperature == 0, greedy, drawn)


# (S, V) logits and (S,) settings -> (S,) ids.
sample_rows = jax.vmap(sample_row, in_axes=(0, 0, 0, 0, 0, 0, None))
