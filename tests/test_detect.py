"""detect: CenterNet through the trainer, COCO mAP against pycocotools, data sources, predict,
and bad input (one-line errors)."""

import json
import re

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from bigmodel_jax import boxes, detection, trainer
from bigmodel_jax import config as config_lib
from bigmodel_jax.data import boxed_images, canvases
from bigmodel_jax.errors import UsageError
from tests.helpers import prepared_tfds_metadata, read_metrics, run_quietly

tfds.disable_progress_bar()


def _config(cache, **overrides):
  c = config_lib.load_experiment("detect:tiny")
  values = {"data.tfds_data_dir": str(cache)}
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  config_lib.set_values(c, values, "test")
  config_lib.validate(c)
  return c


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("detect_cache")


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
  """One tiny run (20 steps) on generated canvases, shared by the tests that read it."""
  workdir = tmp_path_factory.mktemp("detect_run")
  config = _config(cache)
  _, printed = run_quietly(config, workdir)
  return config, workdir, printed


# --- training, evaluation, showcase --------------------------------------------------------------


def test_loss_falls_and_the_showcase_reports_the_final_map(trained):
  config, workdir, printed = trained
  train, val = read_metrics(str(workdir)), read_metrics(str(workdir), "validation")
  assert train[20]["loss"] < train[10]["loss"]
  assert val[20]["heatmap_loss"] < val[10]["heatmap_loss"]
  assert val[20]["loss"] == pytest.approx(val[20]["heatmap_loss"] + val[20]["box_loss"], rel=1e-5)
  assert f"mAP@.5 {100 * val[20]['mAP50']:.1f}" in printed
  table = [line.split() for line in printed.splitlines() if line.startswith("  ")]
  names = [row[0] for row in table if row[0] in canvases.CLASS_NAMES]
  assert names == canvases.CLASS_NAMES
  picture = Image.open(workdir / "detections.png")
  assert picture.size[0] > 4 * 64 and picture.mode == "RGB"


def test_predict_draws_the_boxes_on_the_image_and_prints_them(trained, tmp_path):
  config, workdir, _ = trained
  image = canvases.load(
      size=64, max_objects=5, train=64, validation=16, seed=0, data_dir=config.data.tfds_data_dir
  )["validation"]["image"][0]
  big = Image.fromarray(image).resize((128, 96))  # not square, not the training size
  big.save(tmp_path / "scene.png")
  config.predict.input = str(tmp_path / "scene.png")
  config.detect.min_score = 0.0  # a 20-step model scores low; show its best peaks anyway
  config.detect.max_detections = 3
  result, printed = run_quietly(config, workdir, "predict")
  out = Image.open(workdir / "scene.detections.png")
  assert out.size == (512, 384)  # enlarged to 384 pixels on the short side, aspect kept
  assert len(result) >= 1 and f"wrote {workdir / 'scene.detections.png'}" in printed
  for name, score, (x0, y0, x1, y1) in result:
    assert name in canvases.CLASS_NAMES and 0 <= score <= 1
    assert 0 <= x0 <= x1 <= 128 and 0 <= y0 <= y1 <= 96  # in the input image's own pixels


# --- targets, decoding, NMS, mAP -----------------------------------------------------------------


def test_decoding_the_targets_gives_back_the_boxes():
  """Outputs that equal the training targets decode to exactly the boxes they came from."""
  gt = jnp.array([[[4.0, 8.0, 30.0, 20.0], [33.0, 35.5, 61.0, 63.0], [0, 0, 0, 0]]])
  labels = jnp.array([[2, 0, -1]])
  t = detection.targets(gt, labels, (16, 16), 3)
  assert float(t["heatmap"].max()) == 1.0 and int((t["heatmap"] == 1).sum()) == 2
  size, offset = jnp.zeros((1, 256, 2)), jnp.zeros((1, 256, 2))
  size = size.at[0, t["center"][0, :2]].set(t["size"][0, :2]).reshape(1, 16, 16, 2)
  offset = offset.at[0, t["center"][0, :2]].set(t["offset"][0, :2]).reshape(1, 16, 16, 2)
  logits = jnp.where(t["heatmap"] == 1, 10.0, -10.0)
  found, scores, classes = detection.decode(
      {"heatmap": logits, "size": size, "offset": offset}, 2, (64, 64)
  )
  order = np.argsort(np.asarray(classes[0]))
  np.testing.assert_allclose(np.asarray(found[0])[order], np.asarray(gt[0, [1, 0]]), atol=1e-4)
  assert np.asarray(classes[0])[order].tolist() == [0, 2] and float(scores.min()) > 0.99


