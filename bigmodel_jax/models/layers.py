"""Pieces every model file shares: initialisers with logical axis names, LayerNorm / RMSNorm, the
Transformer MLP (GELU or SwiGLU), rotary frequencies, and the `config.model` fields that several
models have, declared (`shared_config`, `decoder_config`) and checked (one-line UsageErrors
naming the key) here once."""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.errors import UsageError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def normal(std: float, names: tuple):
  """N(0, std) initialiser whose parameter carries logical axis `names` (for sharding)."""
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros(names: tuple):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def flat_dot_general(
    lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, operand_dtype=None
):
  """`lax.dot_general` for Dense/DenseGeneral kernels as one 2-D matmul, (M, K) @ (K, N).

  Same numbers, same parameters; only the shapes XLA sees change. Given (B, T, K) inputs,
  XLA:CPU computes the weight gradient as a transposed 3-D contraction with a slow kernel and
  extra transposes; flattened to (B*T, K), with the weight gradient laid out by `_matmul_bwd`,
  every matmul of the backward pass runs at full speed (baby-GPT train step on one CPU device:
  61-79 ms -> 49 ms, `python -m bigmodel_jax.bench`). Contractions other than "trailing input
  axes x leading kernel axes", or with an explicit precision, go to lax.dot_general unchanged.

  `operand_dtype` (see `dense_dot_general`) rounds both operands of the matmul, and of its two
  gradient matmuls, to that dtype; products accumulate in float32 and the result keeps lhs's
  dtype, as under PyTorch's autocast.
  """
  (lhs_contract, rhs_contract), (lhs_batch, _) = dimension_numbers
  n = len(lhs_contract)
  trailing = tuple(range(lhs.ndim - n, lhs.ndim))
  if (
      lhs_batch
      or precision is not None
      or preferred_element_type is not None
      or tuple(d % lhs.ndim for d in lhs_contract) != trailing
      or tuple(rhs_contract) != tuple(range(n))
  ):
    if operand_dtype is not None:
      out = lax.dot_general(
          lhs.astype(operand_dtype),
          rhs.astype(operand_dtype),
          dimension_numbers,
          precision=precision,
          preferred_element_type=jnp.float32,
      )
      return out.astype(preferred_element_type or lhs.dtype)
    return lax.dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
  k = math.prod(lhs.shape[lhs.ndim - n :])
  out = _matmul(lhs.reshape(-1, k), rhs.reshape(k, -1), operand_dtype)
  return out.reshape(lhs.shape[: lhs.ndim - n] + rhs.shape[n:])


def dense_dot_general(operand_dtype=None):
  """The `dot_general` for a model's Dense layers: `flat_dot_general`, with the matmuls' operands
  rounded to `operand_dtype` (model.matmul_dtype; None: the layer's own dtype)."""
  if operand_dtype is None:
    return flat_dot_general
  return functools.partial(flat_dot_general, operand_dtype=operand_dtype)


def _rounded_dot(a, b, operand_dtype=None, b_transposed: bool = False, out_dtype=None):
  """a @ b (a @ b.T when `b_transposed`) in `out_dtype` (None: a's dtype), with the operands
  rounded to `operand_dtype` (None: a's dtype) and, when that is 16-bit, products accumulated
  in float32.

  Written for XLA:CPU, where both halves matter. Asked for a bf16 result, its bf16 matmul runs at
  the f32 rate; asked for a float32 one it uses AVX512-BF16's dot-product instructions, at twice
  that (`python -m bigmodel_jax.bench --sections=matmul`: 426 vs 214 GFLOP/s on 2 cores). And the
  transposed operand is given by dimension numbers, not as a transpose, which XLA would turn into
  a column-major layout that its bf16 kernels refuse, running the matmul in float32 instead
  (tests/test_gpt.py checks the operands XLA ends up with). Together: a bf16 train step at the
  bench's `mid` shape, 1,716 -> 2,505 tokens/s.
  """
  out_dtype = out_dtype or a.dtype
  if operand_dtype is not None:
    a, b = a.astype(operand_dtype), b.astype(operand_dtype)
  dims = (((1,), (1 if b_transposed else 0,)), ((), ()))
  if a.dtype.itemsize != 2:
    return lax.dot_general(a, b, dims).astype(out_dtype)
  return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32).astype(out_dtype)


def _cpu_transpose(a):
  """a.T (2-D) materialised as a row-major array. A plain transpose, even behind an optimization
  barrier, reaches the matmul as a column-major layout, which sends a bf16 matmul back to float32
  (see `_rounded_dot`); through a 3-D transpose it stays a copy."""
  m, n = a.shape
  return lax.optimization_barrier(a.reshape(m, n, 1).transpose(2, 1, 0)).reshape(n, m)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x, w, operand_dtype):
  def default(x, w):
    if operand_dtype is None:
      return x @ w
    return _rounded_dot(x, w, operand_dtype)

  cpu = functools.partial(_rounded_dot, operand_dtype=operand_dtype)
  return lax.platform_dependent(x, w, cpu=cpu, default=default)


def _matmul_fwd(x, w, operand_dtype):
  return _matmul(x, w, operand_dtype), (x, w)


