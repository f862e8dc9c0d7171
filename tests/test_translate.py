"""translate: the dates corpus, the seq2seq model's cache and masks, greedy/beam search, the task
through the trainer, TFDS translation datasets under mock_data, and config errors."""

import collections
import contextlib
import datetime
import functools
import io
import itertools
import logging
import os

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigmodel_jax import beam_search, trainer
from bigmodel_jax import config as config_lib
from bigmodel_jax.data import dates
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.models import seq2seq
from bigmodel_jax.tasks import translate
from tests.helpers import prepared_tfds_metadata, read_metrics

EXPERIMENT = "translate:tiny"


def config_for(data_dir, **overrides):
  """The tiny preset on a private TFDS dir, with dotted-key overrides given as name__sub=value."""
  config = config_lib.load_experiment(EXPERIMENT)
  config.data.tfds_data_dir = data_dir
  values = {"decode.show": 0, **{k.replace("__", "."): v for k, v in overrides.items()}}
  config_lib.set_values(config, values, "test")
  config_lib.validate(config)
  return config


# --- the offline dates corpus ------------------------------------------------------------------


def test_every_generated_source_parses_to_its_target_in_every_format():
  sources, targets, formats = dates.generate(6000, seed=3)
  assert [dates.parse(s).isoformat() for s in sources] == targets
  counts = collections.Counter(formats)
  assert set(counts) == set(dates.FORMATS) and len(counts) >= 20
  assert min(counts.values()) > 6000 / len(counts) / 2  # every form is well represented
  assert len(set(sources)) > 0.97 * len(sources)
  years = [int(t[:4]) for t in targets]
  assert min(years) == 1969 and max(years) == 2068
  # One date, many surface forms; all read back to it.
  day = datetime.date(2021, 3, 3)
  forms = {name: fn(day) for name, fn in dates.FORMATS.items()}
  assert forms["ordinal_of"] == "3rd of March 2021" and forms["abbr_apostrophe"] == "Mar 3, '21"
  assert forms["weekday_long"] == "Wednesday, March 3, 2021" and forms["ymd_dot"] == "2021.03.03"
  assert len(set(forms.values())) == len(forms)
  assert {dates.parse(f) for f in forms.values()} == {day}


def test_reference_parser_follows_the_conventions_and_rejects_wrong_dates():
  for yy in range(100):  # two-digit years as strptime reads them
    expected = datetime.datetime.strptime(f"{yy:02d}", "%y").year
    assert dates.parse(f"1/2/{yy:02d}") == datetime.date(expected, 1, 2)
  assert dates.parse("03/04/2021") == datetime.date(2021, 3, 4)  # slash: month first
  assert dates.parse("03.04.2021") == datetime.date(2021, 4, 3)  # dot: day first
  for bad in ("Monday, March 3, 2021", "3th of March 2021", "March 2021", "13/01/2021", "x"):
    with pytest.raises(ValueError):
      dates.parse(bad)


def test_date_splits_are_seeded_and_held_out():
  a, b = dates.make_splits(3000, 200, seed=0), dates.make_splits(3000, 200, seed=0)
  assert a == b and a["train"] != dates.make_splits(3000, 200, seed=1)["train"]
  train = set(a["train"][0])
  for split in ("validation", "test"):
    src, tgt = a[split]
    assert len(src) == len(tgt) == 200 and not train & set(src)
  assert a["validation"] != a["test"]


# --- the model: cache, masks, parameter names --------------------------------------------------

TINY = dict(
    num_encoder_layers=2,
    num_decoder_layers=2,
    num_heads=2,
    embed_dim=16,
    mlp_dim=0,
    share_embeddings=True,
    dropout=0.0,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    vocab_multiple=1,
)


def noisy_params(model, seed=0, std=0.7):
  """Random params (numpy: no compile) far from uniform logits; LayerNorm scales near 1."""
  shapes = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 3), jnp.int32)
  )["params"]
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (path[-1].key == "scale") + std * rng.standard_normal(x.shape, np.float32),
      nn.unbox(shapes),
  )


@functools.partial(jax.jit, static_argnums=0)
def teacher_forced(model, params, src, tgt_in):
  return model.apply({"params": params}, src, tgt_in)