def test_coco_map_matches_what_iou_thresholds_imply():
  """Through pycocotools: exact boxes score 1; a box at IoU 0.6 counts at the thresholds .50, .55
  and .60 only (3 of 10); a box of the wrong class counts nowhere."""
  gt = [{"boxes": np.array([[10.0, 10.0, 30.0, 30.0]]), "labels": np.array([1])}]
  exact = [{"boxes": gt[0]["boxes"], "scores": np.array([0.9]), "classes": np.array([1])}]
  assert boxes.coco_map(gt, exact, 2, (64, 64))["mAP"] == pytest.approx(1.0)
  # [10, 10, 30, 30] against [10, 10, 30, 34]: IoU 400 / 480 = 0.833 -> 7 of 10 thresholds
  taller = [{"boxes": np.array([[10.0, 10.0, 30.0, 34.0]]), "scores": [0.9], "classes": [1]}]
  result = boxes.coco_map(gt, taller, 2, (64, 64))
  assert result["mAP50"] == pytest.approx(1.0) and result["mAP"] == pytest.approx(0.7)
  assert result["ap50_per_class"][1] == pytest.approx(1.0) and np.isnan(result["ap50_per_class"][0])
  wrong = [{"boxes": gt[0]["boxes"], "scores": [0.9], "classes": [0]}]
  assert boxes.coco_map(gt, wrong, 2, (64, 64))["mAP50"] == 0.0


def test_nms_keeps_the_best_of_each_overlapping_same_class_group():
  b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
  scores = np.array([0.5, 0.9, 0.8, 0.3])
  classes = np.array([0, 0, 1, 0])
  # box 0 overlaps box 1 (IoU 0.68) of its class and scores less: dropped; box 2 is another class
  assert boxes.nms(b, scores, classes, 0.5).tolist() == [1, 2, 3]
  assert boxes.nms(b, scores, classes, 0.7).tolist() == [1, 2, 0, 3]


# --- data ----------------------------------------------------------------------------------------


def test_canvases_are_deterministic_with_boxes_inside_and_valid_classes(cache):
  a = canvases.load(size=64, max_objects=5, train=40, validation=8, seed=3, data_dir=str(cache))
  fresh = canvases.generate(40, 64, 5, _digits_train(), np.random.default_rng([3, 0]))
  for key in ("image", "boxes", "labels"):
    np.testing.assert_array_equal(a["train"][key], fresh[key])
  valid = a["train"]["labels"] >= 0
  assert valid[:, 0].all() and valid.sum() > 40  # at least one object each, several on average
  box = a["train"]["boxes"][valid]
  assert (box[:, :2] >= 0).all() and (box[:, 2:] <= 64).all() and (box[:, 2:] > box[:, :2]).all()
  assert set(a["train"]["labels"][valid]) <= set(range(len(canvases.CLASS_NAMES)))


def _digits_train():
  from bigmodel_jax.data import images  # pylint: disable=g-import-not-at-top

  return images.load_digits()["train"]


