"""asr's offline default: digit strings spoken by eSpeak NG, with noise and reverberation.

Each utterance is 2-5 digits as words ("four seven zero two"), spoken by one speaker (an eSpeak
voice variant from voices/!v: m1..m7, f1..f5, klatt, Andy, ...) in one of 8 English accents, at a
random rate (120-230 words/min), pitch and pitch range; then, at random, reverberation (an
exponentially decaying noise impulse response, RT60 0.1-0.6 s) and background noise (white or
brown, 5-30 dB SNR), leading/trailing silence and a gain. The test split is spoken only by
TEST_SPEAKERS, who never speak in training: the score says how well the model hears new voices.

Generation is deterministic for (settings, seed) and takes ~20 s on one core for the default;
the arrays are cached as one .npz under the data cache, so later runs and tests load them.
"""

import dataclasses
import hashlib
import json
import os

from absl import logging
import numpy as np
from scipy import signal

from bigmodel_jax.data import audio_files, espeak
from bigmodel_jax.errors import UsageError

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en", "en-us", "en-GB-scotland", "en-GB-x-rp", "en-029", "en-US-nyc", "en-GB-x-gbclan")
# Held-out speakers: ordinary voices of both sexes and both of eSpeak's synthesis methods.
TEST_SPEAKERS = ("m3", "f2", "klatt3", "Annie", "edward", "steph")
# Variants that are not a speaking voice (robot effects, whispers of noise) are left out.
_NOT_SPEAKERS = ("Demonic", "UniRobot", "anikaRobot", "croak", "Storm", "Tweaky")
_VERSION = 1  # bump when generation changes, so old caches are not reused


@dataclasses.dataclass(frozen=True)
class Settings:
  sample_rate: int = 8000
  max_seconds: float = 2.5
  num_train: int = 3000
  test_per_speaker: int = 50
  seed: int = 0


def train_speakers(variants: list[str]) -> list[str]:
  return [v for v in variants if v not in TEST_SPEAKERS and v not in _NOT_SPEAKERS]


def load(settings: Settings, cache_dir: str) -> dict[str, dict[str, np.ndarray]]:
  """-> {"train": utterances, "test": utterances} (audio_files.Utterances layout), cached."""
  key = hashlib.sha256(json.dumps([_VERSION, dataclasses.asdict(settings)]).encode()).hexdigest()[
      :16
  ]
  path = os.path.join(cache_dir, "spoken_digits", f"{key}.npz")
  splits = audio_files.read_cache(path)
  if splits is None:
    logging.info("Synthesizing spoken digits with eSpeak NG into %s", path)
    splits = {"train": _generate(settings, "train"), "test": _generate(settings, "test")}
    audio_files.write_cache(path, splits)
  return splits


def _generate(s: Settings, split: str) -> dict[str, np.ndarray]:
  tts = espeak.engine()
  missing = [v for v in TEST_SPEAKERS if v not in tts.variants]
  if missing:
    raise UsageError(f"eSpeak NG has no voice variants {missing}; its variants: {tts.variants}")
  pool = train_speakers(tts.variants)
  count = s.num_train if split == "train" else len(TEST_SPEAKERS) * s.test_per_speaker
  max_samples = int(s.max_seconds * s.sample_rate)
  rows = []
  for i in range(count):
    rng = np.random.default_rng([s.seed, split == "test", i])
    speaker = rng.choice(pool) if split == "train" else TEST_SPEAKERS[i // s.test_per_speaker]
    rows.append(_utterance(tts, rng, str(speaker), s.sample_rate, max_samples))
  return audio_files.stack(rows, max_samples)


def _utterance(tts, rng, speaker: str, rate: int, max_samples: int):
  accent = rng.choice(ACCENTS)
  words_per_min, pitch, pitch_range = (
      rng.integers(120, 231),
      rng.integers(25, 76),
      rng.integers(20, 91),
  )
  for count in range(int(rng.integers(2, 6)), 0, -1):  # fewer digits until it fits
    text = " ".join(DIGITS[d] for d in rng.integers(0, 10, count))
    raw = tts.synth(text, f"{accent}+{speaker}", words_per_min, pitch, pitch_range)
    wave = audio_files.resample(raw.astype(np.float32) / 32768, tts.sample_rate, rate)
    wave = _trim(wave)
    lead, tail = rng.integers(0, rate // 5, 2)
    if len(wave) + lead + tail <= max_samples:
      break
  wave = np.pad(wave, (lead, tail))[:max_samples]
  if rng.random() < 0.5:
    wave = _reverberate(wave, rng, rate)
  if rng.random() < 0.8:
    wave = _add_noise(wave, rng)
  wave = wave / max(np.abs(wave).max(), 1e-6) * rng.uniform(0.1, 0.9)
  return (wave * 32767).astype(np.int16), text, speaker


def _trim(wave: np.ndarray) -> np.ndarray:
  """Cuts eSpeak's own silence at both ends (it adds ~0.1-0.3 s)."""
  loud = np.nonzero(np.abs(wave) > 0.01 * np.abs(wave).max())[0]
  return wave[loud[0] : loud[-1] + 1] if len(loud) else wave


def _reverberate(wave: np.ndarray, rng, rate: int) -> np.ndarray:
  rt60 = rng.uniform(0.1, 0.6)  # seconds for the tail to fall 60 dB
  t = np.arange(int(rt60 * rate)) / rate
  rir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)  # 60 dB = e^-6.9
  rir[0] = 1.0 / rng.uniform(0.3, 1.0)  # the direct path, louder than the room
  return signal.fftconvolve(wave, rir)[: len(wave)]


def _add_noise(wave: np.ndarray, rng) -> np.ndarray:
  noise = rng.standard_normal(len(wave))
  if rng.random() < 0.5:  # brown noise (hum, rumble): integrated white noise, detrended
    noise = np.cumsum(noise)
    noise -= signal.savgol_filter(noise, 401 if len(noise) > 401 else len(noise) | 1, 1)
  snr_db = rng.uniform(5, 30)
  power = np.mean(wave**2) / 10 ** (snr_db / 10)
  return wave + noise * np.sqrt(power / max(np.mean(noise**2), 1e-12))
