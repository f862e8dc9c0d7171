"""imagecls on your own images: image_folder and csv sources, their cache, splits and bad files.

The images are drawn here with pillow (tests/image_helpers.py): three classes of shapes, 16..79
pixels a side, PNG, JPEG, BMP and WebP, some in nested folders.
"""

import csv
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from bigmodel_jax.data import image_cache, image_files, image_folders, images
from bigmodel_jax.errors import RunError, UsageError
from tests.helpers import read_metrics, run_quietly
from tests.image_helpers import CLASSES, image_config, write_shapes

tfds.disable_progress_bar()


def _local(cache, **kw):
  return image_cache.Settings(image_size=16, data_dir=str(cache), **kw)


def _cached(cache) -> list[str]:
  folder = os.path.join(cache, "image_files")
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  root = tmp_path_factory.mktemp("shapes")
  write_shapes(root, 30)  # 90 images
  (root / "circle" / "notes.txt").write_text("not an image, passed over by its extension")
  return root


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
  """One tiny CNN run (30 steps, 8 devices) on the shapes folder, shared by the tests below."""
  tmp = tmp_path_factory.mktemp("trained")
  config = image_config(f"image_folder:{shapes}", tmp / "cache")
  _, printed = run_quietly(config, tmp / "workdir")
  return config, tmp / "workdir", tmp / "cache", printed


# --- training and the cache ----------------------------------------------------------------------


def test_a_folder_trains_to_a_falling_loss_with_its_folder_names_as_classes(trained):
  config, workdir, cache, printed = trained
  train, val = read_metrics(str(workdir)), read_metrics(str(workdir), "validation")
  assert train[30]["loss"] < train[10]["loss"] - 0.1
  assert val[30]["loss"] < val[15]["loss"] < np.log(3)
  assert val[30]["accuracy"] > 0.5  # chance is 1/3
  with open(workdir / "dataset.json") as f:
    facts = json.load(f)
  assert facts["class_names"] == list(CLASSES) and facts["shape"] == [16, 16, 3]
  assert not facts["dark_background"]  # your own images are never inverted by predict.invert=auto
  assert f"top-1 validation accuracy {100 * val[30]['accuracy']:.2f}%" in printed
  assert len(_cached(cache)) == 1


def test_the_cache_is_built_once_then_read_without_decoding(trained, monkeypatch):
  config, workdir, cache, _ = trained
  before = {k: v for k, v in images.load(config.data.source, local=_local(cache)).items()}

  def refuse(*args):
    raise AssertionError("decoded an image although the cache holds it")

  monkeypatch.setattr(image_files, "decode", refuse)
  monkeypatch.setattr(image_files, "is_grayscale", refuse)
  again = images.load(config.data.source, local=_local(cache))
  for split in ("train", "test"):
    np.testing.assert_array_equal(again[split]["image"], before[split]["image"])
    np.testing.assert_array_equal(again[split]["label"], before[split]["label"])
  assert len(before["train"]["label"]) + len(before["test"]["label"]) == 90
  assert len(_cached(cache)) == 1


def test_a_changed_file_or_setting_builds_a_new_cache(tmp_path):
  write_shapes(tmp_path / "img", 3)
  source, cache = f"image_folder:{tmp_path / 'img'}", tmp_path / "cache"
  images.info(source, local=_local(cache))
  assert images.info(source, local=_local(cache)).shape == (16, 16, 3)
  assert len(_cached(cache)) == 1
  os.utime(tmp_path / "img" / "square" / "square0000.png", ns=(1, 1))
  images.info(source, local=_local(cache))
  assert len(_cached(cache)) == 2
  assert images.info(source, local=_local(cache, channels=1)).shape == (16, 16, 1)
  assert len(_cached(cache)) == 3


def test_a_resumed_run_continues_exactly_as_one_never_stopped(trained, tmp_path):
  config, workdir, _, _ = trained
  run_quietly(config, tmp_path, stop_after=15)
  run_quietly(config, tmp_path)
  # The same batches in the same order after the resume: the same parameters, so the same
  # validation loss, to the bit (train losses are averages since the last log line: from 16).
  for split in ("train", "validation"):
    straight, resumed = read_metrics(str(workdir), split), read_metrics(str(tmp_path), split)
    assert resumed[30]["loss"] == straight[30]["loss"]