@pytest.mark.parametrize("shared", [True, False])
def test_cached_decoding_matches_a_full_recompute(shared):
  model = seq2seq.Seq2Seq(
      src_vocab_size=13, tgt_vocab_size=13 if shared else 9, **dict(TINY, share_embeddings=shared)
  )
  params = noisy_params(model)
  rng = np.random.default_rng(0)
  src = rng.integers(0, 10, (3, 6)).astype(np.int32)
  src[0, 4:] = model.src_pad
  tgt_in = rng.integers(0, 6, (3, 5)).astype(np.int32)
  full = teacher_forced(model, params, src, tgt_in)  # (3, 5, V)

  decoder = model.clone(decode=True, decode_len=5)
  encoded, mask = model.apply({"params": params}, src, method="encode")
  _, state = decoder.apply(
      {"params": params}, tgt_in[:, :1], encoded, mask, method="run_decoder", mutable=["cache"]
  )
  cache, steps = state["cache"], []
  for t in range(5):  # encoded=None: cross-attention reads the keys/values primed above
    logits, state = decoder.apply(
        {"params": params, "cache": cache},
        tgt_in[:, t : t + 1],
        None,
        mask,
        method="run_decoder",
        mutable=["cache"],
    )
    cache = state["cache"]
    steps.append(logits[:, 0])
  steps = np.stack(steps, 1)
  np.testing.assert_allclose(steps, full, atol=2e-5)
  assert int(cache["decoder"]["cache_index"]) == 5
  assert set(params) == ({"embed"} if shared else {"src_embed", "tgt_embed"}) | {
      "encoder",
      "decoder",
  }


def test_source_padding_is_masked_and_the_decoder_is_causal():
  model = seq2seq.Seq2Seq(src_vocab_size=13, tgt_vocab_size=13, **TINY)
  params = noisy_params(model)
  src = np.array([[1, 2, 3, 12, 10, 10]], np.int32)  # ... EOS PAD PAD
  longer = np.concatenate([src, np.full((1, 3), model.src_pad, np.int32)], 1)
  tgt_in = np.array([[11, 4, 5, 6, 7]], np.int32)
  base = teacher_forced(model, params, src, tgt_in)
  np.testing.assert_allclose(teacher_forced(model, params, longer, tgt_in), base, atol=1e-5)
  changed = tgt_in.copy()
  changed[0, 3:] = [1, 2]  # later decoder inputs cannot change earlier logits
  out = teacher_forced(model, params, src, changed)
  np.testing.assert_allclose(out[:, :3], base[:, :3], atol=1e-5)
  assert np.abs(out[:, 3:] - base[:, 3:]).max() > 1e-3


