"""tabular: the founding notes' MLP done right; bundled data, a user's CSV, predict, errors."""

import csv
import json
import os

import numpy as np
import pytest

from bigmodel_jax import classification, trainer
from bigmodel_jax import config as config_lib
from bigmodel_jax.data import tables
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import tabular
from tests.helpers import read_metrics, run_quietly


def _config(**overrides):
  c = config_lib.load_experiment("tabular:tiny")
  config_lib.set_values(c, {k.replace("__", "."): v for k, v in overrides.items()}, "test")
  config_lib.validate(c)
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One tiny run (40 steps, 8 devices) on the bundled breast-cancer data."""
  workdir = str(tmp_path_factory.mktemp("tabular"))
  config = _config()
  _, printed = run_quietly(config, workdir)
  return config, workdir, printed


# --- the founding notes' bugs, fixed -------------------------------------------------------------


def test_sigmoid_loss_is_stable_bce_on_logits_and_accuracy_thresholds_at_half():
  logits = np.array([-3.0, 0.1, 2.0, 60.0, -0.5], np.float32)
  batch = {
      "label": np.array([0.0, 0.0, 1.0, 0.0, 1.0], np.float32),
      "weight": np.array([1, 1, 1, 1, 0], np.float32),
  }
  loss, metrics = classification.sigmoid_loss(logits, batch)
  z, y = logits[:4].astype(np.float64), batch["label"][:4]
  bce = np.logaddexp(0, z) - y * z  # = -[y log p + (1 - y) log(1 - p)], p = sigmoid(z)
  assert bce[3] == pytest.approx(60.0)  # 1 - sigmoid(60) is 0 in float32: BCE on p would be inf
  assert np.isfinite(float(loss))
  assert float(loss) == pytest.approx(bce.mean(), rel=1e-4)
  # Predicted positive iff probability >= 0.5: rows 0 and 2 are right, 1 and 3 wrong; 4 is padding.
  assert [float(x) for x in metrics["accuracy"]] == [2.0, 4.0]


# --- training on the bundled data ----------------------------------------------------------------


def test_loss_falls_and_final_eval_has_accuracy_and_auc(trained):
  _, workdir, printed = trained
  train, val = read_metrics(workdir), read_metrics(workdir, "validation")
  assert train[40]["loss"] < train[10]["loss"] - 0.2
  assert val[40]["loss"] < val[20]["loss"] < np.log(2)
  assert val[40]["accuracy"] > 0.85 and val[40]["auc"] > 0.95
  assert "auc" not in val[20]  # host-side AUC only at the end
  # The showcase's confusion matrix covers the 114 test rows and agrees with the eval accuracy.
  rows = {
      line.split()[0]: [int(x) for x in line.split()[2:]]
      for line in printed.splitlines()
      if line.strip().startswith(("benign (0)", "malignant (1)"))
  }
  m = np.array([rows["benign"], rows["malignant"]])
  assert m.sum() == 114 and m[1].sum() == 42  # 212 of 569 are malignant
  assert np.trace(m) / 114 == pytest.approx(val[40]["accuracy"])
  assert f"AUC {val[40]['auc']:.4f}" in printed


def test_eval_mode_reports_accuracy_and_auc(trained):
  config, workdir, _ = trained
  values, _ = run_quietly(config, workdir, "eval")
  last = read_metrics(workdir, "validation")[40]
  assert values["accuracy"] == pytest.approx(last["accuracy"])
  assert values["auc"] == pytest.approx(last["auc"])


def test_breast_cancer_split_is_fixed_stratified_and_standardised_on_train_only():
  table = tables.load("breast_cancer")
  assert len(table) == 569 and len(table.columns) == 30
  train, test = tables.split(table, 0.2, 0)
  assert (len(train), len(test)) == (455, 114)
  assert (test.labels == "malignant").sum() == 42  # 212 * 0.2, rounded
  again, _ = tables.split(table, 0.2, 0)
  np.testing.assert_array_equal(again.columns["mean radius"], train.columns["mean radius"])
  pre = tables.Preprocessing.fit(table, train, label_column="diagnosis", max_categories=50)
  assert pre.label_values == ["benign", "malignant"]  # sorted: malignant is the positive class
  x_train, x_test = pre.transform(train), pre.transform(test)
  np.testing.assert_allclose(x_train.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(x_train.std(0), 1, atol=1e-4)
  radius = train.columns["mean radius"]
  assert pre.features[0]["mean"] == pytest.approx(radius.mean())  # not the whole table's mean
  assert pre.features[0]["mean"] != pytest.approx(table.columns["mean radius"].mean(), rel=1e-6)
  assert abs(x_test.mean()) > 1e-4  # the test split is not re-centred on itself


# --- a user's CSV --------------------------------------------------------------------------------


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return str(path)


def _churn_rows(n, seed):
  """A learnable table: churn is likely with a short tenure on the 'basic' plan."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    tenure = rng.integers(1, 60)
    plan = rng.choice(["basic", "plus", "pro"])
    score = (30 - tenure) / 10 + (1.5 if plan == "basic" else -0.5)
    churned = "yes" if score + rng.normal(0, 0.5) > 0 else "no"
    spend = "" if i % 17 == 0 else f"{rng.normal(50, 10):.2f}"  # some empty cells
    rows.append([f"id{i}", tenure, plan, spend, churned])
  return rows