def test_eval_on_other_data_than_the_run_was_trained_on_is_refused(trained):
  config, workdir, _, _ = trained
  config.data.image_size = 12
  try:
    with pytest.raises(
        RunError, match=r"now gives \(12, 12, 3\) images .* trained on \(16, 16, 3\)"
    ):
      run_quietly(config, workdir, "eval")
  finally:
    config.data.image_size = 16


# --- which files, classes and splits -------------------------------------------------------------


def test_every_image_once_in_one_split_and_the_hash_split_is_stable(shapes):
  bad = image_files.BadImages("stop", "test")
  listing = image_folders.list_images(f"image_folder:{shapes}", val_percent=20, bad=bad)
  written = {str(p) for p in shapes.rglob("*") if image_files.is_image_name(str(p))}
  train, val = listing.splits["train"], listing.splits["validation"]
  assert sorted(p for p, _ in train + val) == sorted(written)  # nested too; notes.txt not
  assert listing.class_names == list(CLASSES)
  assert {label for _, label in val} == {0, 1, 2} and {label for _, label in train} == {0, 1, 2}
  assert all(os.path.basename(p).startswith(CLASSES[k]) for p, k in train + val)
  assert 6 < len(val) < 30  # about 20% of 90
  (shapes / "square" / "extra.png").write_bytes((shapes / "square" / "square0000.png").read_bytes())
  try:
    again = image_folders.list_images(f"image_folder:{shapes}", val_percent=20, bad=bad)
  finally:
    (shapes / "square" / "extra.png").unlink()
  assert set(val) <= set(again.splits["validation"]) and set(train) <= set(again.splits["train"])


@pytest.mark.parametrize("layout", ["train/ and val/", "train/ and test/", "validation/ beside"])
def test_a_validation_folder_is_the_validation_split(tmp_path, layout):
  if layout.startswith("train/"):
    write_shapes(tmp_path / "img" / "train", 4)
    write_shapes(tmp_path / "img" / layout.split()[-1][:-1], 2, seed=1, classes=CLASSES[:2])
  else:
    write_shapes(tmp_path / "img", 4)
    write_shapes(tmp_path / "img" / "validation", 2, seed=1, classes=CLASSES[:2])
  opened = images.Source(f"image_folder:{tmp_path / 'img'}", local=_local(tmp_path / "cache"))
  assert opened.info.class_names == list(CLASSES)  # the training folder's, with no "val" class
  assert len(opened.load("train")["label"]) == 12
  assert opened.load("test")["label"].tolist() == [0, 0, 1, 1]


def test_a_symlink_loop_is_walked_once(tmp_path):
  write_shapes(tmp_path / "img", 3)
  os.symlink(tmp_path / "img", tmp_path / "img" / "circle" / "loop")
  os.symlink(tmp_path / "img" / "square" / "square0001.bmp", tmp_path / "img" / "square" / "s.bmp")
  bad = image_files.BadImages("stop", "test")
  listing = image_folders.list_images(f"image_folder:{tmp_path / 'img'}", val_percent=10, bad=bad)
  paths = [p for split in listing.splits.values() for p, _ in split]
  assert len(paths) == len(set(paths)) == 9


def test_csv_source_reads_paths_relative_to_its_folder(shapes, tmp_path):
  rows = [(os.path.relpath(p, tmp_path), p.parent.name) for p in sorted(shapes.rglob("*.png"))]
  rows = [(f, "circle" if k == "more" else k) for f, k in rows]  # nested: circle/more/...
  rows = [(f, {"circle": "10", "square": "2", "stripes": "7"}[k]) for f, k in rows]
  with open(tmp_path / "list.csv", "w", newline="") as f:
    csv.writer(f).writerows([("file", "kind"), *rows, rows[0]])  # a repeated row is read once
  local = _local(tmp_path / "cache", image_column="file", label_column="kind")
  opened = images.Source(f"csv:{tmp_path / 'list.csv'}", local=local)
  assert opened.info.class_names == ["2", "7", "10"]  # integer labels sort as numbers
  data = [opened.load(split) for split in ("train", "test")]
  assert sum(len(d["label"]) for d in data) == len(rows) and all(len(d["label"]) for d in data)


