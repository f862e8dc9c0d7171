"""ViT against Hugging Face's, SimCLR's loss against torch, ssl -> imagecls transfer (init_from,
linear probe), the transfer study, the shared augmentations and the bad-input one-liners."""

import contextlib
import functools
import io
import json
import os

import flax
import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from bigmodel_jax import checkpoint, encoder_transfer, models, trainer
from bigmodel_jax.data import augment
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import contrastive
from tests.helpers import prepared_tfds_metadata, read_metrics, run_quietly, tiny_config

# The ssl:tiny encoder, as imagecls overrides (so imagecls:tiny builds the same ViT).
VIT = dict(model__name="vit", model__num_layers=1, model__embed_dim=16, model__num_heads=2)


def _quietly(fn, *args):
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(*args)


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory):
  """One ssl:tiny pretraining (20 steps, 8 devices), shared by the tests that read it."""
  workdir = str(tmp_path_factory.mktemp("ssl"))
  config = tiny_config("", "ssl:tiny")
  _, printed = run_quietly(config, workdir)
  return config, workdir, printed


def _params(workdir):
  config = json.load(open(os.path.join(workdir, "config.json")))
  path = os.path.join(workdir, "checkpoints", str(config["train"]["steps"]), "state")
  return encoder_transfer.flat(checkpoint.ocp.StandardCheckpointer().restore(path)["params"])


# --- the model and the loss against references -------------------------------------------------


