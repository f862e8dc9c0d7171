"""Utterances in memory, their cache, and your own recordings (`data.source=audio_folder:<dir>`).

An utterance set is a dict of equally long arrays, one row per utterance:

  audio         int16 (N, S)  samples at the run's rate, zero-padded to the longest S
  audio_length  int32 (N,)    real samples per row
  text          str (N,)      the transcript
  speaker       str (N,)      who speaks ("" when unknown), for per-speaker scores

audio_folder:<dir> holds WAV/FLAC files (any rate, mono or not; read with soundfile, mixed to
mono, resampled to data.sample_rate with scipy's polyphase filter) and a transcripts CSV
(data.transcripts, columns path,text and optionally speaker; paths relative to <dir>). A hash
of each path puts data.val_percent of them in the validation split. The decoded arrays are
cached under the data cache, keyed by the CSV and every file's size and mtime, so a changed
folder is read again.
"""

import csv
import hashlib
import json
import math
import os

from absl import logging
import numpy as np
from scipy import signal

from bigmodel_jax.errors import RunError, UsageError

AUDIO_EXTENSIONS = (".wav", ".flac")
COLUMNS = ("path", "text")


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
  """float (S,) at `rate` -> float32 at `target` (polyphase, anti-aliased)."""
  if rate == target:
    return wave.astype(np.float32)
  g = math.gcd(rate, target)
  return signal.resample_poly(wave, target // g, rate // g).astype(np.float32)


def stack(rows: list[tuple[np.ndarray, str, str]], max_samples: int) -> dict[str, np.ndarray]:
  """[(int16 samples, text, speaker)] -> an utterance set padded to the longest row."""
  width = max(1, max(len(r[0]) for r in rows)) if rows else 1
  audio = np.zeros((len(rows), min(width, max_samples)), np.int16)
  for i, (wave, _, _) in enumerate(rows):
    audio[i, : len(wave)] = wave[:max_samples]
  return {
      "audio": audio,
      "audio_length": np.array([min(len(r[0]), max_samples) for r in rows], np.int32),
      "text": np.array([r[1] for r in rows], dtype=str),
      "speaker": np.array([r[2] for r in rows], dtype=str),
  }


def read_cache(path: str) -> dict[str, dict[str, np.ndarray]] | None:
  """The splits saved by write_cache, or None (absent, or damaged: then it is rebuilt)."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      splits = {}
      for key in f.files:
        split, name = key.split(".", 1)
        splits.setdefault(split, {})[name] = f[key]
      return splits
  except (OSError, ValueError, EOFError) as e:
    logging.warning("Audio cache %s is damaged (%s); building it again", path, e)
    return None


def write_cache(path: str, splits: dict[str, dict[str, np.ndarray]]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.npz"  # written whole, then renamed: never half a cache
  np.savez(tmp, **{f"{s}.{k}": v for s, arrays in splits.items() for k, v in arrays.items()})
  os.replace(tmp, path)


def read_audio(path: str, rate: int) -> np.ndarray:
  """An audio file -> float32 mono samples at `rate`; an unreadable file is a RunError."""
  import soundfile  # pylint: disable=g-import-not-at-top (libsndfile: only when reading audio)

  try:
    wave, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, OSError) as e:
    raise RunError(f"cannot read audio file {path}: {str(e).splitlines()[0]}") from None
  if len(wave) == 0:
    raise RunError(f"audio file {path} holds no samples")
  return resample(wave.mean(axis=1), file_rate, rate)


def load_folder(
    directory: str,
    *,
    transcripts: str,
    sample_rate: int,
    max_seconds: float,
    val_percent: int,
    cache_dir: str,
) -> dict[str, dict[str, np.ndarray]]:
  """audio_folder:<directory> -> {"train": ..., "validation": ...}, read once and cached."""
  rows = _transcripts(directory, transcripts)
  stamps = [(p, os.path.getsize(p), os.path.getmtime(p)) for p, _, _ in rows]
  key = hashlib.sha256(
      json.dumps(
          [os.path.abspath(directory), rows, stamps, sample_rate, max_seconds, val_percent]
      ).encode()
  ).hexdigest()[:16]
  path = os.path.join(cache_dir, "audio_folder", f"{key}.npz")
  splits = read_cache(path)
  if splits is not None:
    return splits
  max_samples = int(max_seconds * sample_rate)
  parts = {"train": [], "validation": []}
  too_long = 0
  for file, text, speaker in rows:
    wave = read_audio(file, sample_rate)
    if len(wave) > max_samples:
      too_long += 1
      continue
    digest = int(hashlib.md5(os.path.relpath(file, directory).encode()).hexdigest(), 16)
    split = "validation" if digest % 100 < val_percent else "train"
    samples = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
    parts[split].append((samples, text, speaker))
  if too_long:
    logging.warning("Skipped %d recordings longer than data.max_seconds=%s", too_long, max_seconds)
  for split, kept in parts.items():
    if not kept:
      raise UsageError(
          f"audio_folder:{directory} leaves no {split} recordings ({len(rows)} in "
          f"{transcripts}, {too_long} over data.max_seconds={max_seconds}, "
          f"data.val_percent={val_percent}); add recordings or change those settings"
      )
  splits = {split: stack(kept, max_samples) for split, kept in parts.items()}
  write_cache(path, splits)
  return splits


def _transcripts(directory: str, name: str) -> list[tuple[str, str, str]]:
  """The CSV's rows as (audio path, lower-cased text, speaker), every one checked."""
  if not os.path.isdir(directory):
    raise UsageError(f"data.source=audio_folder:{directory}: no such directory")
  audio = [
      f for _, _, files in os.walk(directory) for f in files if f.lower().endswith(AUDIO_EXTENSIONS)
  ]
  if not audio:
    raise UsageError(
        f"audio_folder:{directory} has no audio files ({', '.join(AUDIO_EXTENSIONS)}); "
        "put WAV/FLAC recordings and a transcripts CSV (path,text) there"
    )
  csv_path = os.path.join(directory, name)
  if not os.path.isfile(csv_path):
    raise UsageError(
        f"audio_folder:{directory} has no transcripts file {name} (data.transcripts); "
        "it needs a CSV with columns path,text"
    )
  with open(csv_path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
      raise UsageError(
          f"transcripts CSV {csv_path} lacks column {', '.join(missing)} (it has: "
          f"{', '.join(header) or 'no header'}); it needs columns path,text (optionally speaker)"
      )
    rows = []
    for line, row in enumerate(reader, start=2):
      file = os.path.join(directory, row["path"] or "")
      text = " ".join((row["text"] or "").lower().split())
      if not row["path"] or not os.path.isfile(file):
        raise UsageError(f"{csv_path} line {line}: no audio file {row['path']!r} in {directory}")
      if not text:
        raise UsageError(f"{csv_path} line {line}: empty text for {row['path']}")
      rows.append((file, text, row.get("speaker") or ""))
  if not rows:
    raise UsageError(f"transcripts CSV {csv_path} has no rows")
  return rows
