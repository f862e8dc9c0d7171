"""Optimizers, schedules, the weight-decay mask and logical-axis rules chosen by config."""

import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from bigmodel_jax import config as config_lib
from bigmodel_jax import optim, parallel, tasks, trainer
from bigmodel_jax.errors import UsageError
from tests.helpers import read_metrics, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _train_config(**values):
  """config.train of the textgen default with `values` set, checked like a preset."""
  c = config_lib.load_experiment("textgen")
  config_lib.set_values(c, {f"train.{k}": v for k, v in values.items()}, "test")
  config_lib.validate(c)
  return c.train


# --- schedules -----------------------------------------------------------------------------------

# 100 steps, 10 of warmup to a peak of 1, ending at 0.1; wsd decays over the last 20 steps.
# cosine at 40: 0.1 + 0.9 * (1 + cos(pi * 30/90)) / 2 = 0.775; linear at 40: 1 - 0.9 * 30/90.
SHAPES = {
    "cosine": {
        0: 0.0,
        5: 0.5,
        10: 1.0,
        40: 0.775,
        55: 0.55,
        99: 0.1 + 0.45 * (1 + math.cos(math.pi * 89 / 90)),
        100: 0.1,
    },
    "linear": {0: 0.0, 5: 0.5, 10: 1.0, 40: 0.7, 55: 0.55, 99: 0.11, 100: 0.1},
    "constant": {0: 0.0, 5: 0.5, 10: 1.0, 55: 1.0, 99: 1.0},
    "wsd": {0: 0.0, 5: 0.5, 10: 1.0, 55: 1.0, 80: 1.0, 90: 0.55, 95: 0.325, 100: 0.1},
}


@pytest.mark.parametrize("name", SHAPES)
def test_schedule_has_its_hand_computed_shape(name):
  t = _train_config(
      schedule=name,
      steps=100,
      warmup_steps=10,
      learning_rate=1.0,
      min_lr_ratio=0.1,
      decay_fraction=0.2,
  )
  schedule = optim.make_optimizer(t)[1]
  for step, expected in SHAPES[name].items():
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-6), step


def test_wsd_decaying_over_all_steps_is_linear_and_over_none_constant():
  for fraction, other in ((1.0, "linear"), (0.0, "constant")):
    wsd = optim.wsd(
        _train_config(schedule="wsd", steps=50, warmup_steps=5, decay_fraction=fraction)
    )
    reference = optim.SCHEDULES[other](_train_config(schedule=other, steps=50, warmup_steps=5))
    steps = np.arange(50)  # the run's updates
    np.testing.assert_allclose(wsd(steps), reference(steps), rtol=1e-6)


def test_no_warmup_starts_at_the_peak():
  """warmup_steps=0 (as tabular sets) begins at the peak on every schedule."""
  for name in optim.SCHEDULES:
    t = _train_config(schedule=name, warmup_steps=0)
    assert float(optim.SCHEDULES[name](t)(0)) == pytest.approx(t.learning_rate), name


# --- weight-decay mask ---------------------------------------------------------------------------