def test_vit_matches_hugging_face_vit_with_the_same_weights():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf_config = transformers.ViTConfig(
      hidden_size=16,
      num_hidden_layers=2,
      num_attention_heads=2,
      intermediate_size=32,
      hidden_act="gelu_pytorch_tanh",  # flax's nn.gelu is the tanh approximation
      layer_norm_eps=1e-5,
      image_size=8,
      patch_size=2,
      num_channels=3,
      qkv_bias=True,
  )
  torch.manual_seed(0)
  hf = transformers.ViTModel(hf_config, add_pooling_layer=False).eval()
  w = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  d, h = 16, 2
  params = {
      "patch_embed": {  # conv (out, C, p, p) -> dense over (py, px, C)-ordered patch pixels
          "kernel": w["embeddings.patch_embeddings.projection.weight"]
          .transpose(2, 3, 1, 0)
          .reshape(-1, d),
          "bias": w["embeddings.patch_embeddings.projection.bias"],
      },
      "cls": w["embeddings.cls_token"].reshape(d),
      "pos_embed": w["embeddings.position_embeddings"][0],
      "ln_f": {"scale": w["layernorm.weight"], "bias": w["layernorm.bias"]},
  }
  for i in range(2):
    p = f"layers.{i}."  # transformers 5 names
    dense = functools.partial(_dense, w, p)
    norm = lambda name, p=p: {"scale": w[f"{p}{name}.weight"], "bias": w[f"{p}{name}.bias"]}  # noqa
    params[f"block_{i}"] = {
        "ln_1": norm("layernorm_before"),
        "ln_2": norm("layernorm_after"),
        "attn": {
            "query": dense("attention.q_proj", (d, h, d // h)),
            "key": dense("attention.k_proj", (d, h, d // h)),
            "value": dense("attention.v_proj", (d, h, d // h)),
            "out": {
                "kernel": w[f"{p}attention.o_proj.weight"].T.reshape(h, d // h, d),
                "bias": w[f"{p}attention.o_proj.bias"],
            },
        },
        "mlp": {"fc": dense("mlp.fc1", (d, 32)), "proj": dense("mlp.fc2", (32, d))},
    }
  cfg = models.default_config("vit")
  cfg.update(num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, patch_size=2)
  x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype(np.float32)
  ours = models.make(cfg, num_classes=0).apply({"params": params}, x)  # (B, D): the class token
  with torch.no_grad():
    theirs = hf(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state[:, 0]
  np.testing.assert_allclose(ours, theirs.numpy(), atol=2e-5, rtol=1e-4)


def _dense(w, prefix, name, shape):
  """A torch Linear (out, in) as a flax kernel (in, *out) and bias (*out)."""
  return {
      "kernel": w[f"{prefix}{name}.weight"].T.reshape(shape),
      "bias": w[f"{prefix}{name}.bias"].reshape(shape[1:]),
  }


def test_nt_xent_matches_cross_entropy_over_the_other_views_in_torch():
  torch = pytest.importorskip("torch")
  z = np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32)  # 4 pairs
  weight = np.array([1, 1, 1, 0], np.float32)  # the last pair is padding
  loss, metrics = contrastive.nt_xent(z, weight, 0.5)
  # SimCLR's formulation: cross-entropy of each real view over all other real views.
  keep = torch.tensor([0, 1, 2, 4, 5, 6])
  zt = torch.nn.functional.normalize(torch.from_numpy(z)[keep], dim=1)
  logits = zt @ zt.T / 0.5
  logits.fill_diagonal_(float("-inf"))
  expected = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 4, 5, 0, 1, 2]))
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)
  assert float(metrics["loss"][1]) == 6


# --- pretraining and transfer --------------------------------------------------------------------


def test_ssl_run_reports_its_metrics_and_the_showcase_matches(ssl_run):
  config, workdir, printed = ssl_run
  val = read_metrics(workdir, "validation")
  assert set(val[20]) - {"step", "split"} == {"loss", "accuracy", "knn_accuracy"}
  assert val[20]["loss"] < np.log(63) + 0.05  # 64 views: each picks among 63
  assert f"features (no labels in training): {100 * val[20]['knn_accuracy']:.2f}%" in printed


def test_contrastive_loss_falls_when_trained_on_one_batch():
  """The task's own loss, gradients and views: Adam on one batch of 16 digits (32 views) learns
  to pair each view with its partner. (Mean pooling: at this tiny width a class token's output
  starts almost independent of the image, and takes longer than 40 steps to leave that.)"""
  overrides = dict(model__pooling="mean", ssl__proj_hidden=64, ssl__proj_dim=32)
  task = contrastive.Task(tiny_config("", "ssl:tiny", **overrides))
  batch = task.eval_batches(16)[0]
  params = flax.linen.meta.unbox(task.init_variables(jax.random.key(0))["params"])
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state):
    (loss, (metrics, _)), g = jax.value_and_grad(task.loss, has_aux=True)(
        params, {}, batch, jax.random.key(0), False
    )
    updates, opt_state = tx.update(g, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, metrics

  opt_state = tx.init(params)
  losses = []
  for _ in range(40):
    params, opt_state, loss, metrics = step(params, opt_state)
    losses.append(float(loss))
  assert losses[0] > np.log(31) - 0.3  # near chance at the start
  assert losses[-1] < losses[0] - 1.0
  accuracy = float(metrics["accuracy"][0] / metrics["accuracy"][1])
  assert accuracy > 0.3  # chance 1/31


@pytest.fixture(scope="module")
def probe_run(ssl_run, tmp_path_factory):
  """imagecls:tiny with ssl:tiny's ViT, a linear probe on the ssl encoder."""
  _, ssl_dir, _ = ssl_run
  workdir = str(tmp_path_factory.mktemp("probe"))
  config = tiny_config(
      "", "imagecls:tiny", **VIT, init_from=ssl_dir, linear_probe=True, train__weight_decay=0.0
  )
  _quietly(trainer.run, config, workdir)
  return workdir


def test_imagecls_starts_from_the_ssl_encoder_with_a_fresh_head_and_the_probe_freezes_it(
    ssl_run, probe_run
):
  pretrained, probed = _params(ssl_run[1]), _params(probe_run)
  assert {k for k in probed if not k.startswith("head/")} == {
      k for k in pretrained if not k.startswith("projector/")
  }
  for name, value in probed.items():
    if name.startswith("head/"):
      assert np.abs(value).sum() > 0
    else:  # frozen: exactly the pretrained encoder after training
      np.testing.assert_array_equal(value, pretrained[name], err_msg=name)


def test_transfer_study_prints_the_table_and_writes_the_plot(ssl_run, tmp_path):
  config, workdir, _ = ssl_run
  assert tuple(config.study.starts) == ("scratch", "ssl")
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    results = trainer.run(config, workdir, "transfer_study")
  assert set(results) == {"scratch", "ssl"} and set(results["ssl"]) == {0.02, 1.0}
  lines = out.getvalue().splitlines()
  assert any(line.split()[:1] == ["2%"] for line in lines), lines
  png = os.path.join(workdir, "transfer_study.png")
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(os.path.join(workdir, "transfer_study.json")))
  assert saved["ssl"]["0.02"] == results["ssl"][0.02]
  # 2% of the 1,437 training digits drawn per class (3 of each): imagecls trained on all 30.
  run = os.path.join(workdir, "transfer_study", "ssl_0.02_seed0")
  assert read_metrics(run)[6]["examples_per_s"] > 0
  assert json.load(open(os.path.join(run, "config.json")))["train"]["batch_size"] == 30


# --- augmentations --------------------------------------------------------------------------------


def test_resized_crop_and_jitter_stay_in_range_and_are_deterministic():
  x = np.tile(np.arange(0, 240, 30, dtype=np.uint8)[None, :, None], (8, 1, 1))[None]  # (1, 8, 8, 1)
  x = np.repeat(x, 16, 0)
  s = augment.Settings(min_area=0.3, jitter=0.0)
  out = augment.apply(["resized_crop"], x, np.random.default_rng(0), s)
  again = augment.apply(["resized_crop"], x, np.random.default_rng(0), s)
  np.testing.assert_array_equal(out, again)
  assert out.shape == x.shape and out.min() >= x.min() and out.max() <= x.max()
  assert not all(np.array_equal(o, x[0]) for o in out)  # zoomed: columns move
  # Each row is still non-decreasing left to right (a zoom of a ramp is a ramp).
  assert (np.diff(out.astype(int), axis=2) >= 0).all()
  same = augment.apply(["jitter"], x, np.random.default_rng(0), s)  # jitter 0: no change
  np.testing.assert_array_equal(same, x)


# --- bad input -----------------------------------------------------------------------------------


def _one_line(error_type, match, fn, *args):
  with pytest.raises(error_type, match=match) as e:
    _quietly(fn, *args)
  assert "\n" not in str(e.value)


def test_bad_input_is_one_line_and_writes_nothing(ssl_run, probe_run, tmp_path):
  ssl_dir = ssl_run[1]
  never = str(tmp_path / "never")
  cases = [
      (UsageError, "patch_size=3 does not divide the 8x8 images", "imagecls:tiny",
       {**VIT, "model__patch_size": 3}),
      (UsageError, r"data.label_fraction=0.0 must be in \(0, 1\]", "imagecls:tiny",
       {"data__label_fraction": 0.0}),
      (UsageError, r"label_fraction=1.5 must be in \(0, 1\]", "imagecls:tiny",
       {"data__label_fraction": 1.5}),
      (UsageError, r"study.fractions=\(0.1, 2.0\) must be label fractions in \(0, 1\]",
       "ssl:tiny", {"study__fractions": (0.1, 2.0)}),
      (UsageError, "unknown augmentation 'blurr'.*valid: crop, flip, cutout", "ssl:tiny",
       {"augment__ops": ("crop", "blurr")}),
      (UsageError, "linear_probe=true .* needs model.name=vit", "imagecls:tiny",
       {"linear_probe": True}),
      (RunError, r"another shape .*block_0/attn/key/bias: checkpoint \(2, 8\), now \(2, 16\)",
       "imagecls:tiny",
       {**VIT, "model__embed_dim": 32, "init_from": ssl_dir}),
      (RunError, "holds a 'vit' encoder of another shape .*no parameter in common",
       "imagecls:tiny", {"init_from": ssl_dir}),
      (RunError, "is a run of another task .*'classify_image'.* start from a run of 'contrastive'",
       "ssl:tiny", {"init_from": probe_run}),
  ]  # fmt: skip
  for error, match, experiment, overrides in cases:
    config = tiny_config("", experiment, **overrides)
    _one_line(error, match, trainer.run, config, never)
    assert not os.path.exists(never), match


# --- the tfds presets, on mock data ---------------------------------------------------------------


@pytest.mark.parametrize("preset, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_presets_pretrain_on_mock_data(preset, shape, tmp_path):
  data_dir = str(tmp_path / "tfds")
  prepared_tfds_metadata(data_dir, preset, {"train": 20, "test": 10})
  with tfds.testing.mock_data(
      num_examples=16, data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES
  ):
    config = tiny_config(
        data_dir,
        f"ssl:{preset}",
        model__num_layers=1,
        model__embed_dim=16,
        ssl__proj_hidden=16,
        ssl__proj_dim=8,
        train__steps=1,
        train__batch_size=8,
        parallel__num_devices=1,  # 16 views in one NT-Xent (8 devices would see 2 each)
        train__eval_every=1,
        checkpoint__every_steps=1,
    )
    task = contrastive.Task(config)
    assert task.info.shape == shape and task.batch_spec(8)["view2"].shape == (8, *shape)
    if preset == "cifar10":  # the same code path as mnist from here; shapes only, to save time
      shapes = jax.eval_shape(task.init_variables, jax.random.key(0))["params"]
      assert shapes["patch_embed"]["kernel"].value.shape == (4 * 4 * 3, 16)
      return
    _quietly(trainer.run, config, str(tmp_path / "run"))
  val = read_metrics(str(tmp_path / "run"), "validation")[1]
  assert 0 <= val["knn_accuracy"] <= 1 and val["loss"] > 0
