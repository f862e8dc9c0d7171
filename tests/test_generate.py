"""Decoding: the KV cache matches full recomputation; sampling settings do what they say."""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax.errors import UsageError
from bigmodel_jax.generate import generate, generate_without_cache, sample_logits
from bigmodel_jax.models import gpt
from tests.helpers import TINY_GPT as TINY

PROMPT = np.array([3, 1, 4, 1, 5], np.int32)


@functools.partial(jax.jit, static_argnums=0)
def init(model):
  """Unboxed params, with noise added so that logits are far from uniform (greedy is not a tie)."""
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  return jax.tree.unflatten(
      treedef, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  )


@pytest.fixture(scope="module", params=["learned", "rotary"])
def tiny(request):
  model = gpt.GPT(**dict(TINY, positions=request.param))
  return model, init(model)


@functools.partial(jax.jit, static_argnums=0)
def _decode(decoder, params, cache, tokens):
  logits, updated = decoder.apply({"params": params, "cache": cache}, tokens, mutable=["cache"])
  return logits, updated["cache"]


def test_kv_cache_matches_full_forward(tiny):
  model, params = tiny
  tokens = jax.random.randint(jax.random.key(1), (2, 14), 0, 32)  # (B, T)
  full = jax.jit(model.apply)({"params": params}, tokens)  # (B, T, V)

  decoder = model.clone(decode=True)
  shapes = jax.eval_shape(decoder.init, jax.random.key(0), jnp.zeros((2, 16), jnp.int32))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
  assert shapes["cache"]["h_0"]["attn"]["cached_key"].shape == (2, 16, 2, 8)

  # Prefill 5, three single-token steps, then a chunk of 4 at a non-zero offset.
  done = 0
  for length in (5, 1, 1, 1, 4):
    logits, cache = _decode(decoder, params, cache, tokens[:, done : done + length])
    np.testing.assert_allclose(logits, full[:, done : done + length], atol=1e-4, rtol=1e-4)
    done += length
    assert int(cache["cache_index"]) == done
  assert done == 12


def test_greedy_with_cache_equals_without(tiny):
  model, params = tiny
  kwargs = dict(max_new_tokens=10, rng=jax.random.key(0), temperature=0.0, num_samples=2)
  cached = generate(model, params, PROMPT, **kwargs)
  assert cached.shape == (2, 15) and cached.dtype == np.int32
  np.testing.assert_array_equal(cached[:, :5], np.tile(PROMPT, (2, 1)))
  np.testing.assert_array_equal(cached, generate_without_cache(model, params, PROMPT, **kwargs))
  assert len(set(cached[0, 5:])) > 1  # a real sequence, not one token repeated


def test_sampling_with_cache_equals_without(tiny):
  model, params = tiny
  kwargs = dict(max_new_tokens=8, rng=jax.random.key(3), num_samples=3, top_k=20, top_p=0.9)
  np.testing.assert_array_equal(
      generate(model, params, PROMPT, **kwargs),
      generate_without_cache(model, params, PROMPT, **kwargs),
  )


def test_sampling_settings():
  model = gpt.GPT(**TINY)
  params = init(model)
  run = lambda seed=0, **kw: generate(  # noqa: E731
      model, params, PROMPT, max_new_tokens=8, rng=jax.random.key(seed), num_samples=4, **kw
  )
  greedy = run(temperature=0.0)
  np.testing.assert_array_equal(run(top_k=1), greedy)
  np.testing.assert_array_equal(run(top_p=1e-6), greedy)
  np.testing.assert_array_equal(run(seed=7), run(seed=7))
  assert not np.array_equal(run(seed=7), run(seed=8))
  assert len({tuple(row) for row in run(seed=7)}) > 1  # samples in a batch differ
  np.testing.assert_array_equal(  # no new tokens: the prompt, repeated
      generate(model, params, PROMPT, max_new_tokens=0, rng=jax.random.key(0), num_samples=2),
      np.tile(PROMPT, (2, 1)),
  )
  full = generate(model, params, PROMPT, max_new_tokens=11, rng=jax.random.key(0))
  assert full.shape == (1, 16)  # fills the whole context


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _draws(logits, temperature, top_k, top_p):
  keys = jax.random.split(jax.random.key(0), 2000)
  return jax.vmap(lambda k: sample_logits(logits, k, temperature, top_k, top_p))(keys)  # (N, B)


def test_sample_logits_filters():
  probs = jnp.array([[0.05, 0.5, 0.3, 0.15], [0.4, 0.1, 0.2, 0.3]])
  logits = jnp.log(probs)
  np.testing.assert_array_equal(sample_logits(logits, jax.random.key(0), 0.0, 0, 1.0), [1, 0])
  seen = lambda draws, row: set(np.unique(draws[:, row]).tolist())  # noqa: E731
  draws = _draws(logits, 1.0, 0, 1.0)
  assert seen(draws, 0) == {0, 1, 2, 3}
  assert abs(np.mean(draws[:, 0] == 1) - 0.5) < 0.05  # temperature 1: the model's distribution
  draws = _draws(logits, 1.0, 2, 1.0)
  assert (seen(draws, 0), seen(draws, 1)) == ({1, 2}, {0, 3})
  draws = _draws(logits, 1.0, 0, 0.45)  # row 0: the first token alone reaches 0.45
  assert (seen(draws, 0), seen(draws, 1)) == ({1}, {0, 3})
  draws = _draws(logits, 1.0, 0, 0.81)  # 0.5 + 0.3 < 0.81: row 0 needs a third token
  assert (seen(draws, 0), seen(draws, 1)) == ({1, 2, 3}, {0, 3, 2})
  draws = _draws(logits, 0.1, 0, 1.0)  # low temperature sharpens towards the argmax
  assert np.mean(draws[:, 0] == 1) > 0.95


@pytest.mark.parametrize(
    "prompt,kwargs,message",
    [
        ([], {}, "prompt is empty"),
        (
            list(range(16)),
            {},
            r"prompt is 16 tokens; the model's context \(model.block_size\) is 16",
        ),
        (list(range(10)), dict(max_new_tokens=7), "max_new_tokens <= 6"),
        (PROMPT, dict(max_new_tokens=-1), "max_new_tokens=-1"),
        (PROMPT, dict(temperature=-0.5), "temperature=-0.5 must be >= 0"),
        (PROMPT, dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (PROMPT, dict(top_p=1.5), "top_p=1.5"),
        (PROMPT, dict(top_k=-1), "top_k=-1 must be >= 0"),
        (PROMPT, dict(num_samples=0), "num_samples=0"),
        ([[1, 2]], {}, "1-D"),
        ([1, 32], {}, r"outside \[0, 32\)"),
    ],
)
@pytest.mark.parametrize("fn", [generate, generate_without_cache])
def test_errors(fn, prompt, kwargs, message):
  model = gpt.GPT(**TINY)
  kwargs = dict(dict(max_new_tokens=2, rng=jax.random.key(0)), **kwargs)
  with pytest.raises(UsageError, match=message) as info:
    fn(model, None, np.array(prompt, np.int32), **kwargs)  # checked before params are touched
  assert "\n" not in str(info.value)