def _old_rule(decay_embeddings: bool):
  """optim.decay_mask as it was before train.no_decay, literally."""

  def decays(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    if name in ("bias", "scale"):
      return False
    if name == "embedding" or any("wte" in str(p) or "wpe" in str(p) for p in path):
      return decay_embeddings
    return True

  return decays


def _gpt_params():
  config = config_lib.load_experiment("textgen")
  return jax.eval_shape(tasks.get(config.task)(config).init_variables, jax.random.key(0))["params"]


@pytest.mark.parametrize(
    "decay_embeddings, no_decay",
    [(False, config_lib.base_config("lm").train.no_decay), (True, r"(^|/)(bias|scale)$")],
)
def test_no_decay_regex_reproduces_the_old_mask_leaf_for_leaf(decay_embeddings, no_decay):
  # The old rule as tx.update applied it: on unboxed parameters (its `.value` paths at init only
  # shaped add_decayed_weights' empty state).
  boxed = _gpt_params()
  params = nn.meta.unbox(boxed)
  old = jax.tree_util.tree_map_with_path(_old_rule(decay_embeddings), params)
  new = optim.decay_mask(params, no_decay)
  assert jax.tree.structure(new) == jax.tree.structure(old)
  assert jax.tree.leaves(new) == jax.tree.leaves(old)
  # init sees boxed parameters: the same names, so the same mask.
  assert jax.tree.leaves(optim.decay_mask(boxed, no_decay)) == jax.tree.leaves(old)
  named = {optim.param_path(p): m for p, m in jax.tree_util.tree_leaves_with_path(new)}
  assert named["h_0/attn/query/kernel"] and not named["h_0/attn/query/bias"]
  assert not named["h_0/ln_1/scale"] and not named["ln_f/bias"]
  assert named["wte/embedding"] == named["wpe/embedding"] == decay_embeddings


def test_empty_no_decay_decays_everything():
  assert all(jax.tree.leaves(optim.decay_mask(nn.meta.unbox(_gpt_params()), "")))


# --- optimizers train ----------------------------------------------------------------------------


def _run(data_dir, workdir, **overrides):
  trainer.run(tiny_config(data_dir, train__log_every=1, **overrides), workdir)
  records = [r for _, r in sorted(read_metrics(workdir).items())]
  return (
      np.array([r["loss"] for r in records]),
      np.array([r["lr"] for r in records]),
      read_metrics(workdir, "validation"),
  )


def test_sgd_with_wsd_trains_on_its_schedule(data_dir, tmp_path):
  loss, lr, val = _run(
      data_dir,
      str(tmp_path / "sgd"),
      train__optimizer="sgd",
      train__learning_rate=0.1,
      train__schedule="wsd",
  )
  assert loss.shape == (40,) and np.isfinite(loss).all()
  assert loss[-10:].mean() < loss[:10].mean() - 0.8 and val[40]["loss"] < val[20]["loss"]
  # Step s logs the rate of its update, schedule(s - 1): 5 warmup steps, decay over the last 8.
  expected = {1: 0.0, 3: 0.04, 6: 0.1, 33: 0.1, 37: 0.1 - 0.09 * 4 / 8, 40: 0.1 - 0.09 * 7 / 8}
  for step, value in expected.items():
    assert lr[step - 1] == pytest.approx(value, rel=1e-5), step


def test_adafactor_trains(data_dir, tmp_path):
  # Adafactor's steps are relative to each parameter's scale, hence the larger rate.
  loss, _, val = _run(
      data_dir, str(tmp_path / "adafactor"), train__optimizer="adafactor", train__learning_rate=0.05
  )
  assert np.isfinite(loss).all() and loss[-10:].mean() < loss[:10].mean() - 0.8
  assert val[40]["loss"] < val[20]["loss"] < math.log(256)


def test_adafactor_on_a_mesh_matches_one_device(data_dir, tmp_path):
  """Its factored statistics cannot take the parameters' logical axis names; they replicate."""
  common = dict(train__optimizer="adafactor", train__learning_rate=0.05, train__steps=4)
  one, _, _ = _run(data_dir, str(tmp_path / "one"), parallel__num_devices=1, **common)
  mesh, _, _ = _run(
      data_dir,
      str(tmp_path / "mesh"),
      parallel__strategy="mesh",
      parallel__fsdp=2,
      parallel__tensor=2,
      **common,
  )
  np.testing.assert_allclose(mesh, one, rtol=2e-5)


# --- logical-axis rules --------------------------------------------------------------------------


def test_logical_rules_from_config_shard_the_parameters(data_dir):
  config = tiny_config(data_dir, parallel__strategy="mesh", parallel__fsdp=2, parallel__tensor=2)
  task = tasks.get(config.task)(config)
  init_fn = lambda rng: {"params": task.init_variables(rng)["params"]}

  def wte_spec(rules):
    config_lib.set_values(config, {"parallel.logical_rules": rules}, "test")
    sharding = parallel.make(config).shardings(init_fn, jax.random.key(0))
    return tuple(sharding["params"]["wte"]["embedding"].spec)

  default = config.parallel.logical_rules
  assert wte_spec(default) == ("tensor", "fsdp")  # (vocab, embed)
  assert wte_spec((("vocab", None), ("embed", ("fsdp", "tensor")))) == (None, ("fsdp", "tensor"))


# --- bad settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "train.optimizer",
            "adam",
            "train.optimizer='adam' is not valid (did you mean adamw?); "
            "valid: adamw, sgd, adafactor",
        ),
        ("train.schedule", "cos", "train.schedule='cos' is not valid (did you mean cosine"),
        ("train.schedule", "step", "valid: cosine, linear, constant, wsd"),
        ("train.momentum", "1", "train.momentum=1.0 must be in [0, 1)"),
        ("train.momentum", "-0.1", "train.momentum=-0.1 must be in [0, 1)"),
        ("train.decay_fraction", "1.5", "train.decay_fraction=1.5 must be in [0, 1]"),
        ("train.no_decay", "(bias", "train.no_decay='(bias' is not a valid regex"),
    ],
)
def test_bad_optimizer_settings_are_one_line_usage_errors(key, value, message):
  c = config_lib.load_experiment("textgen")
  config_lib.apply_overrides(c, {key: value})
  with pytest.raises(UsageError) as e:
    config_lib.validate(c)
  assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "rules",
    [
        (("embed", "model"),),
        (("embed", ("fsdp", "pipeline")),),
        (("embed",),),
        ((None, "data"),),
        ("embed",),
    ],
)
def test_bad_logical_rules_are_one_line_usage_errors(data_dir, rules):
  config = tiny_config(data_dir, parallel__logical_rules=rules)
  with pytest.raises(
      UsageError,
      match=r"^parallel\.logical_rules: .* mesh axes are None, one "
      r"of data, fsdp, tensor, or a tuple of them$",
  ):
    parallel.make(config)


