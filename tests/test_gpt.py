"""GPT model: shapes, parameter counts (tiny; huge by shape only), axis names, causality, dtypes."""

import functools
import re

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import attention, gpt
from tests.helpers import TINY_GPT as TINY


def expected_params(V, T, L, C, M=0, positions="learned", use_bias=True):
  """Hand count: tied embeddings, q/k/v/out projections, 2-layer MLP, three LayerNorms a block."""
  M = M or 4 * C
  b = 1 if use_bias else 0
  attn = 4 * C * C + b * 4 * C
  mlp = 2 * C * M + b * (M + C)
  norms = 2 * (C + b * C)
  pos = T * C if positions == "learned" else 0
  return V * C + pos + L * (attn + mlp + norms) + (C + b * C)


def shapes(model, batch=1, length=8):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((batch, length), jnp.int32))


@functools.partial(jax.jit, static_argnums=(0, 1))
def init(model, std=0.3):
  """Unboxed params; random-init logits are nearly uniform, so add noise to make tokens matter."""
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  return jax.tree.unflatten(
      treedef, [x + std * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  )


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, tokens, rng):
  train = rng is not None
  return model.apply(
      {"params": params}, tokens, train=train, rngs={"dropout": rng} if train else {}
  )


def apply(model, params, tokens, rng=None):
  """Jitted forward (eager op-by-op dispatch is what makes CPU tests slow); rng turns on train."""
  return _apply(model, params, tokens, rng)


@pytest.fixture(scope="module")
def tiny():
  model = gpt.GPT(**TINY)
  return model, init(model)


def test_output_shape_and_dtype(tiny):
  model, params = tiny
  logits = apply(model, params, jnp.zeros((3, 7), jnp.int32))
  assert logits.shape == (3, 7, 32)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize(
    "positions,use_bias,mlp_dim",
    [("learned", True, 0), ("rotary", True, 24), ("learned", False, 40)],
)
def test_param_count_matches_formula(positions, use_bias, mlp_dim):
  model = gpt.GPT(**dict(TINY, positions=positions, use_bias=use_bias, mlp_dim=mlp_dim))
  params = shapes(model)["params"]
  assert gpt.param_count(params) == expected_params(
      32, 16, 2, 16, mlp_dim, positions=positions, use_bias=use_bias
  )
  assert ("wpe" in params) == (positions == "learned")


def test_gpt2_small_shapes_without_allocating():
  model = gpt.GPT(
      **dict(TINY, vocab_size=50304, block_size=1024, num_layers=12, num_heads=12, embed_dim=768)
  )
  params = shapes(model)["params"]
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
  count = gpt.param_count(params)
  assert count == expected_params(50304, 1024, 12, 768) == 124_475_904
  assert nn.unbox(params)["wte"]["embedding"].shape == (50304, 768)
  assert nn.unbox(params)["h_11"]["attn"]["query"]["kernel"].shape == (768, 12, 64)
  # 6 * (non-embedding params + tied head) + 12 * L * T * C
  non_embedding = count - 50304 * 768 - 1024 * 768
  assert gpt.flops_per_token(model) == 6 * (non_embedding + 50304 * 768) + 12 * 12 * 1024 * 768


def test_1b_shapes_without_allocating():
  model = gpt.GPT(
      **dict(
          TINY,
          vocab_size=50304,
          block_size=2048,
          num_layers=18,
          num_heads=16,
          embed_dim=2048,
          mlp_dim=8192,
          positions="rotary",
          dtype=jnp.bfloat16,
      )
  )
  count = gpt.param_count(shapes(model)["params"])
  assert count == expected_params(50304, 2048, 18, 2048, 8192, positions="rotary")
  assert 1.0e9 < count < 1.02e9