def test_parameters_carry_logical_axis_names_and_padded_tables():
  model = seq2seq.Seq2Seq(src_vocab_size=13, tgt_vocab_size=13, **dict(TINY, vocab_multiple=8))
  src, tgt_in = jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 3), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), src, tgt_in)["params"]
  assert nn.unbox(shapes)["embed"]["embedding"].shape == (16, 16)  # 13 ids padded to 16 rows
  assert jax.eval_shape(model.apply, {"params": shapes}, src, tgt_in).shape == (1, 3, 13)
  specs = nn.get_partition_spec(shapes)
  layer = specs["decoder"]["layer_1"]
  assert specs["embed"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
  assert layer["cross_attn"]["query"]["kernel"] == jax.sharding.PartitionSpec(
      "embed", "heads", "kv"
  )
  assert layer["mlp"]["fc"]["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")
  assert specs["encoder"]["ln_f"]["scale"] == jax.sharding.PartitionSpec("norm")


# --- greedy and beam search --------------------------------------------------------------------


def sequence_log_probs(model, params, src, tokens):
  """Teacher-forced log-prob of each row of tokens (B, L), up to and including its first EOS."""
  _, bos, eos = model.tgt_specials
  tgt_in = np.concatenate([np.full((len(tokens), 1), bos), tokens[:, :-1]], 1).astype(np.int32)
  logp = jax.nn.log_softmax(teacher_forced(model, params, src, tgt_in))
  token_lp = np.take_along_axis(np.asarray(logp), tokens[..., None].astype(np.int64), -1)[..., 0]
  before_eos = np.cumsum(tokens == eos, axis=1) - (tokens == eos) == 0
  return (token_lp * before_eos).sum(1)


@pytest.fixture(scope="module")
def random_model():
  model = seq2seq.Seq2Seq(src_vocab_size=13, tgt_vocab_size=13, **TINY)
  src = np.random.default_rng(0).integers(0, 10, (32, 6)).astype(np.int32)
  return model, noisy_params(model), src


@pytest.mark.parametrize("length_penalty", [0.0, 0.6])
def test_beam_size_one_is_greedy(random_model, length_penalty):
  model, params, src = random_model
  tokens, logp = beam_search.greedy(model, params, src, 7)
  beam, score, beam_logp = beam_search.beam_search(model, params, src, 7, 1, length_penalty)
  np.testing.assert_array_equal(beam, tokens)
  np.testing.assert_allclose(beam_logp, logp, rtol=1e-5)
  eos = model.tgt_specials[2]
  assert all((row == eos).sum() == 1 for row in tokens)  # every hypothesis ends, once
  np.testing.assert_allclose(sequence_log_probs(model, params, src, tokens), logp, atol=1e-4)


def test_beam_scores_are_the_models_log_probs_and_beat_greedy(random_model):
  model, params, src = random_model
  _, greedy_logp = beam_search.greedy(model, params, src, 7)
  tokens, score, logp = beam_search.beam_search(model, params, src, 7, 4, 0.6)
  # Reordered caches would show here: the search's sums equal a teacher-forced rescoring.
  np.testing.assert_allclose(sequence_log_probs(model, params, src, tokens), logp, atol=1e-4)
  lengths = beam_search.strip(tokens, model.tgt_specials[2])
  np.testing.assert_allclose(
      score, logp / ((6.0 + np.array([len(t) for t in lengths])) / 6) ** 0.6, rtol=1e-5
  )
  _, _, plain = beam_search.beam_search(model, params, src, 7, 4, 0.0)
  assert plain.mean() > greedy_logp.mean() + 0.5
  assert (plain >= greedy_logp - 1e-4).mean() >= 0.9


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_a_wide_enough_beam_finds_the_best_sequence(length_penalty):
  # Two symbols and a max length of 3 give 7 hypotheses ([EOS], [a, EOS], [a, b, EOS]); a beam
  # of 8 keeps them all, so it must return the brute-force best, never worse than greedy.
  model = seq2seq.Seq2Seq(src_vocab_size=5, tgt_vocab_size=5, **TINY)
  params = noisy_params(model, seed=1, std=1.0)
  src = np.random.default_rng(1).integers(0, 2, (16, 4)).astype(np.int32)
  eos = model.tgt_specials[2]
  hyps = (
      [[eos]]
      + [[a, eos] for a in (0, 1)]
      + [[a, b, eos] for a, b in itertools.product((0, 1), repeat=2)]
  )
  padded = np.array([h + [model.tgt_specials[0]] * (3 - len(h)) for h in hyps], np.int32)
  scores = np.stack(
      [
          sequence_log_probs(model, params, src, np.tile(h, (16, 1)))
          / ((5.0 + len(hyps[i])) / 6) ** length_penalty
          for i, h in enumerate(padded)
      ],
      1,
  )  # (16, 7)
  tokens, score, logp = beam_search.beam_search(model, params, src, 3, 8, length_penalty)
  np.testing.assert_allclose(score, scores.max(1), rtol=1e-5)
  np.testing.assert_array_equal(tokens, padded[scores.argmax(1)])
  if length_penalty == 0:
    assert (logp >= beam_search.greedy(model, params, src, 3)[1] - 1e-5).all()


# --- the task through the trainer --------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("translate"))
  config = config_for(data_dir, decode__show=2)
  with contextlib.redirect_stdout(io.StringIO()) as out:
    trainer.run(config, workdir)
  config.decode.show = 0
  return config, workdir, out.getvalue()


def test_tiny_preset_learns_and_reports_bleu(trained):
  _, workdir, _ = trained
  train, val = read_metrics(workdir), read_metrics(workdir, "validation")
  assert train[40]["loss"] < train[10]["loss"] - 1.0
  assert val[40]["loss"] < val[20]["loss"] and val[40]["accuracy"] > val[20]["accuracy"]
  assert 0 <= val[40]["test_bleu"] <= 100 and 0 <= val[40]["test_exact_match"] <= 1
  assert "test_bleu" not in val[20]  # decoding is for the final eval only
  assert np.isfinite(train[40]["examples_per_s"])


def test_eval_mode_and_translate_mode(trained, capsys):
  config, workdir, _ = trained
  values = trainer.run(config, workdir, "eval")
  last = read_metrics(workdir, "validation")[40]
  for key in ("loss", "accuracy", "sequence_accuracy", "test_bleu", "test_exact_match"):
    assert values[key] == pytest.approx(last[key], rel=1e-5), key
  config.decode.input = "Mar 3, '21"
  (hyp,) = trainer.run(config, workdir, "translate")
  assert isinstance(hyp, str) and len(hyp) <= config.decode.max_len - 1
  assert "Mar 3, '21\n  -> " in capsys.readouterr().out


def test_a_long_decode_input_is_cut_with_a_warning_or_refused(trained, caplog, capsys):
  config, workdir, _ = trained
  caplog.set_level(logging.WARNING, logger="absl")
  text = "Wednesday, March 3, 2021 " * 4000  # 100,000 characters, byte tokens
  config.decode.input = text[:31]  # what the model reads of it: data.max_source_len=32 with EOS
  (first_part,) = trainer.run(config, workdir, "translate")
  assert "decode.input is" not in caplog.text
  config.decode.input = text
  (hyp,) = trainer.run(config, workdir, "translate")
  assert (
      "decode.input is 100000 tokens long but the model reads 31 (data.max_source_len=32, "
      "EOS included): only its first 31 tokens were used; decode.on_long_input=error "
      "refuses such input"
  ) in caplog.text
  assert hyp == first_part
  capsys.readouterr()
  config.decode.on_long_input = "error"
  try:
    with pytest.raises(
        UsageError,
        match=(
            r"^decode.input is 100000 tokens long but the model reads 31 \(data.max_source_len=32, "
            r"EOS included\); shorten it, or set decode.on_long_input=warn to use its first 31 "
            r"tokens$"
        ),
    ):
      trainer.run(config, workdir, "translate")
    assert capsys.readouterr().out == ""
  finally:
    config.decode.on_long_input = "warn"
    config.decode.input = ""


def test_each_split_logs_once_how_many_pairs_were_dropped_or_cut(data_dir, tmp_path, caplog):
  caplog.set_level(logging.WARNING, logger="absl")
  task = translate.Task(config_for(data_dir, data__max_source_len=16))
  task.setup(str(tmp_path), create=True)  # byte tokens; targets (ISO dates + EOS) always fit
  for split, action in (("train", "dropped"), ("validation", "cut to fit"), ("train", "")):
    arrays = task.split_arrays(split)
    sources = task._texts[split][0]
    long = sum(len(s.encode()) + 1 > 16 for s in sources)
    assert 0 < long < len(sources)
    assert len(arrays["inputs"]) == len(sources) - (long if split == "train" else 0)
    if action:
      assert (
          f"{split} split: {long} of {len(sources)} pairs are longer than "
          "data.max_source_len=16 or data.max_target_len=12 tokens (EOS included) and were "
          f"{action}"
      ) in caplog.text
  assert len([r for r in caplog.records if "pairs are longer than" in r.getMessage()]) == 2


def test_training_ends_with_a_showcase_of_metrics_and_triples(trained):
  _, workdir, out = trained
  values = read_metrics(workdir, "validation")[40]
  assert (
      f"--- test: BLEU {values['test_bleu']:.2f}, exact match "
      f"{100 * values['test_exact_match']:.1f}% over 16 examples (beam 2"
  ) in out
  assert 2 <= out.count("source:     ") <= 5
  assert out.count("source:     ") == out.count("reference:  ") == out.count("hypothesis: ")


def test_modes_that_need_a_checkpoint_say_so(data_dir, tmp_path):
  with pytest.raises(RunError, match="no tokenizer in"):
    trainer.run(config_for(data_dir), str(tmp_path / "empty"), "translate")
  assert not (tmp_path / "empty").exists()


def test_sentencepiece_vocabularies_are_trained_saved_and_reloaded(data_dir, tmp_path):
  config = config_for(
      data_dir, data__tokenizer="sentencepiece", data__vocab_size=320, data__shared_vocab=False
  )
  task = translate.Task(config)
  task.setup(str(tmp_path), create=True)
  assert task.src_tok.vocab_size == task.tgt_tok.vocab_size == 320
  assert task.model.src_vocab_size == 323 and not task.model.share_embeddings
  _, targets = task._texts["validation"]
  batch = task.eval_batches(8)[0]
  eos = task.model.tgt_specials[2]
  decoded = [task.tgt_tok.decode(t) for t in beam_search.strip(batch["targets"], eos)]
  assert decoded == list(targets[:8])
  assert batch["inputs"].shape[1] == config.data.max_source_len
  again = translate.Task(config)
  again.setup(str(tmp_path), create=False)  # reloads from <workdir>/tokenizer/{source,target}
  np.testing.assert_array_equal(again.eval_batches(8)[0]["inputs"], batch["inputs"])
  assert sorted(os.listdir(tmp_path / "tokenizer")) == ["source", "target"]


# --- TFDS translation datasets under mock_data -------------------------------------------------


@pytest.fixture
def mock_translation(tmp_path):
  data_dir = str(tmp_path / "tfds")
  prepared_tfds_metadata(
      data_dir, "ted_hrlr_translate/pt_to_en", {"train": 40, "validation": 5, "test": 5}
  )
  prepared_tfds_metadata(data_dir, "opus/medical", {"train": 100})
  prepared_tfds_metadata(data_dir, "tiny_shakespeare", {"train": 1, "validation": 1, "test": 1})
  with tfds.testing.mock_data(
      num_examples=9, data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES
  ):
    yield data_dir


def _asked_splits(monkeypatch):
  asked, original = [], tfds.core.DatasetBuilder.as_data_source
  monkeypatch.setattr(
      tfds.core.DatasetBuilder,
      "as_data_source",
      lambda self, split, **kw: asked.append(split) or original(self, split, **kw),
  )
  return asked


@pytest.mark.parametrize(
    "name, languages, splits",
    [
        ("ted_hrlr_translate/pt_to_en", ("pt", "en"), ["train", "validation", "test"]),
        ("opus/medical", ("de", "en"), ["train[:98%]", "train[98%:99%]", "train[99%:100%]"]),
    ],
)
def test_tfds_translation_datasets_load_by_name(
    mock_translation, monkeypatch, name, languages, splits
):
  asked = _asked_splits(monkeypatch)
  config = config_for(mock_translation, data__source=f"tfds:{name}", data__shared_vocab=False)
  task = translate.Task(config)
  pairs = task._texts
  assert asked == splits
  builder = tfds.builder(name, data_dir=mock_translation)
  first = builder.as_data_source(splits[0])[0]
  assert pairs["train"][0][0] == first[languages[0]] and pairs["train"][1][0] == first[languages[1]]
  assert all(len(pairs[s][0]) == len(pairs[s][1]) == 9 for s in ("train", "validation", "test"))
  task.setup(str(mock_translation) + "/run", create=True)
  batch = task.eval_batches(4)[0]
  assert batch["inputs"].shape == (4, config.data.max_source_len)
  assert batch["targets"].shape == (4, config.data.max_target_len)
  assert (batch["targets"] == task.model.tgt_specials[2]).sum(1).tolist() == [1, 1, 1, 1]


def test_tfds_language_direction_and_dataset_errors(mock_translation, monkeypatch):
  config = config_for(
      mock_translation,
      data__source="tfds:ted_hrlr_translate/pt_to_en",
      data__source_lang="en",
      data__target_lang="pt",
  )
  pairs = translate.Task(config)._texts["test"]
  first = tfds.builder("ted_hrlr_translate/pt_to_en").as_data_source("test")[0]
  assert (pairs[0][0], pairs[1][0]) == (first["en"], first["pt"])
  config.data.source_lang = "fr"
  with pytest.raises(UsageError, match=r"data.source_lang='fr' is not a language .* pt, en"):
    translate.Task(config)
  with pytest.raises(UsageError, match="tfds:tiny_shakespeare has no Translation feature"):
    translate.Task(config_for(mock_translation, data__source="tfds:tiny_shakespeare"))


def test_unprepared_and_unknown_tfds_datasets_are_usage_errors(tmp_path):
  with pytest.raises(
      UsageError, match=r"tfds:opus/medical is not prepared in .*`tfds build opus/medical"
  ):
    translate.Task(config_for(str(tmp_path), data__source="tfds:opus/medical"))
  with pytest.raises(UsageError, match="unknown tfds dataset 'no_such_set'"):
    translate.Task(config_for(str(tmp_path), data__source="tfds:no_such_set"))


# --- config errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"data__source": "wmt"}, r"data.source='wmt' is not valid; valid: dates, tfds:"),
        ({"data__tokenizer": "chars"}, r"data.tokenizer='chars' is not valid; valid: byte"),
        ({"data__tokenizer": "sentencepiece", "data__vocab_size": 100}, "data.vocab_size=100"),
        ({"decode__beam_size": 0}, r"decode.beam_size=0 must be >= 1"),
        ({"decode__length_penalty": -0.5}, r"decode.length_penalty=-0.5 must be >= 0"),
        ({"data__max_target_len": 1}, r"data.max_target_len=1 must be >= 2"),
        ({"data__train_examples": 0}, r"data.train_examples=0 must be >= 1"),
        ({"train__label_smoothing": 1.0}, r"train.label_smoothing=1.0 must be in \[0, 1\)"),
        (
            {"model__embed_dim": 30, "model__num_heads": 4},
            r"model.embed_dim=30 must be even and divisible by model.num_heads=4",
        ),
        ({"model__name": "gpt"}, r"model.name='gpt' is not valid; valid: seq2seq"),
        (
            {"decode__on_long_input": "cut"},
            r"decode.on_long_input='cut' is not valid; valid: warn, error",
        ),
    ],
)
def test_config_errors_are_one_line_usage_errors(data_dir, overrides, match):
  with pytest.raises(UsageError, match=match) as e:
    translate.Task(config_for(data_dir, **overrides))
  assert "\n" not in str(e.value)
