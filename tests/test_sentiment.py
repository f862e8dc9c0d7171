"""sentiment: the generated review corpus, the text classifiers, the task, and its runs."""

import collections
import functools
import logging
import re

import jax
import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
import tensorflow_datasets as tfds

from bigmodel_jax import config as config_lib
from bigmodel_jax import models, trainer
from bigmodel_jax.data import reviews
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import classify_text
from tests.helpers import prepared_tfds_metadata, read_metrics, run_quietly

tfds.disable_progress_bar()


def _config(**overrides):
  c = config_lib.load_experiment("sentiment:tiny")
  c.predict.num_examples = 0
  config_lib.set_values(c, {k.replace("__", "."): v for k, v in overrides.items()}, "test")
  config_lib.validate(c)
  return c


# --- the generated corpus ------------------------------------------------------------------------


def _rule_label(text: str) -> int:
  """The label the module doc promises, recomputed from the text alone."""
  text = re.sub(rf"^({'|'.join(map(re.escape, reviews.OPENINGS))}) ", "", text)
  text = text[0].lower() + text[1:-1]  # drop the capital and the full stop

  def polarity(clause: str) -> int:
    words = clause.split()
    adjective = words[-1]
    assert adjective in reviews.POSITIVE + reviews.NEGATIVE, clause
    negated = any(f" {n} " in f" {clause} " for n in reviews.NEGATORS)
    return int((adjective in reviews.POSITIVE) != negated)

  if ", but " in text:
    return polarity(text.split(", but ")[1])
  if text.startswith("although "):
    return polarity(text[len("although ") :].split(", ")[1])
  if ", even though " in text:
    return polarity(text.split(", even though ")[0])
  return polarity(text)


@pytest.fixture(scope="module")
def corpus():
  return reviews.splits(4000, 1000, seed=0)


def test_generated_labels_follow_order_and_negation(corpus):
  for texts, labels in corpus.values():
    assert [_rule_label(t) for t in texts] == labels.tolist()
    assert 0.45 < labels.mean() < 0.55
  for text, label in reviews.PROBES:
    assert _rule_label(text) == label, text
  forms = collections.Counter(
      "but"
      if ", but " in t
      else "even"
      if "even though" in t
      else "although"
      if "lthough" in t
      else "single"
      for t in corpus["train"][0]
  )
  assert min(forms.values()) > 400  # every form is well represented


def test_test_split_is_held_out_and_generation_is_deterministic(corpus):
  train, test = corpus["train"], corpus["test"]
  assert len(test[0]) == 1000 and not set(test[0]) & set(train[0])
  again = reviews.splits(4000, 1000, seed=0)
  assert again["test"][0] == test[0] and again["train"][0] == train[0]
  assert reviews.generate(100, seed=1)[0] != reviews.generate(100, seed=2)[0]


def test_a_bag_of_words_cannot_solve_it(corpus):
  (train, y_train), (test, y_test) = corpus["train"], corpus["test"]
  vectorizer = CountVectorizer()
  x_train = vectorizer.fit_transform(train)
  bow = LogisticRegression(max_iter=2000).fit(x_train, y_train)
  assert bow.score(vectorizer.transform(test), y_test) < 0.6  # a coin flip, roughly
  # ... although the words are the same in both classes: every frequent word occurs in both.
  counts = x_train.T @ np.stack([y_train == 0, y_train == 1], 1).astype(np.int64)  # (V, 2)
  frequent = counts.sum(1) >= 20
  assert frequent.sum() > 40 and (counts[frequent] > 0).all()
  for word in ("good", "bad", "not", "but", "although", "even"):
    per_class = counts[vectorizer.vocabulary_[word]]
    assert 0.7 < per_class[0] / per_class[1] < 1.4, (word, per_class)


# --- models --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.name": "text_encoder"},
        {"model.name": "text_encoder", "model.pooling": "first"},
        {"model.name": "rnn", "model.cell": "lstm"},
        {
            "model.name": "rnn",
            "model.cell": "gru",
            "model.bidirectional": False,
            "model.num_layers": 2,
        },
    ],
)
def test_models_ignore_padding_and_see_word_order(overrides):
  cfg = _config(**{k.replace(".", "__"): v for k, v in overrides.items()}).model
  model = models.make(cfg, vocab_size=20, num_classes=3)
  tokens = np.array([[5, 6, 7, 0, 0, 0], [3, 0, 0, 0, 0, 0], [0] * 6, [7, 6, 5, 0, 0, 0]], np.int32)
  variables = model.init(jax.random.key(0), tokens)
  logits = model.apply(variables, tokens)
  assert logits.shape == (4, 3) and logits.dtype == np.float32
  longer = np.pad(tokens, ((0, 0), (0, 5)))
  np.testing.assert_allclose(model.apply(variables, longer), logits, atol=1e-5)
  assert np.abs(logits[0] - logits[3]).max() > 1e-4  # order matters
  dropped = model.apply(variables, tokens, train=True, rngs={"dropout": jax.random.key(1)})
  assert np.abs(dropped - logits).max() > 1e-6  # dropout is on in training