def test_optimizer_settings_are_checked_before_jax_starts():
  """Config errors come before any device work: run.py sets up JAX's devices (which must happen
  before a backend starts) only after config.validate, so validation must not start one."""
  code = (
      "import sys\nfrom bigmodel_jax import config as c\nx = c.load_experiment('textgen')\n"
      "x.train.optimizer = 'adam'\ntry:\n  c.validate(x)\nexcept ValueError:\n  pass\n"
      "from jax._src import xla_bridge\nprint(xla_bridge.backends_are_initialized())"
  )
  out = subprocess.run(
      [sys.executable, "-c", code],
      capture_output=True,
      text=True,
      check=True,
      cwd=os.path.dirname(config_lib.EXPERIMENTS_DIR),
  )
  assert out.stdout.strip() == "False"


@pytest.mark.parametrize("max_norm", [100.0, 1.0, 0.01])  # not clipping; clipping; clipping hard
def test_clip_by_global_norm_matches_optax_and_torch(max_norm):
  """Our multiply-form clipping gives optax.clip_by_global_norm's updates (bit-equal when the norm
  is under the limit) and torch.nn.utils.clip_grad_norm_'s."""
  import optax
  import torch

  rng = np.random.default_rng(0)
  grads = {"w": rng.normal(size=(8, 5)), "b": rng.normal(size=(5,)), "e": rng.normal(size=(3, 2))}
  grads = jax.tree.map(lambda a: np.asarray(a, np.float32), grads)
  ours, _ = optim.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
  theirs, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
  norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
  for key in grads:
    if norm < max_norm:
      np.testing.assert_array_equal(ours[key], grads[key])
    np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6)
  tensors = [torch.tensor(grads[k]) for k in sorted(grads)]
  params = [torch.nn.Parameter(torch.zeros_like(t)) for t in tensors]
  for p, t in zip(params, tensors):
    p.grad = t.clone()
  torch.nn.utils.clip_grad_norm_(params, max_norm)
  for p, key in zip(params, sorted(grads)):
    np.testing.assert_allclose(ours[key], p.grad.numpy(), rtol=1e-5)