def test_every_param_has_logical_axes():
  boxed = shapes(gpt.GPT(**TINY))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  specs = nn.get_partition_spec(boxed)
  flat = {
      "/".join(k.key for k in path): (tuple(spec), shape)
      for (path, spec), shape in zip(
          jax.tree_util.tree_flatten_with_path(
              specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
          )[0],
          jax.tree.leaves(nn.unbox(boxed)),
      )
  }
  for name, (spec, shape) in flat.items():
    assert len(spec) == len(shape.shape) and all(spec), name
  assert flat["wte/embedding"][0] == ("vocab", "embed")
  assert flat["wpe/embedding"][0] == ("length", "embed")
  assert flat["h_0/attn/query/kernel"][0] == ("embed", "heads", "kv")
  assert flat["h_0/attn/value/bias"][0] == ("heads", "kv")
  assert flat["h_1/attn/out/kernel"][0] == ("heads", "kv", "embed")
  assert flat["h_1/mlp/fc/kernel"][0] == ("embed", "mlp")
  assert flat["h_1/mlp/proj/kernel"][0] == ("mlp", "embed")
  assert flat["ln_f/scale"][0] == ("norm",)
  assert flat["h_0/ln_1/bias"][0] == ("norm",)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_causal_and_position_aware(positions):
  model = gpt.GPT(**dict(TINY, positions=positions))
  params = init(model)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 32)
  changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % 32)
  a = apply(model, params, tokens)
  b = apply(model, params, changed)
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert np.abs(a[:, 6:] - b[:, 6:]).min(axis=-1).max() > 0  # every later position sees it
  if positions == "learned":  # the same token at two positions: only wpe tells them apart
    out = apply(model, params, jnp.full((1, 4), 3, jnp.int32))
    assert not np.allclose(out[0, 1], out[0, 2], atol=1e-3)


def test_rotary_scores_depend_on_relative_position():
  q, k = jax.random.normal(jax.random.key(0), (2, 1, 5, 3, 8))  # (B, T, H, D) each
  rotate = attention.apply_rotary
  score = lambda m, n: jnp.einsum(  # noqa: E731
      "bthd,bthd->bth", rotate(q, jnp.full(5, m)), rotate(k, jnp.full(5, n))
  )
  np.testing.assert_allclose(score(3, 1), score(10, 8), rtol=1e-4, atol=1e-4)
  assert not np.allclose(score(3, 1), score(3, 2), atol=1e-2)
  np.testing.assert_allclose(  # a rotation: norms are kept
      jnp.linalg.norm(attention.apply_rotary(q, jnp.arange(5)), axis=-1),
      jnp.linalg.norm(q, axis=-1),
      rtol=1e-5,
  )


def test_bf16_compute_with_f32_params(tiny):
  model, params = tiny
  bf16 = model.clone(dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(shapes(bf16))} == {jnp.dtype(jnp.float32)}
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 32)
  ref = apply(model, params, tokens)
  out = apply(bf16, params, tokens)
  assert out.dtype == jnp.float32
  assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
  assert np.abs(out - ref).max() > 0  # it really computed in bf16


def test_bf16_params():
  model = gpt.GPT(**dict(TINY, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16))
  params = init(model, std=0.0)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  assert apply(model, params, jnp.zeros((1, 4), jnp.int32)).dtype == jnp.float32


def test_dropout_only_in_training(tiny):
  model, params = tiny
  model = model.clone(dropout=0.5)
  tokens = jnp.ones((2, 8), jnp.int32)
  run = lambda seed: apply(model, params, tokens, jax.random.key(seed))  # noqa: E731
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))
  np.testing.assert_array_equal(apply(model, params, tokens), apply(tiny[0], params, tokens))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_same_gradients_and_policy(tiny, remat):
  model, params = tiny
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 32)
  loss = lambda p, m: jnp.mean(m.apply({"params": p}, tokens) ** 2)  # noqa: E731
  rematted = model.clone(remat=remat)
  grads = jax.jit(jax.grad(loss), static_argnums=1)
  for a, b in zip(jax.tree.leaves(grads(params, rematted)), jax.tree.leaves(grads(params, model))):
    np.testing.assert_allclose(a, b, atol=1e-6)
  eqns = jax.make_jaxpr(lambda p: loss(p, rematted))(params).jaxpr.eqns
  policies = [e.params["policy"] for e in eqns if "policy" in e.params]
  assert policies == [gpt.REMAT_POLICIES[remat]] * TINY["num_layers"]


