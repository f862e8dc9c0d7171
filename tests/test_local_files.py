"""Local corpora read each file once: symlinks, symlink loops, `..` and copies under other names
neither hang the glob, nor bring a file in twice, nor put one text in both train and validation."""

import collections
import contextlib
import glob
import logging
import os
import signal
import zlib

import pytest
import tensorflow_datasets as tfds

from bigmodel_jax.data import corpora, files

tfds.disable_progress_bar()


@contextlib.contextmanager
def deadline(seconds: float):
  """Fails the test instead of hanging: glob.glob spent its time in Python, so an alarm stops it."""

  def expired(signum, frame):
    raise TimeoutError(f"took longer than {seconds} s")

  previous = signal.signal(signal.SIGALRM, expired)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def tree(tmp_path):
  """tmp/top.txt, tmp/other/x.txt and tmp/src/{a0..a9.txt, sub/b0..b9.txt}, each text distinct,
  plus src/link.txt -> a0.txt, src/outside.txt -> ../other/x.txt, src/loop -> src (absolute) and
  src/sub/up -> .. (relative): two symlink loops; and src/self.txt -> itself."""
  src = tmp_path / "src"
  (src / "sub").mkdir(parents=True)
  (tmp_path / "other").mkdir()
  texts = {tmp_path / "top.txt": "top\n", tmp_path / "other" / "x.txt": "outside x\n"}
  texts.update({src / f"a{i}.txt": f"text a{i}\n" for i in range(10)})
  texts.update({src / "sub" / f"b{i}.txt": f"text b{i}\n" for i in range(10)})
  for path, text in texts.items():
    path.write_text(text)
  os.symlink(src / "a0.txt", src / "link.txt")
  os.symlink("../other/x.txt", src / "outside.txt")
  os.symlink(src, src / "loop")
  os.symlink("..", src / "sub" / "up")
  os.symlink("self.txt", src / "self.txt")  # a link to itself: matched by *.txt, never a file
  return tmp_path


def _real(tmp, names):
  return sorted(os.path.realpath(tmp / n) for n in names)


A = [f"src/a{i}.txt" for i in range(10)]
B = [f"src/sub/b{i}.txt" for i in range(10)]


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("src/**/*.txt", A + B + ["other/x.txt"]),
        ("src/**/../*.txt", A + ["top.txt", "other/x.txt"]),  # parents of src and of its folders
        ("src/**/../**/*.txt", A + B + ["top.txt", "other/x.txt"]),
        ("src/loop/loop/../**/*.txt", A + B + ["top.txt", "other/x.txt"]),  # loop/.. is tmp
        ("src/loop/sub/up/link.txt", ["src/a0.txt"]),
        ("src/*/*.txt", A + B + ["other/x.txt"]),  # src/loop/*.txt are src's own files
    ],
)
def test_glob_through_symlink_loops_finds_each_real_file_once_and_quickly(tree, pattern, expected):
  with deadline(20):
    found, _, loops = files.match(f"{tree}/{pattern}")
  assert found == _real(tree, expected)
  assert len(found) == len(set(found))
  assert loops > 0 or "**" not in pattern


def test_glob_glob_reads_a_file_through_a_loop_41_times_and_match_once(tmp_path):
  # The fault that was reported, with one loop (with two, as in `tree`, glob.glob does not end).
  (tmp_path / "a.txt").write_text("a")
  os.symlink(tmp_path, tmp_path / "loop")
  assert len(glob.glob(f"{tmp_path}/**/a.txt", recursive=True)) == 41
  assert files.match(f"{tmp_path}/**/a.txt") == ([os.path.realpath(tmp_path / "a.txt")], 0, 1)


def test_glob_keeps_globs_rules_for_hidden_names_and_plain_paths(tmp_path):
  (tmp_path / ".hidden").mkdir()
  for rel in ("a.txt", ".dot.txt", ".hidden/h.txt", "d/e/f.txt"):
    os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
    (tmp_path / rel).write_text(rel)
  for pattern in ("**/*.txt", "*", ".*", "d/*/f.txt", "a.txt", "nope.txt", "**"):
    want = sorted(
        {
            os.path.realpath(p)
            for p in glob.glob(f"{tmp_path}/{pattern}", recursive=True)
            if os.path.isfile(p)
        }
    )
    assert files.match(f"{tmp_path}/{pattern}")[0] == want, pattern