def _matmul_bwd(operand_dtype, residuals, g):
  """dx = g w^T; dw = x^T g, on CPU with the narrower of x and g transposed into an array first.

  Left to itself XLA:CPU folds the transpose into the matmul and picks a kernel that runs at
  half speed; a transposed copy of the narrow side is cheap. GPU/TPU matmuls take transposed
  operands at full speed, so they get plain x^T g.
  """
  x, w = residuals
  cast = (lambda a: a) if operand_dtype is None else (lambda a: a.astype(operand_dtype))

  def cpu(x, w, g):
    if x.shape[1] <= g.shape[1]:
      dw = _rounded_dot(_cpu_transpose(cast(x)), cast(g), out_dtype=w.dtype)
    else:  # (g^T x)^T
      dw = _rounded_dot(_cpu_transpose(cast(g)), cast(x), out_dtype=w.dtype)
      dw = lax.optimization_barrier(dw).T
    return _rounded_dot(cast(g), cast(w), b_transposed=True, out_dtype=x.dtype), dw

  def default(x, w, g):
    if operand_dtype is None:
      return g @ w.T, x.T @ g
    dx = _rounded_dot(g, w.T, operand_dtype, out_dtype=x.dtype)
    return dx, _rounded_dot(x.T, g, operand_dtype, out_dtype=w.dtype)

  return lax.platform_dependent(x, w, g, cpu=cpu, default=default)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


NORMS = ("layernorm", "rmsnorm")
MLP_TYPES = ("gelu", "swiglu")


def layer_norm(name: str, *, dtype, param_dtype, epsilon: float = 1e-5, use_bias: bool = True):
  return nn.LayerNorm(
      epsilon=epsilon,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=zeros(("norm",)),
      name=name,
  )


def norm(kind: str, name: str, *, dtype, param_dtype, epsilon: float, use_bias: bool):
  """LayerNorm (GPT-2) or RMSNorm (Llama: no mean, no bias), both with the parameter `scale`."""
  if kind == "layernorm":
    return layer_norm(
        name, dtype=dtype, param_dtype=param_dtype, epsilon=epsilon, use_bias=use_bias
    )
  return nn.RMSNorm(
      epsilon=epsilon,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      name=name,
  )


def rope_frequencies(head_dim: int, theta: float, scaling: tuple = ()) -> jnp.ndarray:
  """RoPE's inverse frequencies theta^(-2i/D), i < D/2, float32 (D/2,).

  `scaling` = (factor, low_freq_factor, high_freq_factor, original_context) is Llama-3.1's
  context extension (transformers' `_compute_llama3_parameters`): wavelengths longer than
  original_context / low_freq_factor are stretched by `factor`, shorter than
  original_context / high_freq_factor kept, and those between interpolated smoothly.
  """
  half = head_dim // 2
  inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
  if not scaling:
    return inv_freq
  factor, low, high, original = (float(v) for v in scaling)
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
  smooth = (original / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= original / high) & (wavelen <= original / low)
  return jnp.where(medium, smoothed, scaled)


def shared_config(*keys: str) -> ml_collections.ConfigDict:
  """The fields named by `keys` that several models' `default_config`s share, with their defaults:
  declared once, here, so that a field means the same and defaults the same in every model."""
  c = ml_collections.ConfigDict()
  # Dropout rate while training: [0, 1).
  c.dropout = 0.0
  # Compute dtype: float32 | bfloat16 | float16.
  c.dtype = "float32"
  # Weight dtype: float32 | bfloat16 | float16 (float32 weights with bfloat16 compute is usual).
  c.param_dtype = "float32"
  # Hidden width of each Transformer MLP: >= 0; 0 -> 4 * embed_dim.
  c.mlp_dim = 0
  # Embedding tables get rows up to a multiple of this (for sharding, faster matmuls): >= 1.
  c.vocab_multiple = 1
  # Token positions: learned (an embedding added to the tokens) | rotary (RoPE on queries, keys).
  c.positions = "learned"
  # Tokens per text for the text classifiers (the task truncates longer texts): > 0.
  c.max_len = 40
  unknown = [k for k in keys if k not in c]
  if unknown:
    raise ValueError(f"no shared model field {unknown}; shared: {', '.join(c)}")
  return ml_collections.ConfigDict({k: c[k] for k in keys})


def decoder_config() -> ml_collections.ConfigDict:
  """The options of a decoder-only Transformer (models/gpt.py) that turn GPT-2 into Llama."""
  c = ml_collections.ConfigDict()
  # Key/value heads (grouped-query attention): 0 -> num_heads; else dividing num_heads.
  c.num_kv_heads = 0
  # Normalisation before each sublayer and at the end: layernorm (GPT-2) | rmsnorm (Llama).
  c.norm = "layernorm"
  # The norms' epsilon: > 0 (GPT-2 1e-5; Llama-3 1e-5, Llama-2 1e-6).
  c.norm_eps = 1e-5
  # Feed-forward: gelu (GPT-2, tanh-approximated) | swiglu (Llama: gated SiLU, a third matrix).
  c.mlp_type = "gelu"
  # Rotary base wavelength (positions=rotary): > 0 (Llama-2 10000, Llama-3 500000).
  c.rope_theta = 10000.0
  # () or Llama-3 rope scaling (factor, low_freq_factor, high_freq_factor, original_context).
  c.rope_scaling = ()
  # Output head shares the token embedding: True (GPT-2, Llama-3.2-1B) | False (Llama-3-8B).
  c.tie_embeddings = True
  return c


