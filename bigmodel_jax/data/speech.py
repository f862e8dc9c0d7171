"""asr's data sources by name, and transcripts as CTC label ids.

  espeak_digits         digit strings synthesized by eSpeak NG (spoken_digits.py); the test split
                        is spoken by held-out voices
  audio_folder:<dir>    your recordings + transcripts CSV (audio_files.py); the eval split is a
                        hash-chosen data.val_percent of them

TFDS's speech datasets (speech_commands, librispeech) are not offered: their builders import
TensorFlow, which this project does not depend on (tfds 4.9.10 refuses to construct them without
it). Export such a dataset to WAV/FLAC files and a path,text CSV and use audio_folder:.

Labels: a transcript's characters are ids 1..len(alphabet) in the run's alphabet (every character
of the training transcripts, sorted, saved in dataset.json); 0 is CTC's blank and the padding.
"""

import os

import numpy as np

from bigmodel_jax.data import audio_files, spoken_digits
from bigmodel_jax.errors import UsageError

DEFAULT = "espeak_digits"
KINDS = f"{DEFAULT} | audio_folder:<dir>"


def check(source: str) -> None:
  """A one-line UsageError for a source that is not one of KINDS (cheap: reads no data)."""
  if source == DEFAULT or (source.startswith("audio_folder:") and source[len("audio_folder:") :]):
    return
  if source.startswith("tfds:"):
    raise UsageError(
        f"data.source={source}: TFDS's speech datasets need TensorFlow to load, which this "
        "project does not use; export the audio to WAV/FLAC files with a path,text CSV and "
        "pass data.source=audio_folder:<dir>"
    )
  raise UsageError(f"data.source={source!r} is not valid; valid: {KINDS}")


def cache_dir(data_dir: str) -> str:
  return os.path.expanduser(data_dir or "~/.cache/bigmodel_jax")


def load(d) -> dict[str, dict[str, np.ndarray]]:
  """config.data -> {"train": utterances, "test": utterances} (audio_files' layout)."""
  check(d.source)
  if d.source == DEFAULT:
    settings = spoken_digits.Settings(
        sample_rate=d.sample_rate,
        max_seconds=d.max_seconds,
        num_train=d.num_train,
        test_per_speaker=d.test_per_speaker,
        seed=d.split_seed,
    )
    return spoken_digits.load(settings, cache_dir(d.tfds_data_dir))
  splits = audio_files.load_folder(
      os.path.expanduser(d.source[len("audio_folder:") :]),
      transcripts=d.transcripts,
      sample_rate=d.sample_rate,
      max_seconds=d.max_seconds,
      val_percent=d.val_percent,
      cache_dir=cache_dir(d.tfds_data_dir),
  )
  return {"train": splits["train"], "test": splits["validation"]}


def alphabet(texts) -> str:
  return "".join(sorted(set("".join(texts))))


def encode(texts, chars: str, length: int) -> np.ndarray:
  """Transcripts -> int32 (N, length) label ids, 0-padded; characters outside `chars` dropped."""
  index = {c: i + 1 for i, c in enumerate(chars)}
  out = np.zeros((len(texts), length), np.int32)
  for row, text in enumerate(texts):
    ids = [index[c] for c in text if c in index][:length]
    out[row, : len(ids)] = ids
  return out


def to_text(ids, chars: str) -> str:
  return "".join(chars[i - 1] for i in ids if 0 < i <= len(chars))