HEADER = ["customer", "tenure", "plan", "spend", "churned"]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
  d = tmp_path_factory.mktemp("csv")
  path = _write_csv(d / "churn.csv", HEADER, _churn_rows(240, 0))
  config = _config(
      data__source=f"csv:{path}",
      data__label_column="churned",
      data__drop_columns=("customer",),
      train__steps=60,
  )
  workdir = d / "run"
  run_quietly(config, workdir)
  return config, str(workdir), d


def test_csv_trains_and_saves_its_preprocessing(csv_run):
  _, workdir, _ = csv_run
  assert read_metrics(workdir, "validation")[60]["accuracy"] > 0.8
  with open(os.path.join(workdir, "preprocessing.json")) as f:
    saved = json.load(f)
  assert saved["label_values"] == ["no", "yes"] and saved["label_column"] == "churned"
  kinds = {f["name"]: f["kind"] for f in saved["features"]}
  assert kinds == {"tenure": "numeric", "plan": "categorical", "spend": "numeric"}
  assert [f for f in saved["features"] if f["name"] == "plan"][0]["categories"] == [
      "basic",
      "plus",
      "pro",
  ]


def test_predict_writes_probabilities_and_labels_and_says_where(csv_run):
  config, workdir, d = csv_run
  rows = [[r[0], r[1], r[2], r[3]] for r in _churn_rows(30, 1)]  # no label column
  rows[0][2] = "enterprise"  # a plan never seen in training: encoded as all zeros, no error
  rows[1][1], rows[2][1] = 1, 59
  rows[1][2] = rows[2][2] = "basic"
  config.predict.input = _write_csv(d / "new.csv", HEADER[:4], rows)
  output, printed = run_quietly(config, workdir, "predict")
  assert output == os.path.join(workdir, "predictions.csv")
  assert "wrote 30 predictions" in printed and output in printed
  with open(output) as f:
    got = list(csv.DictReader(f))
  assert len(got) == 30 and list(got[0]) == ["line", "probability", "prediction"]
  assert [int(r["line"]) for r in got] == list(range(2, 32))
  probs = np.array([float(r["probability"]) for r in got])
  assert np.all((0 <= probs) & (probs <= 1))
  assert all(r["prediction"] == ("yes" if p >= 0.5 else "no") for r, p in zip(got, probs))
  assert probs[1] > probs[2]  # a new basic customer churns more than a 5-year one
  # predict.output elsewhere; a labelled file also reports accuracy.
  config.predict.output = str(d / "out" / "p.csv")
  config.predict.input = _write_csv(d / "labelled.csv", HEADER, _churn_rows(50, 2))
  output, printed = run_quietly(config, workdir, "predict")
  assert output == config.predict.output and os.path.exists(output)
  assert "accuracy on the 50 labelled rows" in printed


@pytest.mark.parametrize(
    "header, rows, match",
    [
        (["customer", "tenure", "spend"], [["a", 1, 2.0]], r"lacks the feature column\(s\) plan"),
        (
            HEADER[:4],
            [["a", "long", "basic", 2.0]],
            r"line 2, column 'tenure': 'long' is not a finite number",
        ),
        (
            HEADER[:4],
            [["a", 3, "basic", 2.0], ["b", "inf", "basic", 2.0]],
            r"line 3, column 'tenure': 'inf' is not a finite number",
        ),
        (
            HEADER[:4],
            [["a", 3, "basic", "-Infinity"]],
            r"line 2, column 'spend': '-Infinity' is not a finite number",
        ),
    ],
)
def test_predict_input_errors(csv_run, header, rows, match):
  config, workdir, d = csv_run
  config.predict.input = _write_csv(d / "bad.csv", header, rows)
  with pytest.raises(UsageError, match=match) as e:
    trainer.run(config, workdir, "predict")
  assert "\n" not in str(e.value)


