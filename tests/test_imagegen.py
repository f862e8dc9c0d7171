"""imagegen: flow matching through the trainer, the sampler's maths, EMA, the U-Net, the Frechet
distance, the PNG grid, tfds presets on mock data, and bad input."""

import contextlib
import functools
import io
import os
import subprocess
import sys

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from bigmodel_jax import config as config_lib
from bigmodel_jax import flow_matching, image_quality, steps, trainer
from bigmodel_jax.data import images
from bigmodel_jax.errors import UsageError
from bigmodel_jax.models import unet
from bigmodel_jax.tasks import generate_image
from tests.helpers import prepared_tfds_metadata, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tfds.disable_progress_bar()


def _config(preset="tiny", **overrides):
  c = config_lib.load_experiment(f"imagegen:{preset}")
  config_lib.set_values(c, {k.replace("__", "."): v for k, v in overrides.items()}, "test")
  config_lib.validate(c)
  return c


def _quietly(fn, *args):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    value = fn(*args)
  return value, out.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One tiny run (30 steps, 8 devices) on the digits, stopped at step 15 (as if interrupted) and
  resumed; its final eval trains the tiny classifier. -> (config, workdir, printed, at_15), at_15 =
  (the EMA in memory when it stopped, the EMA its checkpoint restores)."""
  workdir = str(tmp_path_factory.mktemp("imagegen"))
  config = _config()
  stopped, _ = _quietly(functools.partial(trainer.run, stop_after=15), config, workdir)
  _, saved, step = image_quality.restore(config, workdir)
  assert step == 15
  in_memory = jax.tree.map(lambda x: np.asarray(x)[0], stopped.model_state["ema"])  # device 0
  _, printed = _quietly(trainer.run, config, workdir)  # resumes from step 15
  return config, workdir, printed, (in_memory, saved.model_state["ema"])


# --- training, EMA, quality ---------------------------------------------------------------


def test_loss_falls_and_quality_is_reported_next_to_real_vs_real(trained):
  config, workdir, printed, _ = trained
  train, val = read_metrics(workdir), read_metrics(workdir, "validation")
  assert train[30]["loss"] < train[10]["loss"] - 0.1
  # At initialisation the U-Net outputs 0 (zero-initialised last conv), whose expected loss is
  # E[(x1 - noise)^2] = E[x1^2] + 1 over the held-out images; training must get well below it.
  x1 = images.load_digits()["test"]["image"] / 127.5 - 1.0
  assert val[30]["loss"] < (x1**2).mean() + 1.0 - 0.2
  final = val[30]
  assert 0 <= final["class_accuracy"] <= 1 and final["fid"] > 0 and final["fid_real"] > 0
  # 30 steps of a tiny model: far from real images, so the reference must be the smaller distance.
  assert final["fid_real"] < final["fid"]
  assert f"Frechet distance {final['fid']:.3f} (real vs real: {final['fid_real']:.3f})" in printed
  assert os.path.isdir(os.path.join(workdir, "classifier", "checkpoints"))  # cached for next time
  values, _ = _quietly(trainer.run, config, workdir, "eval")
  for name in ("loss", "class_accuracy", "fid", "fid_real"):
    assert values[name] == pytest.approx(final[name], rel=1e-4), name  # deterministic


def test_ema_is_saved_and_resumed_exactly_and_counts_every_step(trained):
  config, workdir, _, (in_memory, saved) = trained
  assert float(saved["count"]) == 15.0
  for a, b in zip(jax.tree.leaves(in_memory), jax.tree.leaves(saved), strict=True):
    np.testing.assert_array_equal(a, b)  # bit for bit
  _, state, step = image_quality.restore(config, workdir)
  ema = state.model_state["ema"]
  assert step == 30 and float(ema["count"]) == 30.0  # the resumed run carried it on
  p, e = state.params["stem"]["kernel"], ema["params"]["stem"]["kernel"]
  assert p.shape == e.shape and not np.allclose(p, e)  # a lagging average, not a copy


def test_ema_moves_once_per_step_towards_the_updated_weights_with_grad_accum(tmp_path):
  """With 2 micro-batches the loss runs twice, the EMA once, from the parameters after the
  update (Task.after_update)."""
  config = _config(train__grad_accum_steps=2)
  task = generate_image.Task(config)
  task.setup(str(tmp_path), create=True)
  tx = optax.adam(1e-2)
  state = steps.init_state(jax.random.key(0), task=task, tx=tx)
  state = jax.tree.map(
      lambda x: x.value if isinstance(x, nn.Partitioned) else x,
      state,
      is_leaf=lambda x: isinstance(x, nn.Partitioned),
  )
  batch = next(task.train_iterator(8, 0, 0, 1))
  step = functools.partial(
      steps.train_step, task=task, tx=tx, schedule=lambda _: 1e-2, accum=2, axis_name=None
  )
  new, _ = jax.jit(step)(state, batch, jax.random.key(1))
  expected = flow_matching.ema_update(state.model_state["ema"], new.params, config.flow.ema_decay)
  assert float(new.model_state["ema"]["count"]) == 1.0
  for a, b in zip(jax.tree.leaves(new.model_state["ema"]), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_ema_update_matches_its_formula():
  params = {"w": jnp.array([1.0, 2.0])}
  ema = {"params": {"w": jnp.array([0.0, 0.0])}, "count": jnp.float32(0.0)}
  ema = flow_matching.ema_update(ema, params, decay=0.999)
  np.testing.assert_allclose(ema["params"]["w"], [0.9, 1.8], rtol=1e-6)  # d = 1/10 at n = 0
  ema = {"params": {"w": jnp.array([0.0, 0.0])}, "count": jnp.float32(1e6)}
  ema = flow_matching.ema_update(ema, params, decay=0.99)  # ramp over: d = decay
  np.testing.assert_allclose(ema["params"]["w"], [0.01, 0.02], rtol=1e-5)


# --- sampling ------------------------------------------------------------------------------


def test_euler_sampler_with_guidance_lands_on_the_mixed_target():
  """Data that is one point x*_c per class (and x*_u without a class) has the exact velocity
  (x* - x) / (1 - t); Euler lands on it at t = 1, and guidance w on (1 - w) x*_u + w x*_c."""
  targets = jnp.stack([jnp.full((2, 2, 1), 0.5), jnp.full((2, 2, 1), -0.25), jnp.zeros((2, 2, 1))])

  def velocity(variables, x, t, label):
    del variables
    return (targets[label] - x) / (1.0 - t)[:, None, None, None]

  labels = jnp.array([0, 1, 1])
  for w in (0.0, 1.0, 3.0):
    x = flow_matching.sample(
        velocity, {}, labels, jax.random.key(0), jnp.float32(w), shape=(2, 2, 1), steps=7, null=2
    )
    want = (1 - w) * targets[2] + w * targets[labels]
    np.testing.assert_allclose(x, want, atol=1e-5)


def test_sample_mode_writes_one_row_per_class_and_is_deterministic(trained, tmp_path):
  config, workdir, _, _ = trained
  paths = []
  for name in ("a.png", "b.png"):
    c = _config(sample__classes=(3, 8), sample__per_class=4, sample__output=str(tmp_path / name))
    path, printed = _quietly(trainer.run, c, workdir, "sample")
    assert path == str(tmp_path / name) and f"to {path}" in printed and "rows: 3, 8" in printed
    paths.append(path)
  image = np.asarray(Image.open(paths[0]))
  # 2 rows x 4 columns of 8x8 images at scale 8 with 2-pixel gaps: (2*66+2, 4*66+2).
  assert image.shape == (134, 266)
  assert np.array_equal(image, np.asarray(Image.open(paths[1])))
  grid = image[2:, 2:].reshape(2, 66, 4, 66)[:, :64, :, :64]  # drop the gaps
  assert grid.std() > 10  # images, not a blank canvas


def test_bad_sampling_settings_are_one_line_errors(trained, tmp_path):
  config, workdir, _, _ = trained
  for overrides, message in [
      ({"sample__guidance_scale": -1.0}, r"sample.guidance_scale=-1.0 must be >= 0"),
      ({"sample__steps": 0}, r"sample.steps=0 must be >= 1"),
      ({"sample__classes": (3, 10)}, r"class id 10 is out of range; valid: 0..9"),
      ({"sample__classes": (-1,)}, r"class id -1 is out of range"),
  ]:
    with pytest.raises(UsageError, match=message) as e:
      trainer.run(_config(**overrides), workdir, "sample")
    assert "\n" not in str(e.value)
  assert not (tmp_path / "samples.png").exists()
  with pytest.raises(UsageError, match=r"imagegen trains on digits or a prepared tfds:<name>"):
    generate_image.Task(_config(data__source=f"image_folder:{tmp_path}"))


def test_bad_guidance_on_the_command_line_exits_2_before_writing(tmp_path):
  workdir = tmp_path / "never"
  result = subprocess.run(
      [
          sys.executable,
          "run.py",
          "--experiment=imagegen:tiny",
          f"--workdir={workdir}",
          "--config.sample.guidance_scale=-0.5",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=False,
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: sample.guidance_scale=-0.5 must be >= 0 (0: unconditional, 1: conditional, above "
      "1: stronger guidance)"
  ]
  assert not workdir.exists()


# --- pieces --------------------------------------------------------------------------------


def test_unet_keeps_the_image_shape_and_starts_at_zero():
  """At 28x28 (MNIST) the 7x7 level rounds up to 4x4: the way up resizes to the skip's size."""
  size, widths = 28, (8, 8, 16)
  cfg = config_lib.load_experiment("imagegen:tiny").model
  cfg.widths = widths
  model = unet.make(cfg, num_classes=10)
  x = jnp.ones((2, size, size, 3))
  t, label = jnp.array([0.1, 0.9]), jnp.array([3, 10])  # 10: "no class"
  variables = jax.jit(model.init)(jax.random.key(0), x, t, label)  # one compilation, not per op
  out = jax.jit(model.apply)(variables, x, t, label)
  assert out.shape == x.shape and float(jnp.abs(out).max()) == 0.0  # zero-initialised output


