"""imagecls --mode=predict over many images: a folder or a glob in, one CSV row per image out."""

import csv
import os
import re

import pytest
import tensorflow_datasets as tfds

from bigmodel_jax.errors import UsageError
from tests.helpers import run_quietly
from tests.image_helpers import CLASSES, image_config, write_shapes

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One tiny CNN run (30 steps, 8 devices) on 90 shapes at 16x16."""
  tmp = tmp_path_factory.mktemp("trained")
  write_shapes(tmp / "shapes", 30)
  config = image_config(f"image_folder:{tmp / 'shapes'}", tmp / "cache")
  run_quietly(config, tmp / "workdir")
  return config, tmp / "workdir"


@pytest.fixture
def to_predict(tmp_path):
  folder = tmp_path / "new"
  write_shapes(folder, 5, seed=7)  # 15 images
  (folder / "oops.jpg").write_bytes(b"\xff\xd8 truncated")
  return folder


def _predict(trained, on_bad_image="stop", **settings):
  config = trained[0]
  saved = (config.predict.to_dict(), config.data.on_bad_image)
  config.predict.update(settings)
  config.data.on_bad_image = on_bad_image
  try:
    return run_quietly(config, trained[1], "predict")
  finally:
    config.predict.update(saved[0])
    config.data.on_bad_image = saved[1]


def test_batch_prediction_writes_a_row_per_image_in_path_order(trained, to_predict, tmp_path):
  output = tmp_path / "out" / "p.csv"
  # 15 readable images in batches of 4: three full batches and a padded one.
  path, printed = _predict(trained, "skip", input=str(to_predict), output=str(output), batch_size=4)
  assert path == str(output)
  assert "wrote 15 predictions" in printed and "skipped 1 unreadable" in printed
  assert "images/s" in printed
  with open(output, newline="") as f:
    rows = list(csv.DictReader(f))
  written = [
      str(p.relative_to(to_predict)) for p in to_predict.rglob("*.*") if "oops" not in p.name
  ]
  assert [r["path"] for r in rows] == sorted(written)
  assert list(rows[0]) == [
      "path", "class", "probability", "class_2", "probability_2", "class_3", "probability_3"
  ]  # fmt: skip
  for r in rows:
    assert sorted([r["class"], r["class_2"], r["class_3"]]) == list(CLASSES)
    probs = [float(r[k]) for k in ("probability", "probability_2", "probability_3")]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
  right = sum(r["class"] == re.match("[a-z]+", os.path.basename(r["path"]))[0] for r in rows)
  assert right > 5  # chance is 5 of 15
  # One file alone gets the same answer as its row.
  top, _ = _predict(trained, input=str(to_predict / rows[3]["path"]))
  assert top[0] == (rows[3]["class"], pytest.approx(float(rows[3]["probability"]), abs=1e-5))
  assert os.listdir(output.parent) == ["p.csv"]  # no temporary file left


def test_batch_prediction_stops_at_a_bad_image_and_writes_nothing(trained, to_predict, tmp_path):
  output = tmp_path / "p.csv"
  with pytest.raises(UsageError, match=r"predict.input: oops.jpg is not a readable image") as e:
    _predict(trained, input=str(to_predict), output=str(output), batch_size=4)
  assert "\n" not in str(e.value) and os.listdir(tmp_path) == ["new"]


def test_a_glob_predicts_the_images_it_matches(trained, to_predict):
  output = to_predict / "p.csv"
  _predict(trained, input=f"{to_predict}/**/*.png", output=str(output))
  with open(output, newline="") as f:
    paths = [r["path"] for r in csv.DictReader(f)]
  assert paths == sorted(os.path.realpath(p) for p in to_predict.rglob("*.png")) and len(paths) == 6


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"input": "{t}", "output": "{t}"}, r"predict.output=.* is a directory; give a file path"),
        ({"input": "{t}/nowhere"}, r"predict.input=.*nowhere does not exist"),
        ({"input": "{t}/*.gif"}, r"predict.input=.*gif has no JPEG, PNG, BMP or WebP files"),
    ],
)
def test_batch_prediction_errors_are_one_line(trained, tmp_path, settings, match):
  with pytest.raises(UsageError, match=match) as e:
    _predict(trained, **{k: v.format(t=tmp_path) for k, v in settings.items()})
  assert "\n" not in str(e.value)