def _load_counting_reads(monkeypatch, source, data_dir, val_percent=30):
  reads = collections.Counter()
  original = corpora.TextFiles._read
  monkeypatch.setattr(
      corpora.TextFiles, "_read", lambda self, path: reads.update([path]) or original(self, path)
  )
  with deadline(60):
    splits = corpora.load_text_splits(source, data_dir=data_dir, val_percent=val_percent)
  return {k: list(v) for k, v in splits.items()}, reads


@pytest.mark.parametrize("pattern", ["src/**/*.txt", "src/**/../**/*.txt"])
def test_a_corpus_through_loops_reads_each_file_once_and_splits_by_real_file(
    tree, pattern, monkeypatch, caplog
):
  caplog.set_level(logging.WARNING, logger="absl")
  splits, reads = _load_counting_reads(
      monkeypatch, f"text_files:{tree}/{pattern}", str(tree / "tfds")
  )
  train, val = splits["train"], splits["validation"]
  expected = files.match(f"{tree}/{pattern}")[0]
  assert sorted(train + val) == sorted(open(p).read() for p in expected)
  assert val and train and not set(train) & set(val)
  assert set(reads.values()) == {1} and len(reads) == len(expected)
  assert "read each file once: dropped" in caplog.text and "paths to a file already matched" in (
      caplog.text
  )


def _names_on_both_sides(val_percent):
  """Two file names whose path hashes put one in validation and the other in train."""
  names = [f"copy{k}.txt" for k in range(200)]
  val = next(n for n in names if zlib.crc32(n.encode()) % 100 < val_percent)
  train = next(n for n in names if zlib.crc32(n.encode()) % 100 >= val_percent)
  return val, train


def test_the_same_text_under_two_names_is_kept_once_so_validation_is_unseen(
    tmp_path, monkeypatch, caplog
):
  caplog.set_level(logging.WARNING, logger="absl")
  src = tmp_path / "src"
  src.mkdir()
  for i in range(8):
    (src / f"f{i}.txt").write_text(f"own text {i}\n" * (i + 1))
  copy_in_val, copy_in_train = _names_on_both_sides(30)
  for name in (copy_in_val, copy_in_train):
    (src / name).write_text("the same chapter, copied\n" * 3)
  splits, reads = _load_counting_reads(
      monkeypatch, f"text_files:{src}/*.txt", str(tmp_path / "tfds")
  )
  everything = splits["train"] + splits["validation"]
  assert everything.count("the same chapter, copied\n" * 3) == 1
  assert not set(splits["train"]) & set(splits["validation"])
  assert len(everything) == 9 and set(reads.values()) == {1}
  assert "dropped 1 files whose bytes repeat an earlier file's" in caplog.text


def test_only_files_of_a_shared_size_are_hashed(tmp_path, monkeypatch):
  for name, text in {"a": "1", "b": "22", "c": "22", "d": "33", "e": "", "f": ""}.items():
    (tmp_path / name).write_text(text)
  hashed = []
  original = files._digest
  monkeypatch.setattr(files, "_digest", lambda path: hashed.append(path) or original(path))
  kept, dropped = files.drop_repeated_contents(list("abcdef"), str(tmp_path))
  assert kept == ["a", "b", "d", "e", "f"] and dropped == 1  # empty files hold no text to repeat
  assert sorted(os.path.basename(p) for p in hashed) == ["b", "c", "d"]


def test_two_copies_of_one_text_are_split_by_text_like_a_single_file(tmp_path):
  text = "".join(f"line {i}\n" for i in range(100))
  for name in ("one.txt", "two.txt"):
    (tmp_path / name).write_text(text)
  splits = corpora.load_text_splits(f"text_files:{tmp_path}/*.txt", data_dir=str(tmp_path / "tfds"))
  assert splits["train"][0] + splits["validation"][0] == text
  assert len(splits["train"]) == len(splits["validation"]) == 1
