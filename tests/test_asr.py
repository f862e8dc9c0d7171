"""asr: features against transformers' reference, CTC decoding against optax's CTC probability,
eSpeak NG synthesis and the held-out voices, your own recordings, transcribe, and bad input."""

import contextlib
import csv
import io
import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile

from bigmodel_jax import audio_features, ctc, trainer
from bigmodel_jax.data import audio_files, espeak, speech, spoken_digits
from bigmodel_jax.errors import RunError, UsageError
from tests.helpers import read_metrics, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quietly(fn, *args):
  with contextlib.redirect_stdout(io.StringIO()) as out:
    return fn(*args), out.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny asr run (trained once for this module) and its config."""
  root = tmp_path_factory.mktemp("asr")
  config = tiny_config(str(root / "cache"), "asr:tiny")
  _, out = _quietly(trainer.run, config, str(root / "run"))
  return config, str(root / "run"), out


def test_log_mel_matches_transformers_spectrogram():
  audio_utils = pytest.importorskip("transformers.audio_utils")
  rate, n_fft, hop, mels = 8000, 200, 80, 40
  wave = np.random.default_rng(0).uniform(-0.5, 0.5, 4000).astype(np.float32)
  filters = audio_utils.mel_filter_bank(
      n_fft // 2 + 1, mels, 0.0, rate / 2, rate, norm=None, mel_scale="htk"
  )
  np.testing.assert_allclose(audio_features.mel_filters(rate, n_fft, mels), filters, atol=1e-6)
  reference = audio_utils.spectrogram(
      wave,
      audio_utils.window_function(n_fft, "hann", periodic=True),
      frame_length=n_fft,
      hop_length=hop,
      power=2.0,
      center=False,
      mel_filters=filters,
      mel_floor=audio_features.LOG_FLOOR,
      log_mel="log",
  ).T  # (T, M)
  ours = np.asarray(audio_features.log_mel(jnp.asarray(wave)[None], rate, n_fft, hop, mels))[0]
  assert ours.shape == reference.shape == (int(audio_features.num_frames(4000, n_fft, hop)), mels)
  np.testing.assert_allclose(ours, reference, atol=2e-3, rtol=1e-3)


def test_spec_augment_masks_bands_and_spans_within_each_utterance():
  x = jnp.ones((4, 50, 20))
  lengths = jnp.array([50, 40, 30, 20])
  y = np.asarray(
      audio_features.spec_augment(
          x, lengths, jax.random.key(1), freq_masks=2, freq_width=5, time_masks=2, time_ratio=0.1
      )
  )
  assert (y == 0).any() and set(np.unique(y)) <= {0.0, 1.0}
  for row, n in zip(y, np.asarray(lengths)):
    assert (row == 0).all(0).sum() <= 2 * 5  # at most freq_masks bands of freq_width bins
    masked_frames = (row == 0).all(1)
    assert masked_frames.sum() <= 2 * int(0.1 * n)  # at most time_masks spans of 10%
    assert not masked_frames[n:].any()  # spans fall inside the real frames
  again = audio_features.spec_augment(
      x, lengths, jax.random.key(1), freq_masks=2, freq_width=5, time_masks=2, time_ratio=0.1
  )
  np.testing.assert_array_equal(y, np.asarray(again))


def _labelling_log_prob(log_probs, labels):
  """log P(labels | frames), the sum over alignments, from optax's CTC loss (the reference)."""
  pad = np.zeros((1, len(log_probs)), np.float32)
  lab = np.array([labels or [0]], np.int32)
  lab_pad = np.array([[0.0] * len(labels) or [1.0]], np.float32)
  return -float(optax.ctc_loss(jnp.asarray(log_probs)[None], pad, lab, lab_pad)[0])


def test_beam_search_finds_the_most_probable_labelling_where_greedy_does_not():
  # Greedy's best path is blank-blank-blank (""; P = 0.4^3 = 0.064), but the label 1 summed
  # over its alignments is far more probable (0.75^3 - 0.4^3 - 0.35 * 0.4 * 0.35 = 0.309).
  p = np.array([[0.4, 0.35, 0.25]] * 3, np.float32)
  lp = np.log(p)
  assert ctc.greedy(lp) == []
  labellings = [list(s) for n in range(4) for s in itertools.product((1, 2), repeat=n)]
  scores = [_labelling_log_prob(lp, s) for s in labellings]
  assert labellings[int(np.argmax(scores))] == [1] == ctc.beam_search(lp, beam_size=4)
  assert np.exp(max(scores)) == pytest.approx(0.309, abs=1e-3)
  rng = np.random.default_rng(0)
  for _ in range(5):  # random frames: the wide beam agrees with the exhaustive search
    lp = np.log(rng.dirichlet(np.ones(3) * 0.5, size=4)).astype(np.float32)
    labellings = [list(s) for n in range(5) for s in itertools.product((1, 2), repeat=n)]
    scores = [_labelling_log_prob(lp, s) for s in labellings]
    found = ctc.beam_search(lp, beam_size=32, prune=-np.inf)
    assert _labelling_log_prob(lp, found) == pytest.approx(max(scores), abs=1e-4)


def test_greedy_merges_repeats_and_drops_blanks():
  ids = [1, 1, 0, 1, 2, 2, 0, 0, 3]
  assert ctc.greedy(np.log(np.eye(4)[ids] * 0.97 + 0.01)) == [1, 1, 2, 3]