def test_frechet_distance_matches_closed_forms():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4000, 3)) @ np.diag([1.0, 2.0, 0.5])
  b = rng.normal(size=(3000, 3)) @ np.diag([1.5, 1.0, 0.5]) + [1.0, 0.0, -2.0]
  assert image_quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
  # Shifting a set by c moves only the means: the distance is ||c||^2.
  assert image_quality.frechet_distance(a, a + [3.0, 0.0, 4.0]) == pytest.approx(25.0, abs=1e-6)

  # Against the definition computed another way, Tr((S1 S2)^(1/2)) = Tr((R S2 R)^(1/2)) with
  # R = S1^(1/2): symmetric square roots from eigendecompositions (no scipy.linalg.sqrtm).
  def psd_sqrt(m):
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  r = psd_sqrt(s1)
  want = (
      ((a.mean(0) - b.mean(0)) ** 2).sum()
      + np.trace(s1)
      + np.trace(s2)
      - 2 * np.trace(psd_sqrt(r @ s2 @ r))
  )
  assert image_quality.frechet_distance(a, b) == pytest.approx(want, rel=1e-8)
  # Near the population value for these Gaussians: |mu|^2 + sum (sigma1 - sigma2)^2.
  assert image_quality.frechet_distance(a, b) == pytest.approx(5.0 + 0.25 + 1.0, abs=0.15)