class _CocoMetadata(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes the dataset_info.json of a prepared coco/2017 (TFDS's own coco builder needs
  TensorFlow even to describe itself): the same features, with numpy dtypes."""

  name = "coco"
  VERSION = tfds.core.Version("1.1.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2017")]

  def _info(self):
    objects = {
        "area": np.int64,
        "bbox": tfds.features.BBoxFeature(),
        "id": np.int64,
        "is_crowd": np.bool_,
        "label": tfds.features.ClassLabel(names=[f"class{i}" for i in range(80)]),
    }
    features = {
        "image": tfds.features.Image(encoding_format="jpeg"),
        "image/filename": tfds.features.Text(),
        "image/id": np.int64,
        "objects": tfds.features.Sequence(objects),
    }
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    return {}

  def _generate_examples(self):
    yield from ()


def _coco_metadata(data_dir, n):
  builder = _CocoMetadata(data_dir=data_dir, config="2017", file_format="array_record")
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_path, dataset_name="coco", filetype_suffix="array_record"
  )
  splits = [
      tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=template)
      for s in ("train", "validation")
  ]
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)


@pytest.mark.parametrize(
    "source, classes", [("tfds:voc/2007", 20), ("tfds:coco/2017:1.1.0", 80)], ids=["voc", "coco"]
)
def test_tfds_detection_datasets_load_by_name_with_boxes_in_pixels(tmp_path, source, classes):
  data_dir = str(tmp_path / "tfds")
  if "voc" in source:
    prepared_tfds_metadata(data_dir, "voc/2007", {"train": 6, "validation": 6})
  else:
    _coco_metadata(data_dir, 6)
  with tfds.testing.mock_data(
      num_examples=6, data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES
  ):
    settings = boxed_images.Settings(image_size=64, max_objects=8, tfds_data_dir=data_dir)
    source = boxed_images.Source(source, settings)
    assert len(source.class_names) == classes
    val = source.load("validation")
  assert val["image"].shape == (6, 64, 64, 3) and val["boxes"].shape == (6, 8, 4)
  valid = val["labels"] >= 0
  box = val["boxes"][valid]
  assert valid.any() and (box >= 0).all() and (box <= 64).all()
  assert (val["labels"][valid] < classes).all()  # (mock boxes are random corners, unordered)


# --- your own data (COCO JSON) and bad input -----------------------------------------------------


def _coco_folder(root, n=10, **changes):
  """n 40x30 PNGs with one 10x8 box each (class "a" or "b"); `changes` edit annotation 1."""
  root.mkdir(exist_ok=True)
  images, anns = [], []
  for i in range(n):
    picture = np.zeros((30, 40, 3), np.uint8)
    picture[5:13, 20:30] = 255
    Image.fromarray(picture).save(root / f"im{i}.png")
    images.append({"id": i + 1, "file_name": f"im{i}.png", "width": 40, "height": 30})
    anns.append({"id": i + 1, "image_id": i + 1, "category_id": 7 + i % 2, "bbox": [20, 5, 10, 8]})
  anns[0].update(changes)
  categories = [{"id": 7, "name": "a"}, {"id": 8, "name": "b"}]
  path = root / "labels.json"
  path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
  return str(path)


def test_coco_json_loads_with_boxes_scaled_to_the_resized_image(tmp_path):
  path = _coco_folder(tmp_path / "mine")
  source = boxed_images.Source(f"coco_json:{path}", boxed_images.Settings(image_size=64))
  train, val = source.load("train"), source.load("validation")
  assert source.class_names == ["a", "b"] and len(train["image"]) + len(val["image"]) == 10
  np.testing.assert_allclose(
      train["boxes"][:, 0], [[32, 64 / 30 * 5, 48, 64 / 30 * 13]] * len(train["image"]), rtol=1e-5
  )
  assert set(train["labels"][:, 0]) <= {0, 1} and (train["labels"][:, 1:] == -1).all()


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"category_id": 3},
            "annotation 1 has category_id 3, which is no category's id; valid: 7, 8",
        ),
        ({"bbox": [35, 5, 10, 8]}, "outside its image im0.png (40x30 pixels)"),
        ({"bbox": [20, 5, 0, 8]}, "which is empty or outside"),
    ],
    ids=["class_id_out_of_range", "box_outside_its_image", "empty_box"],
)
def test_bad_user_annotations_are_one_line_errors_before_the_workdir(tmp_path, changes, message):
  path = _coco_folder(tmp_path / "mine", **changes)
  config = _config(tmp_path, data__source=f"coco_json:{path}")
  with pytest.raises(UsageError, match=re.escape(message)) as e:
    trainer.run(config, str(tmp_path / "run"))
  assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_predict_on_a_file_that_is_not_an_image_is_a_one_line_error(trained, tmp_path):
  config, workdir, _ = trained
  (tmp_path / "notes.png").write_text("not a picture")
  for name, message in (
      ("notes.png", "is not an image that pillow can read"),
      ("gone.png", "is not a file; give an image file"),
  ):
    config.predict.input = str(tmp_path / name)
    with pytest.raises(UsageError, match=message) as e:
      run_quietly(config, workdir, "predict")
    assert "\n" not in str(e.value)
  assert not list(workdir.glob("notes*.png")) and not list(workdir.glob("gone*"))


def test_an_unprepared_coco_is_a_one_line_error_not_a_tensorflow_import_error(tmp_path):
  settings = boxed_images.Settings(tfds_data_dir=str(tmp_path))
  with pytest.raises(UsageError, match="is not prepared in .* its builder code needs TensorFlow"):
    boxed_images.Source("tfds:coco/2017:1.1.0", settings)