@pytest.mark.parametrize("name", ["text_encoder", "rnn"])
def test_plan_shards_the_model_over_a_mesh(name, tmp_path):
  """Logical axis names map onto a (data 2, fsdp 2, tensor 2) mesh: the train step compiles."""
  config = _config(
      model__name=name, parallel__strategy="mesh", parallel__fsdp=2, parallel__tensor=2
  )
  report = trainer.run(config, str(tmp_path / "plan"), "plan")
  assert report["parameters"] > 10_000 and report["flops_per_step_per_device"] > 0


def test_every_preset_builds_a_model():
  for preset in [None, *__import__("experiments.sentiment", fromlist=["x"]).PRESETS]:
    config = config_lib.load_experiment("sentiment" + (f":{preset}" if preset else ""))
    config_lib.validate(config)
    model = models.make(config.model, classify_text.MODELS, vocab_size=300, num_classes=2)
    tokens = jax.ShapeDtypeStruct((2, config.model.max_len), np.int32)
    shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), tokens)  # shapes
    assert sum(x.size for x in jax.tree.leaves(shapes)) > 1000


# --- training, eval, predict ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The tiny run (it memorises 32 reviews), with the showcase it printed."""
  workdir = str(tmp_path_factory.mktemp("sentiment"))
  config = _config(predict__num_examples=2)
  _, printed = run_quietly(config, workdir)
  return config, workdir, printed


def test_tiny_run_learns_and_shows_off(trained):
  _, workdir, shown = trained
  train, val = read_metrics(workdir), read_metrics(workdir, "validation")
  assert train[40]["loss"] < train[10]["loss"] - 0.15
  for key in ("loss", "accuracy", "examples_per_s", "grad_norm"):
    assert np.isfinite(train[40][key]), key
  assert set(val) == {20, 40}
  # The eval metric weighs out the padded rows of the last batch (60 = 3 x 16 + 12): it agrees
  # with the showcase's host-side accuracy over exactly the 60 test reviews.
  accuracy = re.search(r"reviews test accuracy: ([\d.]+)% \(60 examples\)", shown)
  assert accuracy and float(accuracy.group(1)) == pytest.approx(100 * val[40]["accuracy"], abs=0.01)
  rows = re.findall(r"^  (ok   |WRONG) (positive|negative) [01]\.\d{3}  ", shown, re.M)
  assert len(rows) == 2 + len(reviews.PROBES)  # predict.num_examples test reviews, then probes
  assert "Slow, but good." in shown


def test_eval_mode_matches_the_last_eval(trained):
  config, workdir, _ = trained
  values = trainer.run(config, workdir, "eval")
  last = read_metrics(workdir, "validation")[40]
  assert values["loss"] == pytest.approx(last["loss"], rel=1e-5)
  assert values["accuracy"] == pytest.approx(last["accuracy"])


def test_predict_mode_classifies_a_sentence(trained, capsys):
  config, workdir, _ = trained
  config.predict.input = "Slow, but good."
  out = trainer.run(config, workdir, "predict")
  assert out["label"] in ("negative", "positive")
  assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
  assert "Slow, but good." in capsys.readouterr().out
  config.predict.input = "  "
  with pytest.raises(UsageError, match="predict.input is empty"):
    trainer.run(config, workdir, "predict")


def test_a_long_predict_input_is_cut_with_a_warning_or_refused(trained, caplog, capsys):
  config, workdir, _ = trained
  caplog.set_level(logging.WARNING, logger="absl")
  text = "The plot was not bad, but the acting was dull. " * 2128  # 100,016 characters
  config.predict.input = text[:48]  # what the model reads of it (byte tokens, model.max_len=48)
  first_part = trainer.run(config, workdir, "predict")
  assert "predict.input is" not in caplog.text
  config.predict.input = text
  out = trainer.run(config, workdir, "predict")
  assert (
      f"predict.input is {len(text)} tokens long but the model reads 48 (model.max_len=48): "
      "only its first 48 tokens were used; predict.on_long_input=error refuses"
  ) in caplog.text
  assert out["label"] == first_part["label"]
  assert out["probabilities"] == pytest.approx(first_part["probabilities"], abs=1e-6)
  capsys.readouterr()
  config.predict.on_long_input = "error"
  try:
    with pytest.raises(
        UsageError,
        match=(
            rf"^predict.input is {len(text)} tokens long but the model reads 48 "
            r"\(model.max_len=48\); "
            r"shorten it, or set predict.on_long_input=warn to use its first 48 tokens$"
        ),
    ):
      trainer.run(config, workdir, "predict")
    assert capsys.readouterr().out == ""  # refused before predicting anything
  finally:
    config.predict.on_long_input = "warn"