def test_channels_are_decided_from_the_data(tmp_path):
  for i in range(4):
    Image.fromarray(np.full((9, 9), 40 * i, np.uint8)).save(tmp_path / f"{'ab'[i % 2]}{i}.png")
  for name in "ab":
    os.makedirs(tmp_path / "img" / name)
  for p in tmp_path.glob("*.png"):
    os.rename(p, tmp_path / "img" / p.name[0] / p.name)
  source, cache = f"image_folder:{tmp_path / 'img'}", tmp_path / "cache"
  assert images.info(source, local=_local(cache)).shape == (16, 16, 1)  # all gray
  Image.new("RGB", (9, 9), (200, 10, 10)).save(tmp_path / "img" / "a" / "red.jpg")
  assert images.info(source, local=_local(cache)).shape == (16, 16, 3)


# --- bad input -----------------------------------------------------------------------------------


def _bomb(path):
  """A valid PNG header that claims 60000 x 60000 pixels (3.6 GB decoded)."""
  import zlib  # pylint: disable=g-import-not-at-top

  def chunk(kind, data):
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

  header = (60000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda r: (r / "circle" / "oops.png").write_text("no"),
            r"circle/oops.png is not a readable",
        ),
        (
            lambda r: _bomb(r / "square" / "bomb.png"),
            r"bomb.png is not a readable image \(too large",
        ),
        (
            lambda r: os.makedirs(r / "empty"),
            r"class folder .*/empty has no JPEG, PNG, BMP or WebP",
        ),
        (
            lambda r: write_shapes(r, 1, classes=("lonely",)),
            r"class 'lonely' has 1 image .* needs at least 2 per class",
        ),
        (lambda r: os.makedirs(r / "val" / "dog"), r"val must hold class folders of the training"),
    ],
)
def test_bad_folders_are_one_line_errors_and_leave_no_cache(tmp_path, damage, match):
  write_shapes(tmp_path / "img", 3)
  damage(tmp_path / "img")
  with pytest.raises(UsageError, match=match) as e:
    images.info(f"image_folder:{tmp_path / 'img'}", local=_local(tmp_path / "cache"))
  assert "\n" not in str(e.value)
  assert _cached(tmp_path / "cache") == []


@pytest.mark.parametrize(
    "make, source, match",
    [
        (lambda t: None, "image_folder:{t}/nowhere", r"nowhere does not exist; give a folder"),
        (lambda t: write_shapes(t / "f", 2), "image_folder:{t}/f/circle", r"has 0 class folder"),
        (lambda t: (t / "l.csv").write_text("path,label\na.png,x\n"), "csv:{t}/l.csv", r"column"),
        (lambda t: (t / "l.csv").write_text("image,label\na.png,x\nb.png,y\n"), "csv:{t}/l.csv",
         r"line 2: a.png does not exist; fix or remove it"),
    ],
)  # fmt: skip
def test_bad_sources_are_one_line_errors(tmp_path, make, source, match):
  make(tmp_path)
  source = source.format(t=tmp_path)
  with pytest.raises(UsageError, match=match) as e:
    images.check(source)
    images.info(source, local=_local(tmp_path / "cache"))
  assert "\n" not in str(e.value)


def test_skip_leaves_out_unreadable_images_with_a_warning(tmp_path, caplog):
  write_shapes(tmp_path / "img", 3)
  (tmp_path / "img" / "circle" / "oops.webp").write_bytes(b"RIFF....WEBPVP8 broken")
  source, local = f"image_folder:{tmp_path / 'img'}", _local(
      tmp_path / "cache", on_bad_image="skip"
  )
  for _ in range(2):  # built, then reused: the warning each time
    caplog.clear()
    data = images.load(source, local=local)
    assert sum(len(d["label"]) for d in data.values()) == 9
    assert "skipped 1 unreadable image file(s)" in caplog.text and "oops.webp" in caplog.text