def decoder_options(cfg, heads: int, positions: str) -> dict[str, Any]:
  """config.model's decoder_config fields, checked -> the GPT module's fields."""
  kv = int(cfg.num_kv_heads)
  if kv < 0 or (kv and heads % kv):
    raise UsageError(
        f"model.num_kv_heads={kv} must divide model.num_heads={heads} (0 means num_heads)"
    )
  for key, valid in (("norm", NORMS), ("mlp_type", MLP_TYPES)):
    if cfg[key] not in valid:
      raise UsageError(f"model.{key}={cfg[key]!r} is unknown; valid: {', '.join(valid)}")
  if cfg.norm_eps <= 0 or cfg.rope_theta <= 0:
    raise UsageError(
        f"model.norm_eps={cfg.norm_eps} and model.rope_theta={cfg.rope_theta} must be > 0"
    )
  scaling = tuple(float(v) for v in cfg.rope_scaling)
  if scaling and (len(scaling) != 4 or min(scaling) <= 0 or scaling[1] >= scaling[2]):
    raise UsageError(
        f"model.rope_scaling={cfg.rope_scaling!r} must be () or (factor, low_freq_factor, "
        "high_freq_factor, original_context), all > 0 with low_freq_factor < high_freq_factor"
    )
  if scaling and positions != "rotary":
    raise UsageError("model.rope_scaling needs model.positions='rotary'")
  return dict(
      num_kv_heads=kv,
      norm=cfg.norm,
      norm_eps=float(cfg.norm_eps),
      mlp_type=cfg.mlp_type,
      rope_theta=float(cfg.rope_theta),
      rope_scaling=scaling,
      tie_embeddings=bool(cfg.tie_embeddings),
  )


def positive_int(cfg, key: str) -> int:
  """config.model.<key> as a positive int, or a one-line UsageError naming it."""
  value = cfg[key]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise UsageError(f"model.{key}={value!r} must be a positive integer")
  return int(value)


def mlp_dim(cfg) -> int:
  value = int(cfg.mlp_dim)
  if value < 0:
    raise UsageError(f"model.mlp_dim={value} must be >= 0 (0 means 4 * model.embed_dim)")
  return value


def vocab_multiple(cfg) -> int:
  value = int(cfg.vocab_multiple)
  if value <= 0:
    raise UsageError(f"model.vocab_multiple={value} must be a positive integer")
  return value


def dropout_and_dtypes(cfg) -> dict[str, Any]:
  """model.dropout in [0, 1) and model.dtype / model.param_dtype by name, checked."""
  dropout = float(cfg.dropout)
  if not 0.0 <= dropout < 1.0:
    raise UsageError(f"model.dropout={dropout} must be in [0, 1)")
  out = {"dropout": dropout}
  for key in ("dtype", "param_dtype"):
    name = cfg[key]
    if name not in DTYPES:
      raise UsageError(f"model.{key}={name!r} is unknown; valid: {', '.join(DTYPES)}")
    out[key] = DTYPES[name]
  return out


class MLP(nn.Module):
  """Transformer feed-forward: Dense(hidden_dim) -> GELU -> Dense(input width) -> dropout.

  Parameters `fc` (embed, mlp) and `proj` (mlp, embed), initialised N(0, fc_std) / N(0, proj_std).
  With kind "swiglu" (Llama) a third, `gate` (embed, mlp), makes it proj(silu(gate x) * fc x).
  GELU is the tanh approximation, GPT-2's "gelu_new".
  """

  hidden_dim: int
  fc_std: float
  proj_std: float
  dropout: float
  dtype: Any
  param_dtype: Any
  use_bias: bool = True  # text_encoder and seq2seq always have biases; gpt passes model.use_bias
  kind: str = "gelu"  # | swiglu (MLP_TYPES)
  matmul_dtype: Any = None  # the matmuls' operand dtype (dense_dot_general); None: dtype

  @nn.compact
  def __call__(self, x, *, train: bool):  # x (B, T, C)
    dense = lambda features, std, names, name: nn.Dense(  # noqa: E731
        features,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=normal(std, names),
        bias_init=zeros(names[-1:]),
        dot_general=dense_dot_general(self.matmul_dtype),
        name=name,
    )
    h = dense(self.hidden_dim, self.fc_std, ("embed", "mlp"), "fc")(x)  # (B, T, M)
    if self.kind == "swiglu":
      h = nn.silu(dense(self.hidden_dim, self.fc_std, ("embed", "mlp"), "gate")(x)) * h
    else:
      h = nn.gelu(h)
    y = dense(x.shape[-1], self.proj_std, ("mlp", "embed"), "proj")(h)  # (B, T, C)
    return nn.Dropout(self.dropout, deterministic=not train)(y)