def test_each_split_logs_once_how_many_texts_were_cut(tmp_path, caplog):
  caplog.set_level(logging.WARNING, logger="absl")
  task = classify_text.Task(_config(model__max_len=40))
  task.setup(str(tmp_path), create=True)  # the tiny preset's byte tokenizer: a token is a byte
  for split in ("train", "test", "train"):
    task.split_arrays(split)
    texts = task._texts(split)[0]
    cut = sum(len(t.encode()) > 40 for t in texts)
    assert 0 < cut < len(texts)
    assert (
        f"{split} split: {cut} of {len(texts)} texts are longer than model.max_len=40 tokens "
        "and were cut to their first 40"
    ) in caplog.text
  assert len([r for r in caplog.records if "texts are longer than" in r.getMessage()]) == 2


def test_modes_need_a_trained_workdir(tmp_path):
  with pytest.raises(RunError, match="no tokenizer in"):
    trainer.run(_config(), str(tmp_path / "empty"), "predict")
  with pytest.raises(UsageError, match=r"valid: train, eval, .*predict"):
    trainer.run(_config(), str(tmp_path / "empty"), "sample")
  assert not (tmp_path / "empty").exists()


# --- TFDS ----------------------------------------------------------------------------------------


@pytest.fixture
def mock_imdb(tmp_path):
  data_dir = str(tmp_path / "tfds")
  prepared_tfds_metadata(data_dir, "imdb_reviews", {"train": 24, "test": 24})
  with tfds.testing.mock_data(
      num_examples=24, data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES
  ):
    yield data_dir


def test_imdb_reviews_trains_and_evaluates_from_tfds(mock_imdb, tmp_path):
  config = _config(
      data__source="tfds:imdb_reviews",
      data__tfds_data_dir=mock_imdb,
      train__steps=4,
      train__batch_size=8,
      train__eval_every=4,
  )
  task = classify_text.Task(config)
  assert task.class_names == ("neg", "pos") and task.eval_split == "test"
  texts, labels = task._texts("train")
  assert len(texts) == 24 and all(isinstance(t, str) and t for t in texts)
  assert set(labels.tolist()) <= {0, 1} and labels.dtype == np.int32
  trainer.run(config, str(tmp_path / "run"))
  assert np.isfinite(read_metrics(str(tmp_path / "run"), "validation")[4]["loss"])


def test_tfds_errors_are_one_line(mock_imdb, tmp_path):
  with pytest.raises(
      UsageError,
      match=r"data.label_key='rating' is not a ClassLabel feature of "
      r"tfds:imdb_reviews; features: label \(ClassLabel\), text \(Text\)",
  ):
    classify_text.Task(
        _config(
            data__source="tfds:imdb_reviews",
            data__tfds_data_dir=mock_imdb,
            data__label_key="rating",
        )
    )
  with pytest.raises(UsageError, match=r"data.text_key='label' is not a Text feature"):
    classify_text.Task(
        _config(
            data__source="tfds:imdb_reviews", data__tfds_data_dir=mock_imdb, data__text_key="label"
        )
    )


def test_unprepared_or_unknown_tfds_dataset(tmp_path):
  with pytest.raises(
      UsageError,
      match=r"tfds:imdb_reviews is not prepared in .* cannot be "
      r"downloaded offline; .*tfds build imdb_reviews",
  ) as e:
    classify_text.Task(_config(data__source="tfds:imdb_reviews", data__tfds_data_dir=str(tmp_path)))
  assert "\n" not in str(e.value)
  with pytest.raises(
      UsageError, match=r"unknown tfds dataset 'imdb_reveiws'; did you mean tfds:imdb_reviews"
  ):
    classify_text.Task(_config(data__source="tfds:imdb_reveiws"))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"data.source": "wikipedia"},
            r"data.source='wikipedia' is not valid; valid: reviews, tfds:",
        ),
        ({"data.tokenizer": "wordpiece"}, r"data.tokenizer='wordpiece' is not valid; valid: byte"),
        ({"data.num_train": 0}, r"data.num_train=0 must be a positive integer"),
        ({"model.name": "gpt"}, r"model.name='gpt' is not valid; valid: text_encoder, rnn"),
        ({"model.max_len": 0}, r"model.max_len=0 must be a positive integer"),
        ({"model.pooling": "max"}, r"model.pooling='max' is unknown; valid: mean, first"),
        ({"model.num_heads": 3}, r"model.embed_dim=32 must be divisible by model.num_heads=3"),
        (
            {"model.name": "rnn", "model.cell": "rnn"},
            r"model.cell='rnn' is unknown; valid: lstm, gru",
        ),
        ({"model.name": "rnn", "model.hidden_dim": 0}, r"model.hidden_dim=0 must be a positive"),
        ({"predict.num_examples": -1}, r"predict.num_examples=-1 must be >= 0"),
        (
            {"predict.on_long_input": "cut"},
            r"predict.on_long_input='cut' is not valid; valid: warn, error",
        ),
    ],
)
def test_config_errors_are_one_line_and_write_nothing(tmp_path, overrides, match):
  config = _config(**{k.replace(".", "__"): v for k, v in overrides.items()})
  with pytest.raises(UsageError, match=match) as e:
    trainer.run(config, str(tmp_path / "run"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "run").exists()