# --- tfds presets on mock data -------------------------------------------------------------


@pytest.fixture
def mock_tfds(tmp_path):
  data_dir = str(tmp_path / "tfds")
  for name in ("mnist", "fashion_mnist", "cifar10"):
    prepared_tfds_metadata(data_dir, name, {"train": 20, "test": 10})
  with tfds.testing.mock_data(
      num_examples=12, data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES
  ):
    yield data_dir


def test_tfds_presets_read_their_datasets(mock_tfds):
  for preset, shape in [
      ("mnist", (28, 28, 1)),
      ("fashion_mnist", (28, 28, 1)),
      ("cifar10", (32, 32, 3)),
  ]:
    config = _config(preset, data__tfds_data_dir=mock_tfds)
    assert config.data.source == f"tfds:{preset}"
    assert config.quality.classifier == f"imagecls:{preset}"
    task = generate_image.Task(config)
    batch = next(task.train_iterator(4, seed=0, process_index=0, process_count=1))
    assert batch["image"].shape == (4, *shape) and batch["image"].dtype == np.uint8
    assert task.eval_batches(8)[1]["weight"].tolist() == [1] * 4 + [0] * 4  # 12 = 8 + 4 padded
    assert task.info.num_classes == 10 and task.batch_spec(2)["image"].shape == (2, *shape)