def config(**overrides):
  cfg = gpt.default_config()
  cfg.update(dict(num_layers=2, num_heads=2, embed_dim=16, block_size=16, dtype="bfloat16"))
  cfg.update(overrides)
  return cfg


def test_make_builds_the_configured_model():
  model = gpt.make(config(vocab_multiple=64, positions="rotary", remat="dots"), vocab_size=50257)
  assert model.vocab_size == 50304
  assert (model.dtype, model.param_dtype) == (jnp.bfloat16, jnp.float32)
  assert model.attention_impl is None and model.positions == "rotary" and model.remat == "dots"
  assert gpt.make(config(attention_impl="cudnn"), vocab_size=10).attention_impl == "cudnn"
  assert gpt.make(config(), vocab_size=10).vocab_size == 10


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            dict(embed_dim=100, num_heads=3),
            "model.embed_dim=100 must be divisible by model.num_heads=3",
        ),
        (dict(positions="alibi"), "learned, rotary"),
        (dict(dtype="float64"), "model.dtype='float64' is unknown; valid: float32, bfloat16"),
        (dict(param_dtype="fp32"), "model.param_dtype"),
        (dict(remat="some"), "valid: none, full, dots"),
        (dict(attention_impl="flash"), "valid: xla, cudnn"),
        (dict(attention_impl="cudnn", dtype="float32"), "needs model.dtype bfloat16 or float16"),
        (dict(attention_impl="cudnn", embed_dim=24, num_heads=2), "head size .* = 12"),
        (dict(num_layers=0), "model.num_layers=0"),
        (dict(block_size=None), "model.block_size=None must be a positive integer"),
        (dict(embed_dim=6, num_heads=2, positions="rotary"), "even head size"),
        (dict(dropout=1.0), "model.dropout"),
        (dict(matmul_dtype="bf16"), "model.matmul_dtype='bf16' is unknown; valid: \"\", float32"),
    ],
)
def test_make_errors(overrides, message):
  with pytest.raises(UsageError, match=message.replace("(", r"\(")) as info:
    gpt.make(config(**overrides), vocab_size=32)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("length", [12, 256, 320])  # one block; 4 blocks of 64; 5 blocks
def test_attention_matches_jax_reference(length):
  """The written-out, query-blocked attention (fast on XLA:CPU) equals
  jax.nn.dot_product_attention, gradients included."""
  rng = np.random.default_rng(0)
  q, k, v, w = (jnp.asarray(rng.normal(size=(2, length, 3, 8)), jnp.float32) for _ in range(4))
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
  causal = attention.causal_attention
  np.testing.assert_allclose(causal(q, k, v), ref(q, k, v), rtol=1e-5, atol=1e-5)
  grads = [
      jax.grad(lambda *a, f=f: (f(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v) for f in (causal, ref)
  ]
  for ours, theirs in zip(*grads):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("features", [6, 20])  # weight gradient as (g^T x)^T; as x^T g
def test_flat_dot_general_matches_lax(features):
  """Dense layers' 2-D matmul (custom weight-gradient layout) gives lax.dot_general's numbers."""
  from bigmodel_jax.models import layers

  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 5, 3, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 4, features)), jnp.float32)
  dims = (((2, 3), (0, 1)), ((), ()))
  f = lambda dot: lambda x, w: (dot(x, w, dims) ** 2).sum()  # noqa: E731
  np.testing.assert_allclose(
      layers.flat_dot_general(x, kernel, dims), jax.lax.dot_general(x, kernel, dims), rtol=1e-5
  )
  for ours, theirs in zip(
      jax.grad(f(layers.flat_dot_general), argnums=(0, 1))(x, kernel),
      jax.grad(f(jax.lax.dot_general), argnums=(0, 1))(x, kernel),
  ):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def _dot_operand_types(compiled_hlo: str) -> list[tuple[str, str]]:
  """(lhs, rhs) element types of every dot in optimised HLO text."""
  types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", compiled_hlo))
  return [
      (types[lhs], types[rhs])
      for lhs, rhs in re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", compiled_hlo)
  ]


