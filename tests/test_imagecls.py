"""imagecls: CNN/ResNet through the trainer, augmentation, data sources, predict, errors."""

import contextlib
import io
import zlib

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from bigmodel_jax import classification, trainer
from bigmodel_jax import config as config_lib
from bigmodel_jax.data import arrays, images
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import classify_image
from tests.helpers import prepared_tfds_metadata, read_metrics, run_quietly

tfds.disable_progress_bar()


def _config(preset="tiny", **overrides):
  c = config_lib.load_experiment(f"imagecls:{preset}")
  config_lib.set_values(c, {k.replace("__", "."): v for k, v in overrides.items()}, "test")
  config_lib.validate(c)
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One tiny CNN run (30 steps, 8 devices) on the digits, shared by the tests that read it."""
  workdir = str(tmp_path_factory.mktemp("imagecls"))
  config = _config()
  _, printed = run_quietly(config, workdir)
  return config, workdir, printed


# --- training, eval, showcase --------------------------------------------------------------------


def test_loss_falls_and_showcase_matches_eval(trained):
  config, workdir, printed = trained
  train, val = read_metrics(workdir), read_metrics(workdir, "validation")
  assert train[30]["loss"] < train[10]["loss"] - 0.1
  assert val[30]["loss"] < val[15]["loss"] < np.log(10)
  assert val[30]["accuracy"] > 0.2  # chance is 0.1
  # The host-side showcase (whole test split, no padding) agrees with the on-device eval.
  assert f"top-1 test accuracy {100 * val[30]['accuracy']:.2f}%" in printed
  table = [line.split() for line in printed.splitlines() if line.strip()[:1].isdigit()]
  assert [row[0] for row in table] == [str(i) for i in range(10)]
  assert sum(int(row[1]) for row in table) == 360
  assert sum(int(row[2]) for row in table) == round(val[30]["accuracy"] * 360)


def test_eval_mode_reproduces_the_last_eval(trained):
  config, workdir, _ = trained
  with contextlib.redirect_stdout(io.StringIO()):
    values = trainer.run(config, workdir, "eval")
  assert values["accuracy"] == pytest.approx(read_metrics(workdir, "validation")[30]["accuracy"])


def _png(path, pixels):
  Image.fromarray(pixels).save(path)
  return str(path)


def test_predict_reads_an_image_like_the_dataset(trained, tmp_path):
  config, workdir, _ = trained
  digit = images.load_digits()["test"]["image"][7, :, :, 0]  # (8, 8) uint8, light on dark

  def predict(pixels, name):
    config.predict.input = _png(tmp_path / name, pixels)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      top = trainer.run(config, workdir, "predict")
    return top, out.getvalue()

  exact, printed = predict(digit, "exact.png")
  assert "(inverted)" not in printed and f"{exact[0][1]:.4f}" in printed
  assert len(exact) == 3 and exact[0][1] >= exact[1][1] >= exact[2][1] > 0
  # Dark ink on white at 8x the size, as a person would draw it: area-averaged back to 8x8 and
  # inverted, it is the dataset's image again, so the prediction is the same.
  drawn, printed = predict(np.kron(255 - digit, np.ones((8, 8), np.uint8)), "drawn.png")
  assert "(inverted)" in printed
  assert [n for n, _ in drawn] == [n for n, _ in exact]
  np.testing.assert_allclose([p for _, p in drawn], [p for _, p in exact], rtol=1e-6)
  rgb, _ = predict(np.stack([digit] * 3, -1), "rgb.png")  # colour files become grayscale
  np.testing.assert_allclose([p for _, p in rgb], [p for _, p in exact], rtol=1e-6)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("", None, r"needs --config.predict.input=<image file, folder or glob>"),
        ("missing.png", None, r"predict.input=.*missing.png does not exist"),
        ("notes.png", b"not an image at all", r"notes.png is not an image that pillow can read"),
    ],
)
def test_predict_input_errors_are_one_line(trained, tmp_path, name, content, match):
  config, workdir, _ = trained
  if content is not None:
    (tmp_path / name).write_bytes(content)
  config.predict.input = str(tmp_path / name) if name else ""
  with pytest.raises(UsageError, match=match) as e:
    trainer.run(config, workdir, "predict")
  assert "\n" not in str(e.value)


def test_modes_need_a_trained_run(tmp_path):
  with pytest.raises(RunError, match="no dataset.json in"):
    trainer.run(_config(), str(tmp_path / "empty"), "predict")


# --- ResNet and BatchNorm ------------------------------------------------------------------------


def test_resnet_trains_with_batch_stats_averaged_over_devices(tmp_path):
  config = _config(
      model__name="resnet",
      model__widths=(8, 16),
      model__stage_sizes=(1, 1),
      train__steps=20,
      train__learning_rate=1e-2,
      train__eval_every=10,
      train__log_every=5,
      checkpoint__every_steps=20,
  )
  with contextlib.redirect_stdout(io.StringIO()):
    state = trainer.run(config, str(tmp_path))
  train, val = read_metrics(str(tmp_path)), read_metrics(str(tmp_path), "validation")
  assert train[20]["loss"] < train[5]["loss"] - 0.05
  assert val[20]["loss"] < val[10]["loss"]  # evaluated with the running averages
  stats = state.model_state["batch_stats"]
  means = jax.tree.leaves(stats)
  assert means and all(np.isfinite(np.asarray(m)).all() for m in means)
  stem_mean = np.asarray(stats["stem_bn"]["mean"])  # (devices, width): one copy per device
  assert stem_mean.shape == (8, 8)
  np.testing.assert_allclose(stem_mean, np.broadcast_to(stem_mean[0], stem_mean.shape))
  assert np.abs(stem_mean[0]).max() > 1e-3  # moved from its zero initialisation


def test_resnet_uses_batch_statistics_only_in_training():
  from bigmodel_jax.models import resnet  # pylint: disable=g-import-not-at-top

  model = resnet.ResNet(num_classes=3, widths=(4, 8), stage_sizes=(1, 1))
  x = np.random.default_rng(0).normal(2.0, 3.0, (4, 8, 8, 1)).astype(np.float32)
  variables = model.init(jax.random.key(0), x)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 3)
  moved = np.asarray(updates["batch_stats"]["stem_bn"]["mean"])
  assert np.abs(moved).max() > 0.01  # running mean pulled towards the batch's mean
  # Evaluation reads the running averages and changes nothing.
  a = model.apply(variables, x, train=False)
  b = model.apply(variables, x[:1], train=False)
  np.testing.assert_allclose(a[:1], b, rtol=1e-5, atol=1e-6)  # no dependence on the batch


# --- data: digits, augmentation, TFDS ------------------------------------------------------------


def test_digits_are_the_real_bundled_scans_split_stratified_and_fixed():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  data = images.load_digits()
  train, test = data["train"], data["test"]
  assert train["image"].shape == (1437, 8, 8, 1) and test["image"].shape == (360, 8, 8, 1)
  assert train["image"].dtype == np.uint8 and train["image"].max() == 255
  raw = datasets.load_digits()
  every = np.concatenate([train["image"], test["image"]]).reshape(1797, 64).astype(np.int64)
  expected = np.round(raw.images.reshape(1797, 64) * 255 / 16).astype(np.int64)
  assert sorted(map(tuple, every)) == sorted(map(tuple, expected))  # all of them, each once
  counts = np.bincount(test["label"], minlength=10)
  totals = np.bincount(raw.target, minlength=10)
  assert np.all(np.abs(counts - totals * 0.2) <= 1)  # stratified
  again = images.load_digits()
  np.testing.assert_array_equal(again["test"]["image"], test["image"])
  assert not np.array_equal(images.load_digits(seed=1)["test"]["label"], test["label"])


def _pattern_batch(b=16, h=6, w=5, c=2):
  x = (np.arange(b * h * w * c).reshape(b, h, w, c) % 250 + 1).astype(np.uint8)  # no zeros
  return {"image": x, "label": np.arange(b, dtype=np.int32)}


def test_crop_shifts_each_image_within_the_padding():
  batch = _pattern_batch()
  out = images.make_augment(crop_padding=2)(batch, np.random.default_rng(0))["image"]
  shifts = set()
  for x, y in zip(batch["image"], out):
    padded = np.pad(x, ((2, 2), (2, 2), (0, 0)))
    found = [
        (dy, dx)
        for dy in range(5)
        for dx in range(5)
        if np.array_equal(padded[dy : dy + 6, dx : dx + 5], y)
    ]
    assert found, "not a crop of the padded image"
    shifts.add(found[0])
  assert len(shifts) > 3  # different shifts per image


def test_flip_mirrors_some_images_and_cutout_blanks_a_square():
  batch = _pattern_batch(b=32)
  out = images.make_augment(flip=True)(batch, np.random.default_rng(1))["image"]
  flipped = [np.array_equal(y, x[:, ::-1]) for x, y in zip(batch["image"], out)]
  kept = [np.array_equal(y, x) for x, y in zip(batch["image"], out)]
  assert all(f or k for f, k in zip(flipped, kept)) and 5 < sum(flipped) < 27
  out = images.make_augment(cutout=3, fill=(0, 0))(batch, np.random.default_rng(2))["image"]
  for x, y in zip(batch["image"], out):
    hole = (y != x).any(-1)
    rows, cols = np.nonzero(hole)
    assert 1 <= hole.sum() <= 9 and np.all(y[hole] == 0)
    assert rows.max() - rows.min() < 3 and cols.max() - cols.min() < 3
  assert images.make_augment() is None


def test_augmented_stream_is_deterministic_per_seed_and_eval_is_untouched():
  data = images.load_digits()["train"]
  augment = images.make_augment(crop_padding=1, cutout=2)
  first = lambda seed: [
      b["image"]
      for _, b in zip(
          range(3), iter(arrays.train_dataset(data, batch_size=8, seed=seed, augment=augment))
      )
  ]
  a, b, c = first(3), first(3), first(4)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))
  task = classify_image.Task(_config())
  batch = task.eval_batches(32)[0]
  np.testing.assert_array_equal(batch["image"], images.load_digits()["test"]["image"][:32])


@pytest.fixture
def mock_tfds(tmp_path):
  data_dir = str(tmp_path / "tfds")
  for name in ("mnist", "fashion_mnist", "cifar10"):
    prepared_tfds_metadata(data_dir, name, {"train": 20, "test": 10})
  prepared_tfds_metadata(data_dir, "tiny_shakespeare", {"train": 1, "test": 1})
  with tfds.testing.mock_data(
      num_examples=12, data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES
  ):
    yield data_dir


@pytest.mark.parametrize(
    "name, shape",
    [
        ("mnist", (28, 28, 1)),
        ("fashion_mnist", (28, 28, 1)),
        ("cifar10", (32, 32, 3)),
    ],
)
def test_tfds_image_datasets_load_by_name(mock_tfds, name, shape):
  source = f"tfds:{name}"
  info = images.info(source)
  # Class names come from the prepared dataset's metadata (CIFAR-10's from its build).
  names = tfds.builder(name).info.features["label"].names
  assert info.shape == shape and info.class_names == names and info.num_classes == 10
  if name == "fashion_mnist":
    assert names[0] == "T-shirt/top"
  data = images.load(source)
  for split in ("train", "test"):
    assert data[split]["image"].shape == (12, *shape) and data[split]["image"].dtype == np.uint8
    assert data[split]["label"].dtype == np.int32 and 0 <= data[split]["label"].min()
    assert data[split]["label"].max() < 10
  task = classify_image.Task(_config(data__source=source))
  assert task.model.num_classes == 10
  assert task.batch_spec(4)["image"].shape == (4, *shape)
  assert task.eval_batches(8)[1]["weight"].tolist() == [1] * 4 + [0] * 4  # 12 = 8 + 4 padded


def test_tfds_source_errors(mock_tfds, tmp_path):
  with pytest.raises(UsageError, match=r"needs an Image feature 'image' and a ClassLabel 'label'"):
    images.info("tfds:tiny_shakespeare")
  with pytest.raises(
      UsageError, match=r"unknown tfds dataset 'cifar11'; did you mean tfds:cifar10"
  ):
    images.info("tfds:cifar11")


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(
      UsageError,
      match=r"tfds:mnist is not prepared in .* cannot be downloaded "
      r"offline; .*tfds build mnist.*--config.data.tfds_data_dir",
  ) as e:
    classify_image.Task(_config(data__source="tfds:mnist", data__tfds_data_dir=str(tmp_path)))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"data__source": "imagenet"},
            r"data.source='imagenet' is not valid; valid: digits, tfds:",
        ),
        ({"model__name": "gpt"}, r"model.name='gpt' is not valid; valid: cnn, resnet"),
        ({"model__widths": (8, 16, 32)}, r"must be equally long tuples of positive integers"),
        ({"predict__invert": "maybe"}, r"predict.invert='maybe' one of auto, yes, no"),
        ({"augment__cutout": -1}, r"augment.cutout=-1 must be >= 0"),
        ({"data__test_fraction": 1.0}, r"data.test_fraction=1.0 must be in \(0, 1\)"),
        ({"data__channels": 2}, r"data.channels=2 one of 1, 3, 0 \(0: decide from the data\)"),
        ({"data__on_bad_image": "ignore"}, r"data.on_bad_image='ignore' one of stop, skip"),
        ({"data__val_percent": 0}, r"data.val_percent=0 must be in 1..99"),
        ({"predict__batch_size": 0}, r"predict.top_k=3 and predict.batch_size=0 must be >= 1"),
    ],
)
def test_config_errors_are_one_line(overrides, match):
  with pytest.raises(UsageError, match=match) as e:
    classify_image.Task(_config(**overrides))
  assert "\n" not in str(e.value)


def test_softmax_loss_weights_out_padding():
  logits = np.array([[2.0, 0.0], [0.0, 3.0], [5.0, 0.0]], np.float32)
  batch = {"label": np.array([0, 0, 1]), "weight": np.array([1.0, 1.0, 0.0], np.float32)}
  loss, metrics = classification.softmax_loss(logits, batch)
  nll = [np.log1p(np.exp(-2.0)), np.log1p(np.exp(3.0))]
  assert float(loss) == pytest.approx(np.mean(nll), rel=1e-5)
  assert [float(x) for x in metrics["accuracy"]] == [1.0, 2.0]  # the padded row is not counted


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
  # A valid PNG header that claims 60000 x 60000 pixels; decoding it would need 3.6 GB.
  def chunk(kind, data):
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

  header = (60000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
  path = tmp_path / "bomb.png"
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
  with pytest.raises(UsageError, match="bomb.png is too large to decode safely"):
    images.read_image(str(path), (8, 8, 1))
