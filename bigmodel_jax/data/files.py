"""Choosing local files so that each one is read once: a loop-safe glob and two kinds of dedupe.

`match(pattern)` matches as `glob.glob(pattern, recursive=True)` does (`**` is zero or more
folders; a name starting with "." only matches a pattern part starting with "."; symlinks to
folders are followed), but it enters each real folder (os.path.realpath) at most once per pattern
part. glob.glob does not: through a symlink to its own ancestor it went ~40 levels deep (one file
matched 41 times), and with `**` on both sides of `..` the matches multiply per level (measured:
5,166 paths for 3 files); with two loops in one tree it did not finish in minutes, as each level
doubles the routes. Here the work is bounded by (real folders) x (pattern parts), and the result
is each matching regular file's real path, once.

`drop_repeated_contents(paths)` keeps the first of files with the same bytes (two copies of a text
under different names would otherwise land in train and validation). Only files whose size
another file shares are hashed, so a corpus of distinct sizes costs no extra reads.
"""

import collections
from collections.abc import Sequence
import fnmatch
import glob
import hashlib
import os
from typing import NamedTuple
import zlib


class Matches(NamedTuple):
  paths: list[str]  # sorted real paths of the matching regular files, each once
  file_aliases: int  # other matched paths to those files (symlinks, `..` detours), dropped
  folder_aliases: int  # routes to a real folder already walked for that part (loops), not taken


def match(pattern: str) -> Matches:
  """The regular files matching `pattern` (see module doc), walking no real folder twice for the
  same pattern part."""
  parts = [p for p in pattern.split(os.sep) if p]
  start = os.sep if os.path.isabs(pattern) else ""
  matched, seen, folder_aliases = [], set(), 0
  stack = [(start, 0)]
  while stack:
    path, i = stack.pop()
    if i == len(parts):
      matched.append(path)
      continue
    key = (os.path.realpath(path or os.curdir), i)
    if key in seen:  # this real folder was (or is being) walked for this part already
      folder_aliases += 1
      continue
    seen.add(key)
    part = parts[i]
    if part == "**":
      stack.append((path, i + 1))  # zero folders
      for name, is_dir in _entries(path, hidden=False):
        child = os.path.join(path, name)
        if is_dir:
          stack.append((child, i))
        elif i + 1 == len(parts):  # a trailing ** also matches the files in each folder
          matched.append(child)
    elif glob.has_magic(part):
      names = [name for name, _ in _entries(path, hidden=part.startswith("."))]
      for name in fnmatch.filter(names, part):
        stack.append((os.path.join(path, name), i + 1))
    else:  # a plain name, ".." or "."
      child = os.path.join(path, part)
      if i + 1 == len(parts) or os.path.isdir(child):
        stack.append((child, i + 1))
  real = [os.path.realpath(p) for p in matched if os.path.isfile(p)]
  unique = sorted(set(real))
  return Matches(unique, len(real) - len(unique), folder_aliases)


def _entries(folder: str, hidden: bool) -> list[tuple[str, bool]]:
  """[(name, is a folder or a symlink to one)]; scandir's type info spares a stat per file."""
  out = []
  try:
    with os.scandir(folder or os.curdir) as it:
      for entry in it:
        if hidden or not entry.name.startswith("."):
          try:
            out.append((entry.name, entry.is_dir()))
          except OSError:  # e.g. a symlink loop of its own (ELOOP): not a folder
            out.append((entry.name, False))
  except OSError:  # unreadable or not a folder: no matches there, as glob.glob
    return []
  return out


def drop_repeated_contents(paths: Sequence[str], root: str = "") -> tuple[list[str], int]:
  """(paths without any file whose bytes equal an earlier one's, how many were dropped).

  Paths are relative to `root` (or absolute). Empty files are kept (they hold no text).
  """
  by_size = collections.defaultdict(list)
  for path in paths:
    by_size[os.path.getsize(os.path.join(root, path))].append(path)
  repeated = set()
  for size, group in by_size.items():
    if size == 0 or len(group) < 2:
      continue
    first = {}
    for path in group:
      digest = _digest(os.path.join(root, path))
      if digest in first:
        repeated.add(path)
      else:
        first[digest] = path
  return [p for p in paths if p not in repeated], len(repeated)


def _digest(path: str) -> bytes:
  h = hashlib.blake2b()
  with open(path, "rb") as f:
    while block := f.read(1 << 20):
      h.update(block)
  return h.digest()


def held_out(keys: Sequence[str], val_percent: int) -> list[bool]:
  """Which items go to validation: those whose key has crc32(key) % 100 < val_percent, so the split
  is stable as items come and go and equal keys always land together. With two or more distinct
  keys neither side is left empty: the training key with the smallest (hash, key) moves to
  validation, or the validation key with the largest to training. The one split rule of the local
  corpora, record sets and image folders."""
  unique = sorted(set(keys))
  score = {k: (zlib.crc32(k.encode("utf-8")) % 100, k) for k in unique}
  val = {k for k in unique if score[k][0] < val_percent}
  if len(unique) > 1 and not val:
    val = {min(unique, key=score.get)}
  elif len(unique) > 1 and len(val) == len(unique):
    val.discard(max(unique, key=score.get))
  return [k in val for k in keys]