def test_predict_needs_an_input_and_a_trained_run(csv_run, tmp_path):
  config, workdir, _ = csv_run
  config.predict.input = ""
  with pytest.raises(
      UsageError,
      match=r"needs --config.predict.input=<csv file> with the feature "
      r"columns: tenure, plan, spend",
  ):
    trainer.run(config, workdir, "predict")
  with pytest.raises(RunError, match="no preprocessing.json in"):
    trainer.run(_config(), str(tmp_path / "empty"), "predict")


@pytest.mark.parametrize(
    "labels, values, encoded",
    [
        (["0", "1"], ["0", "1"], [0, 1]),
        (["1", "0.0"], ["0.0", "1"], [1, 0]),
        (["2", "10"], ["2", "10"], [0, 1]),  # numbers by value, not as text
        (["yes", "no"], ["no", "yes"], [1, 0]),
        (["M", "B"], ["B", "M"], [1, 0]),
    ],
)
def test_binary_labels_map_in_a_documented_order(tmp_path, labels, values, encoded):
  rows = [[i, labels[i % 2]] for i in range(10)]
  table = tables.load(f"csv:{_write_csv(tmp_path / 'l.csv', ['x', 'y'], rows)}", label_column="y")
  pre = tables.Preprocessing.fit(table, table, label_column="y", max_categories=5)
  assert pre.label_values == values
  assert pre.encode_labels(table.labels).tolist() == encoded * 5


def _error(tmp_path, text, **kw):
  path = tmp_path / "data.csv"
  path.write_text(text)
  with pytest.raises(UsageError) as e:
    tabular.Task(_config(data__source=f"csv:{path}", **kw))
  assert "\n" not in str(e.value)
  return str(e.value)


def test_csv_errors_are_one_line(tmp_path):
  many = "x,id,y\n" + "".join(f"{i},id{i},{i % 2}\n" for i in range(80))
  assert "missing.csv does not exist" in str(
      pytest.raises(
          UsageError,
          tabular.Task,
          _config(data__source=f"csv:{tmp_path}/missing.csv", data__label_column="y"),
      ).value
  )
  assert "is empty" in _error(tmp_path, "", data__label_column="y")
  assert "has a header but no data rows" in _error(tmp_path, "a,y\n", data__label_column="y")
  msg = _error(tmp_path, "a,b\n1,0\n2,1\n", data__label_column="label")
  assert "data.label_column='label' is not a column" in msg and "one of: a, b" in msg
  assert "needs --config.data.label_column=<name>, one of: a, b" in _error(
      tmp_path, "a,b\n1,0\n2,1\n"
  )
  msg = _error(tmp_path, "a,y\n1,x\n2,y\n3,z\n", data__label_column="y")
  assert "label column 'y' has 3 distinct values ('x', 'y', 'z')" in msg
  assert "has 1 distinct value ('x')" in _error(tmp_path, "a,y\n1,x\n2,x\n", data__label_column="y")
  msg = _error(tmp_path, many, data__label_column="y", data__max_categories=20)
  assert "column 'id' is not numeric (e.g. 'id0') and has 64 distinct values" in msg
  assert "--config.data.drop_columns=id" in msg
  assert "line 3 has 3 fields but the header has 2" in _error(
      tmp_path, "a,y\n1,0\n2,1,5\n", data__label_column="y"
  )
  assert "line 3 has no label" in _error(tmp_path, "a,y\n1,0\n2,\n3,1\n", data__label_column="y")
  assert len(tables.load("breast_cancer", drop_columns=("mean radius",)).columns) == 29
  assert "data.drop_columns: radius not in breast_cancer" in str(
      pytest.raises(UsageError, tabular.Task, _config(data__drop_columns=("radius",))).value
  )
  assert "data.source='parquet:x' is not valid" in str(
      pytest.raises(UsageError, tabular.Task, _config(data__source="parquet:x")).value
  )


def test_predict_never_writes_over_its_input_or_into_a_directory(csv_run):
  config, workdir, d = csv_run
  config.predict.input = _write_csv(d / "rows.csv", HEADER[:4], [["a", 3, "basic", 2.0]])
  before = (d / "rows.csv").read_bytes()
  for output, match in ((config.predict.input, "is the input file"), (str(d), "is a directory")):
    config.predict.output = output
    with pytest.raises(UsageError, match=match):
      trainer.run(config, workdir, "predict")
  assert (d / "rows.csv").read_bytes() == before
