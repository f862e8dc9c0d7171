"""compress/prune.py: the cubic ramp, exact sparsity, zeros that survive updates, N:M, resume."""

import contextlib
import io

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bigmodel_jax import trainer
from bigmodel_jax.compress import prune
from bigmodel_jax.errors import UsageError
from tests.helpers import tiny_config


def _cfg(**kw):
  return ml_collections.ConfigDict(
      dict(target=0.5, pattern="unstructured", start_step=2, end_step=8, params=r"(^|/)kernel$")
      | kw
  )


def _params():
  rng = np.random.default_rng(0)
  return {
      "dense": {
          "kernel": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
          "bias": jnp.asarray(rng.normal(size=(6,)), jnp.float32),
      },
      "wte": {"embedding": jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)},
  }


def _train(cfg, steps):
  """AdamW with weight decay then the pruning link, on random gradients; -> params per step."""
  tx = optax.chain(optax.adamw(0.05, weight_decay=0.1), prune.transform(cfg, train_steps=steps))
  params, history = _params(), []
  state = tx.init(params)
  for i in range(steps):
    grads = jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(i), p.shape), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return history, state


def test_cubic_ramp_reaches_the_target_exactly():
  assert float(prune.sparsity_at(2, 0.8, 2, 10)) == 0.0
  assert float(prune.sparsity_at(6, 0.8, 2, 10)) == pytest.approx(0.8 * (1 - 0.5**3))
  assert float(prune.sparsity_at(10, 0.8, 2, 10)) == pytest.approx(0.8)
  assert float(prune.sparsity_at(50, 0.8, 2, 10)) == pytest.approx(0.8)


def test_sparsity_hits_target_and_pruned_weights_stay_zero_through_updates():
  history, state = _train(_cfg(), steps=14)
  zeros = [np.asarray(p["dense"]["kernel"]) == 0 for p in history]
  assert zeros[0].sum() == 0  # before start_step nothing is pruned
  assert zeros[7].sum() == 24  # at end_step: exactly floor(0.5 * 48)
  for before, after in zip(zeros, zeros[1:]):
    assert np.all(after[before])  # once zero, zero: AdamW's moments and decay do not revive it
  assert zeros[-1].sum() == 24  # masks fixed after end_step, updates keep flowing elsewhere
  assert not np.allclose(history[-1]["dense"]["kernel"], history[8]["dense"]["kernel"])
  assert np.all(np.asarray(history[-1]["dense"]["bias"]) != 0)  # not a kernel: never pruned
  assert np.all(np.asarray(history[-1]["wte"]["embedding"]) != 0)
  masks = state[1].masks
  assert masks["dense"]["kernel"].dtype == bool and masks["wte"]["embedding"].shape == ()
  np.testing.assert_array_equal(np.asarray(masks["dense"]["kernel"]), ~zeros[-1])


def test_two_four_holds_in_every_group():
  history, _ = _train(_cfg(pattern="2:4"), steps=6)
  w = np.asarray(history[-1]["dense"]["kernel"])  # (8 in, 6 out): groups of 4 inputs
  nonzero = (w != 0).reshape(2, 4, 6).sum(axis=1)
  np.testing.assert_array_equal(nonzero, 2)
  before = np.asarray(history[0]["dense"]["kernel"])  # step 1 < start_step 2: still dense
  assert np.all(before != 0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(prune__target=1.0), r"prune.target=1.0 must be in \[0, 1\)"),
        (dict(prune__target=-0.1), r"prune.target=-0.1 must be in \[0, 1\)"),
        (dict(prune__pattern="4:2"), r"N:M needs 0 < N < M"),
        (dict(prune__pattern="half"), r"prune.pattern='half' is not valid; valid: unstructured"),
        (dict(prune__target=0.5, prune__start_step=40), r"need 0 <= start_step < end_step"),
        (dict(prune__params="("), r"prune.params='\(' is not a valid regex"),
    ],
)
def test_bad_prune_settings_are_one_line(tmp_path, overrides, match):
  config = tiny_config(str(tmp_path / "tfds"), "imagecls:tiny", **overrides)
  with pytest.raises(UsageError, match=match):
    trainer.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # nothing half-written


def test_pruned_run_resumes_with_its_masks_to_the_target(tmp_path):
  flags = dict(prune__target=0.5, prune__start_step=5, prune__end_step=20)
  config = tiny_config(str(tmp_path / "tfds"), "imagecls:tiny", **flags)
  workdir = str(tmp_path / "run")
  with contextlib.redirect_stdout(io.StringIO()):
    trainer.run(config, workdir, stop_after=12)  # mid-ramp: masks saved in the checkpoint
    state = trainer.run(config, workdir)  # resumes from step 12
  params = jax.tree.map(lambda x: np.asarray(x)[0], state.params)  # pmap: device 0's copy
  found = prune.sparsity(params, config.prune)
  assert found and all(
      s == pytest.approx(0.5, abs=1 / np.prod(s_shape))
      for s, s_shape in zip(found.values(), prune.targets(params, config.prune).values())
  )