@pytest.mark.parametrize("features", [6, 40])  # weight gradient as (g^T x)^T; as x^T g
def test_flat_dot_general_bf16_keeps_bf16_matmuls_on_cpu(features):
  """bf16 Dense layers: forward and both gradients accumulate in float32 and round once, and on
  CPU every matmul of the step reaches XLA with bf16 operands (XLA:CPU sends a transposed or
  column-major bf16 operand back to a float32 matmul at half the speed)."""
  from bigmodel_jax.models import layers

  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(64, 16)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(16, features)), jnp.bfloat16)
  dims = (((1,), (0,)), ((), ()))
  f = lambda x, w: (layers.flat_dot_general(x, w, dims).astype(jnp.float32) ** 2).sum()  # noqa: E731
  y = layers.flat_dot_general(x, kernel, dims)
  assert y.dtype == jnp.bfloat16
  exact = np.asarray(x, np.float32) @ np.asarray(kernel, np.float32)
  np.testing.assert_allclose(np.asarray(y, np.float32), exact, rtol=1e-2, atol=1e-2)
  dx, dw = jax.grad(f, argnums=(0, 1))(x, kernel)
  g = 2 * np.asarray(y, np.float32)
  np.testing.assert_allclose(
      np.asarray(dx, np.float32), g @ np.asarray(kernel, np.float32).T, rtol=2e-2, atol=0.5
  )
  np.testing.assert_allclose(
      np.asarray(dw, np.float32), np.asarray(x, np.float32).T @ g, rtol=2e-2, atol=0.5
  )
  if jax.default_backend() == "cpu":
    hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(x, kernel).compile().as_text()
    operand_types = _dot_operand_types(hlo)
    assert len(operand_types) == 3 and set(operand_types) == {("bf16", "bf16")}, operand_types


def test_matmul_dtype_rounds_the_operands_and_keeps_float32_activations():
  """model.matmul_dtype=bfloat16 (PyTorch autocast's recipe): forward and both gradients are
  float32 matmuls of bf16-rounded operands, and on CPU XLA runs them as bf16 matmuls."""
  from bigmodel_jax.models import layers

  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 32, 16)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(16, 24)), jnp.float32)
  dims = (((2,), (0,)), ((), ()))
  dot = layers.dense_dot_general(jnp.bfloat16)
  f = lambda x, w: (dot(x, w, dims) ** 2).sum()  # noqa: E731
  rounded = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32)  # noqa: E731
  y = dot(x, kernel, dims)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, rounded(x) @ rounded(kernel), rtol=1e-5, atol=1e-5)
  dx, dw = jax.grad(f, argnums=(0, 1))(x, kernel)
  assert dx.dtype == dw.dtype == jnp.float32
  g = rounded(2 * np.asarray(y))
  np.testing.assert_allclose(dx, g @ rounded(kernel).T, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dw, np.einsum("btc,btf->cf", rounded(x), g), rtol=1e-5, atol=1e-4)
  if jax.default_backend() == "cpu":
    hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(x, kernel).compile().as_text()
    assert set(_dot_operand_types(hlo)) == {("bf16", "bf16")}

  # In a GPT: float32 logits within bf16 rounding of the float32 model's, same parameters.
  tokens = jnp.asarray(rng.integers(0, 32, (2, 16)), jnp.int32)
  full = gpt.make(config(dtype="float32"), 32)
  mixed = gpt.make(config(dtype="float32", matmul_dtype="bfloat16"), 32)
  params = full.init(jax.random.key(0), tokens)
  ours = mixed.apply(params, tokens)
  assert ours.dtype == jnp.float32
  np.testing.assert_allclose(ours, full.apply(params, tokens), atol=3e-2)
  assert not np.array_equal(ours, full.apply(params, tokens))
