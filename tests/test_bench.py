"""bench.py's PyTorch reference (bench_torch.py) against our GPT: same parameter count, and from
our init weights the same loss before and after one AdamW update; and profiling.op_table. No
timings."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import bench, optim, profiling, steps
from bigmodel_jax import config as config_lib
from bigmodel_jax.models import gpt
from bigmodel_jax.tasks import lm

try:
  from bigmodel_jax import bench_torch
except ImportError:  # torch is a dev requirement
  bench_torch = None
needs_torch = pytest.mark.skipif(bench_torch is None, reason="torch is not installed")

VOCAB = 65


def _config(use_bias: bool):
  c = config_lib.load_experiment("textgen:tiny")
  config_lib.set_values(
      c,
      {
          "model.use_bias": use_bias,
          "model.vocab_multiple": 1,
          "model.num_layers": 2,
          "model.num_heads": 2,
          "model.embed_dim": 32,
          "model.block_size": 16,
          "train.batch_size": 4,
          "train.schedule": "constant",
          "train.warmup_steps": 0,
          "train.learning_rate": 3e-3,
          "train.grad_clip": 0.05,  # small enough that clipping changes the update
          "train.weight_decay": 5.0,  # large enough that a wrong decay mask moves the loss
      },
      "test",
  )
  return c


@pytest.fixture(scope="module", params=[False, True], ids=["no_bias", "bias"])
def pair(request):
  """(our state after init and after one step, our losses, the torch trainer from our init)."""
  config = _config(request.param)
  task = lm.Task(config)
  task.model = task.model.clone(vocab_size=VOCAB)
  tx, schedule = optim.make_optimizer(config.train)
  state = steps.init_state(jax.random.key(0), task=task, tx=tx)
  batch = bench._host_batch(config, VOCAB)
  params0 = nn.meta.unbox(state.params)
  ref = bench_torch.Trainer(task.model, config.train, VOCAB, batch, schedule, compile=False)
  ref.load_params(params0)
  step = jax.jit(
      functools.partial(
          steps.train_step, task=task, tx=tx, schedule=schedule, accum=1, axis_name=None
      )
  )
  losses = []
  for _ in range(2):
    state, (m, _) = step(state, batch, jax.random.key(1))
    losses.append(float(m["loss"][0] / m["loss"][1]))
  return task, params0, losses, ref


@needs_torch
def test_reference_has_our_parameter_count(pair):
  task, params0, _, ref = pair
  assert bench_torch.param_count(ref) == gpt.param_count(params0)


@needs_torch
def test_reference_init_has_our_scale():
  """Without copied weights: torch's own init draws with our standard deviations."""
  config = config_lib.load_experiment("textgen")  # 4 x 128: enough weights for a tight estimate
  model = lm.Task(config).model.clone(vocab_size=VOCAB)
  batch = bench._host_batch(config, VOCAB)
  block = bench_torch.Trainer(model, config.train, VOCAB, batch, compile=False).net.h[0]
  residual = 0.02 / np.sqrt(2 * config.model.num_layers)
  for weight, std in ((block.qkv, 0.02), (block.fc, 0.02), (block.proj, residual)):
    assert float(weight.weight.detach().std()) == pytest.approx(std, rel=0.05)


@needs_torch
def test_same_loss_before_and_after_one_update(pair):
  """Step 1's loss checks the forward pass; step 2's, AdamW, weight decay and clipping."""
  _, _, losses, ref = pair
  torch_losses = [ref.step(), ref.step()]
  np.testing.assert_allclose(torch_losses, losses, rtol=2e-5)
  assert losses[1] < losses[0]  # the update did something


def test_without_torch_the_side_by_side_is_skipped_with_one_line(monkeypatch, capsys):
  real = bench.importlib.util.find_spec
  monkeypatch.setattr(
      bench.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name)
  )
  assert bench.torch_table(["baby"], {}) is None
  assert capsys.readouterr().out == bench.MISSING_TORCH + "\n"


def test_op_table_puts_a_traced_dot_under_its_shapes(tmp_path):
  f = jax.jit(lambda x, w: jnp.tanh(x @ w).sum(axis=0))
  x, w = jnp.ones((256, 128)), jnp.ones((128, 192))
  hlo = f.lower(x, w).compile().as_text()
  f(x, w).block_until_ready()
  jax.profiler.start_trace(str(tmp_path))
  for _ in range(3):
    f(x, w).block_until_ready()
  jax.profiler.stop_trace()
  rows = profiling.op_table(str(tmp_path), hlo, steps=3)
  ops = [r["op"] for r in rows]
  assert "dot f32[256,192] <- f32[256,128] x f32[128,192]" in ops
  assert sum(r["share"] for r in rows) == pytest.approx(1.0)
  assert all(r["ms_per_step"] > 0 for r in rows)


def test_clip_bench_times_both_clippings_on_the_presets_parameters():
  from bigmodel_jax.tools import clip_bench

  r = clip_bench.compare("baby", repeats=2)
  assert r["ours_ms"] > 0 and r["optax_ms"] > 0
  assert r["speedup"] == pytest.approx(r["optax_ms"] / r["ours_ms"])


def test_kernel_bench_times_the_same_math_as_pytorch():
  pytest.importorskip("torch")
  from bigmodel_jax.tools import kernel_bench

  rows = kernel_bench.compare("baby", "float32", repeats=1)  # checks outputs and gradients first
  by = {r["kernel"]: r for r in rows}
  assert len(rows) == 6 and all(r["ours_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
  mlp = by["dense C x 4C (mlp fc)"]["ours_ms"] + by["dense 4C x C (mlp proj)"]["ours_ms"]
  attention = by["causal attention"]["ours_ms"]
  assert by["block"]["ours_ms"] == pytest.approx(4 * by["dense C x C"]["ours_ms"] + mlp + attention)
  bound = kernel_bench.step_bound("baby", rows, peak=1e11)
  # 6 FLOPs per weight per token (forward + backward) over the blocks' 12 C^2 weights per layer
  assert bound["dense_gflop"] == pytest.approx(6 * (12 * 64) * 4 * 12 * 128**2 / 1e9)
  assert bound["tokens_per_s"] == pytest.approx(12 * 64 / (bound["dense_gflop"] / 100))
  wrong = kernel_bench.torch_dense("float32")  # a different product: x @ w instead of x @ w^T
  with pytest.raises(AssertionError, match="differ"):
    kernel_bench.compare_kernel(
        kernel_bench.ours_dense("float32"),
        lambda x, w, g: wrong(x, w.T.contiguous(), g),
        [(8, 4), (4, 4), (8, 4)],
        "float32",
        1,
        "dense",
    )


def test_xla_ab_alternates_two_compiles_and_names_a_bad_option_in_one_line():
  import subprocess
  import sys

  from bigmodel_jax.tools import xla_ab

  options = {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"}
  r = xla_ab.compare("tiny", options, {"model.num_layers": "1"}, repeats=2)
  assert r["default_tokens_per_s"] > 0 and r["variant_tokens_per_s"] > 0 and r["speedup"] > 0
  with pytest.raises(jax.errors.JaxRuntimeError, match="xla_cpu_no_such"):
    xla_ab.compare("tiny", {"xla_cpu_no_such": 1}, {"model.num_layers": "1"}, repeats=1)
  bad = subprocess.run(
      [sys.executable, "-m", "bigmodel_jax.tools.xla_ab", "--presets=tiny", "--options=[1]"],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(
      "error: --options='[1]' must be a JSON object"
  )
