"""Conditional flow matching (rectified flow) with classifier-free guidance and EMA weights.

Why flow matching and not DDPM/DDIM: one regression loss and no noise schedule to choose. A
straight path from noise x0 to data x1, x_t = (1 - t) x0 + t x1, has the constant velocity
x1 - x0; the model learns v(x_t, t, class) by mean squared error against it (Lipman et al. 2023,
"Flow Matching for Generative Modeling"; Liu et al. 2023, "Rectified Flow"). Sampling integrates
dx/dt = v from t = 0 to 1 with Euler steps: a deterministic ODE that gives good samples in a few
dozen model calls, where DDPM's ancestral sampler wants ~1000 and DDIM adds a schedule and its
inversion. On a CPU budget the number of model calls is what matters.

Classifier-free guidance (Ho & Salimans 2022): training replaces the class by "no class" (id
num_classes) with probability label_dropout, so one network is both the conditional and the
unconditional model; sampling mixes them, v = v_uncond + scale * (v_cond - v_uncond). scale 1 is
the plain conditional model, 0 the unconditional one, above 1 trades variety for class fidelity.

EMA: sampling uses an exponential moving average of the weights (kept in the task's model_state,
so it is checkpointed and resumed exactly with the rest of the state).
"""

import functools

import jax
import jax.numpy as jnp


def interpolate(x1, noise, t):
  """-> (x_t, target velocity); x1, noise (B, H, W, C), t (B,)."""
  tb = t[:, None, None, None]
  return (1.0 - tb) * noise + tb * x1, x1 - noise


def drop_labels(rng, label, p: float, null: int):
  """Each label (B,) becomes `null` ("no class") with probability p."""
  return jnp.where(jax.random.uniform(rng, label.shape) < p, null, label)


def ema_update(ema: dict, params, decay: float) -> dict:
  """ema = {"params": tree, "count": float32 scalar} -> the next one.

  The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates (as TensorFlow's
  ExponentialMovingAverage with num_updates does), so a short run's EMA is not stuck near the
  random initialisation: after 100 updates it averages over the last ~10 steps, then ~1/(1-decay).
  """
  n = ema["count"]
  d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
  average = jax.tree.map(
      lambda e, p: d * e + (1.0 - d) * jax.lax.stop_gradient(p).astype(e.dtype),
      ema["params"],
      params,
  )
  return {"params": average, "count": n + 1.0}


@functools.partial(jax.jit, static_argnames=("apply_fn", "shape", "steps", "null"))
def sample(apply_fn, variables, labels, rng, guidance, *, shape, steps: int, null: int):
  """Euler integration of the guided velocity from noise at t=0 to images at t=1.

  apply_fn(variables, x, t, label) -> v; labels (N,) class ids; shape (H, W, C); guidance a
  scalar (see the module doc). -> (N, H, W, C) float32, about [-1, 1] (not clipped).
  """
  n = labels.shape[0]
  x = jax.random.normal(rng, (n, *shape), jnp.float32)
  both = jnp.concatenate([labels, jnp.full_like(labels, null)])  # (2N,): cond, then uncond
  dt = 1.0 / steps

  def step(i, x):
    t = jnp.full((2 * n,), i * dt, jnp.float32)
    v = apply_fn(variables, jnp.concatenate([x, x]), t, both)  # one call for both halves
    v_cond, v_uncond = v[:n], v[n:]
    return x + dt * (v_uncond + guidance * (v_cond - v_uncond))

  return jax.lax.fori_loop(0, steps, step, x)


def to_uint8(x):
  """[-1, 1] float images -> uint8 0..255 (clipped)."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def from_uint8(image):
  """uint8 0..255 -> float32 [-1, 1]."""
  return image.astype(jnp.float32) / 127.5 - 1.0