def test_espeak_synthesizes_distinct_voices_from_the_wheel():
  tts = espeak.engine()
  a = tts.synth("seven", "en+m1", 170, 50, 50)
  b = tts.synth("seven", "en+f3", 170, 50, 50)
  assert tts.sample_rate == 22050 and a.dtype == np.int16 and 0.2 < len(a) / 22050 < 2
  assert np.abs(a).max() > 1000 and not np.array_equal(a[: len(b)], b[: len(a)])
  with pytest.raises(RunError, match="no voice"):
    tts.synth("one", "xx+nobody", 170, 50, 50)


def test_held_out_voices_never_speak_in_training(trained):
  config, _, _ = trained
  splits = speech.load(config.data)
  train, test = set(splits["train"]["speaker"]), set(splits["test"]["speaker"])
  assert test == set(spoken_digits.TEST_SPEAKERS) and not train & test
  words = {w for t in splits["train"]["text"] for w in t.split()}
  assert words <= set(spoken_digits.DIGITS)


def test_training_lowers_the_ctc_loss_and_scores_every_held_out_voice(trained):
  config, workdir, out = trained
  values, _ = _quietly(trainer.run, config, workdir, "eval")
  evals = read_metrics(workdir, "validation")
  assert values["loss"] == pytest.approx(evals[20]["loss"], rel=1e-4)
  assert evals[20]["loss"] < evals[10]["loss"]
  assert 0 <= values["cer_greedy"] <= 1
  table = out[out.index("speaker  utterances") :]
  for speaker in spoken_digits.TEST_SPEAKERS:  # the showcase scores every held-out voice
    assert f"\n  {speaker} " in table


def test_transcribe_reads_a_file_as_training_read_the_data(trained, tmp_path):
  config, workdir, _ = trained
  splits = speech.load(config.data)
  n = splits["test"]["audio_length"][0]
  path = str(tmp_path / "utt.wav")
  soundfile.write(path, splits["test"]["audio"][0, :n], config.data.sample_rate)
  config.unlock()
  config.transcribe.input = path
  config.lock()
  text, out = _quietly(trainer.run, config, workdir, "transcribe")
  assert out.strip() == text.strip()
  assert isinstance(text, str) and set(text) <= set(" efghinorstuvwxz")


def _folder(root, rate=16000, rows=12):
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "transcripts.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "text"])
    for i in range(rows):
      name = f"clip{i}.{'flac' if i % 2 else 'wav'}"
      t = np.arange(rate // 2 + 100 * i) / rate
      soundfile.write(os.path.join(root, name), 0.3 * np.sin(2 * np.pi * 440 * t), rate)
      w.writerow([name, f"Clip {i}"])


def test_audio_folder_resamples_splits_and_caches(tmp_path, monkeypatch):
  _folder(str(tmp_path / "clips"))
  kw = dict(transcripts="transcripts.csv", sample_rate=8000, max_seconds=2.0, val_percent=30)
  splits = audio_files.load_folder(str(tmp_path / "clips"), cache_dir=str(tmp_path / "c"), **kw)
  both = {**{t: n for t, n in zip(splits["train"]["text"], splits["train"]["audio_length"])}}
  both.update(zip(splits["validation"]["text"], splits["validation"]["audio_length"]))
  assert len(both) == 12 and both["clip 3"] == (8000 + 100 * 3) // 2  # 16 kHz -> 8 kHz
  assert len(splits["validation"]["text"]) not in (0, 12)
  monkeypatch.setattr(audio_files, "read_audio", lambda *a: 1 / 0)  # the cache is read instead
  again = audio_files.load_folder(str(tmp_path / "clips"), cache_dir=str(tmp_path / "c"), **kw)
  np.testing.assert_array_equal(again["train"]["audio"], splits["train"]["audio"])


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("no audio", UsageError, "has no audio files (.wav, .flac)"),
        ("unreadable", RunError, "cannot read audio file"),
        ("missing column", UsageError, "lacks column text (it has: path, words)"),
    ],
)
def test_bad_recordings_are_one_line_errors(tmp_path, case, error, message):
  root = str(tmp_path / "clips")
  _folder(root, rows=4)
  if case == "no audio":
    for f in os.listdir(root):
      if not f.endswith(".csv"):
        os.remove(os.path.join(root, f))
  elif case == "unreadable":
    with open(os.path.join(root, "clip2.wav"), "wb") as f:
      f.write(b"RIFF not really a wave file")
  else:
    with open(os.path.join(root, "transcripts.csv"), "w") as f:
      f.write("path,words\nclip0.wav,clip zero\n")
  config = tiny_config(str(tmp_path / "cache"), "asr:tiny", data__source=f"audio_folder:{root}")
  with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
    trainer.run(config, str(tmp_path / "run"))
  assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "run")


def test_a_folder_without_audio_exits_2_with_one_line(tmp_path):
  result = subprocess.run(
      [
          sys.executable,
          "run.py",
          "--experiment=asr:tiny",
          f"--config.data.source=audio_folder:{tmp_path}",
          f"--workdir={tmp_path}/run",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  lines = result.stderr.strip().splitlines()
  assert (
      result.returncode == 2 and lines[-1].startswith("error: ") and "no audio files" in lines[-1]
  )
  assert "Traceback" not in result.stderr
