"""Tests for bigmodel_jax.data: corpora, tokenizers and the LM grain pipeline."""

import logging
import os
import zlib

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from bigmodel_jax.data import corpora, files, lm_pipeline, tokenizers
from bigmodel_jax.errors import RunError, UsageError
from tests.helpers import prepared_tfds_metadata

tfds.disable_progress_bar()

CODE = (
    "class Foo(Bar):\n"
    '    """Docstring with ünïcödé, 日本語 and an emoji 🐍."""\n'
    "\n"
    "    def method(self, x):\n"
    "        if x:\n"
    "\t\treturn  {'a': [1, 2,   3]}  # two spaces\n"
    "        return None\n"
    "\n\n\n"
    "  trailing   spaces   \n"
    "no newline at end"
)


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)


def _code_corpus(num_docs=60):
  """Deterministic code-like documents with indentation and blank lines."""
  rng = np.random.default_rng(0)
  names = ["alpha", "beta", "gamma", "delta", "value", "items", "result", "count"]
  docs = []
  for d in range(num_docs):
    lines = [f"def func_{d}({rng.choice(names)}, {rng.choice(names)}):"]
    for _ in range(rng.integers(3, 12)):
      depth = int(rng.integers(1, 4))
      a, b = rng.choice(names, 2)
      lines.append("    " * depth + f"{a} = {b} + {int(rng.integers(100))}  # note")
      if rng.random() < 0.3:
        lines.append("")
    lines.append("    return result\n\n")
    docs.append("\n".join(lines))
  return docs


# ---------------------------------------------------------------------------
# Local corpora
# ---------------------------------------------------------------------------


def test_pystdlib_file_rule_skips_tests_and_site_packages(tmp_path):
  for rel in [
      "a.py",
      "pkg/b.py",
      "unittest/case.py",
      "doctest.py",
      "readme.txt",
      "test/x.py",
      "tests/y.py",
      "idlelib/idle_test/z.py",
      "lib2to3/tests/data/w.py",
      "test_foo.py",
      "pkg/foo_test.py",
      "tkinter/test/test_widgets.py",
      "site-packages/p.py",
      "dist-packages/q.py",
      "__pycache__/a.py",
  ]:
    _write(str(tmp_path / rel), "x = 1\n")
  root, paths = corpora._pystdlib_files(str(tmp_path))
  assert root == str(tmp_path)
  assert paths == ["a.py", "doctest.py", "pkg/b.py", "unittest/case.py"]


def test_pystdlib_builds_in_sorted_order_with_hash_split_and_is_reused(tmp_path, monkeypatch):
  splits = corpora.load_text_splits("pystdlib", data_dir=str(tmp_path))
  root, paths = corpora._pystdlib_files()
  # Copies are kept once (3.11: concurrent/__init__.py and xmlrpc/__init__.py are the same bytes).
  paths, _ = files.drop_repeated_contents(paths, root)
  expected = {
      split: [p for p in split_paths if os.path.getsize(os.path.join(root, p))]
      for split, split_paths in corpora._assign_splits(paths, 5).items()
  }
  assert len(splits["train"]) == len(expected["train"]) > 500
  assert len(splits["validation"]) == len(expected["validation"]) > 10
  for split in ("train", "validation"):
    for i in (0, -1):
      with open(os.path.join(root, expected[split][i]), encoding="utf-8") as f:
        assert splits[split][i] == f.read()
  assert all(zlib.crc32(p.encode()) % 100 < 5 for p in expected["validation"])
  total = sum(len(t) for t in splits["train"]) + sum(len(t) for t in splits["validation"])
  assert total > 5_000_000  # the real standard library, not a stub

  # Unchanged corpus: read back without building again.
  def fail(*args, **kwargs):
    raise AssertionError("rebuilt an unchanged corpus")

  monkeypatch.setattr(corpora.PyStdlib, "download_and_prepare", fail)
  again = corpora.load_text_splits("pystdlib", data_dir=str(tmp_path))
  assert again["validation"][3] == splits["validation"][3]


def test_text_files_split_by_file_cover_the_corpus_and_rebuild_on_change(tmp_path):
  files = {f"src/d{i // 10}/f{i}.txt": f"document {i}\nline two\n" for i in range(40)}
  for rel, text in files.items():
    _write(str(tmp_path / rel), text)
  data_dir = str(tmp_path / "tfds")
  source = f"text_files:{tmp_path}/src/**/*.txt"
  splits = corpora.load_text_splits(source, data_dir=data_dir, val_percent=20)
  train, val = list(splits["train"]), list(splits["validation"])
  assert sorted(train + val) == sorted(files.values())
  assert val and train
  # The split follows the hash of the path relative to the glob's root.
  expected_val = sorted(
      t for rel, t in files.items() if zlib.crc32(rel[len("src/") :].encode()) % 100 < 20
  )
  assert sorted(val) == expected_val

  _write(str(tmp_path / "src/d0/f0.txt"), "changed text\n")
  changed = corpora.load_text_splits(source, data_dir=data_dir, val_percent=20)
  texts = list(changed["train"]) + list(changed["validation"])
  assert "changed text\n" in texts and "document 0\nline two\n" not in texts
  assert len(os.listdir(os.path.join(data_dir, "text_files"))) == 2


def test_text_files_single_file_is_split_at_a_line(tmp_path):
  text = "".join(f"line {i}\n" for i in range(100))
  _write(str(tmp_path / "one.txt"), text)
  splits = corpora.load_text_splits(
      f"text_files:{tmp_path}/one.txt", data_dir=str(tmp_path / "tfds")
  )
  train, val = splits["train"][0], splits["validation"][0]
  assert train + val == text
  assert val.startswith("line 95\n")


def test_text_files_few_files_still_get_a_validation_split(tmp_path):
  for i in range(3):
    _write(str(tmp_path / f"f{i}.txt"), f"text {i}\n")
  splits = corpora.load_text_splits(f"text_files:{tmp_path}/*.txt", data_dir=str(tmp_path / "tfds"))
  assert len(splits["validation"]) >= 1 and len(splits["train"]) >= 1
  assert len(splits["validation"]) + len(splits["train"]) == 3


def test_first_build_of_a_local_corpus_says_building_not_downloading(tmp_path, capsys, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  for i in range(3):
    _write(str(tmp_path / f"src/f{i}.txt"), f"text {i}\n")
  source = f"text_files:{tmp_path}/src/*.txt"
  corpora.load_text_splits(source, data_dir=str(tmp_path / "tfds"))
  printed = "".join(capsys.readouterr())
  # TFDS's own lines for a download, and for a cache folder that merely does not exist yet.
  for wrong in ("Downloading and preparing", "downloaded and prepared", "Unknown size"):
    assert wrong not in printed and wrong not in caplog.text
  assert "has no dataset_info.json" not in caplog.text
  assert f"{source}: building the local corpus cache from 3 files" in caplog.text

  caplog.clear()
  corpora.load_text_splits(source, data_dir=str(tmp_path / "tfds"))
  assert f"{source}: reusing" in caplog.text and "building" not in caplog.text


@pytest.mark.parametrize(
    "source, files, match",
    [
        (
            "wikipedia",
            {},
            r"unknown data source 'wikipedia'; valid: pystdlib, text_files:<glob>, tfds:<name>",
        ),
        ("text_files:{d}/*.md", {"a.txt": "x"}, r"\*\.md matches no files"),
        (
            "text_files:{d}/*.txt",
            {"a.txt": "fine\n", "b.txt": b"caf\xe9\n"},
            r"b\.txt is not UTF-8 .*the text must be UTF-8",
        ),
        ("text_files:{d}/*.txt", {"a.txt": "", "b.txt": ""}, r"all 2 matched files are empty"),
    ],
)
def test_local_source_errors_are_one_line(tmp_path, source, files, match):
  for rel, data in files.items():
    _write(str(tmp_path / rel), data)
  with pytest.raises(UsageError, match=match) as e:
    corpora.load_text_splits(source.format(d=tmp_path), data_dir=str(tmp_path / "tfds"))
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------
# TFDS catalog datasets, offline under tfds.testing.mock_data
# ---------------------------------------------------------------------------


@pytest.fixture
def mock_tfds(tmp_path):
  data_dir = str(tmp_path / "tfds_meta")
  prepared_tfds_metadata(data_dir, "tiny_shakespeare", {"train": 1, "validation": 1, "test": 1})
  prepared_tfds_metadata(data_dir, "lm1b", {"train": 30, "test": 1})
  prepared_tfds_metadata(data_dir, "ag_news_subset", {"train": 10, "test": 1})
  with tfds.testing.mock_data(
      num_examples=7, data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES
  ):
    yield


@pytest.mark.parametrize("name, val_split", [("tiny_shakespeare", "validation"), ("lm1b", "test")])
def test_tfds_text_datasets_pick_their_validation_split(mock_tfds, monkeypatch, name, val_split):
  del mock_tfds
  asked = []
  original = tfds.core.DatasetBuilder.as_data_source
  monkeypatch.setattr(
      tfds.core.DatasetBuilder,
      "as_data_source",
      lambda self, split, **kw: asked.append(split) or original(self, split, **kw),
  )
  splits = corpora.load_text_splits(f"tfds:{name}")
  assert asked == ["train", val_split]
  assert len(splits["train"]) == 7
  docs = list(splits["validation"])
  assert len(docs) == 7 and all(isinstance(d, str) and d for d in docs)
  assert docs[2] == splits["validation"][2]


def test_tfds_without_validation_split_carves_it_from_train(tmp_path):
  data_dir = str(tmp_path / "meta")
  prepared_tfds_metadata(data_dir, "tiny_shakespeare", {"train": 100})
  with tfds.testing.mock_data(
      num_examples=5, data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES
  ):
    builder = tfds.builder("tiny_shakespeare")
    assert list(builder.info.splits) == ["train"]
    with pytest.MonkeyPatch.context() as mp:
      asked = []
      original = tfds.core.DatasetBuilder.as_data_source
      mp.setattr(
          tfds.core.DatasetBuilder,
          "as_data_source",
          lambda self, split, **kw: asked.append(split) or original(self, split, **kw),
      )
      corpora.load_text_splits("tfds:tiny_shakespeare", val_percent=10)
  assert asked == ["train[:90%]", "train[90%:]"]


def test_tfds_text_key_is_required_when_ambiguous(mock_tfds):
  del mock_tfds
  with pytest.raises(
      UsageError,
      match=r"2 text features; set data.text_key .*"
      r"description \(Text\), label \(ClassLabel\), title \(Text\)",
  ):
    corpora.load_text_splits("tfds:ag_news_subset")
  with pytest.raises(UsageError, match=r"data.text_key='body' is not a text feature"):
    corpora.load_text_splits("tfds:ag_news_subset", text_key="body")
  splits = corpora.load_text_splits("tfds:ag_news_subset", text_key="title")
  assert isinstance(splits["validation"][0], str)


def test_tfds_unknown_or_unprepared_dataset_errors(tmp_path):
  with pytest.raises(
      UsageError,
      match=r"unknown tfds dataset 'tiny_shakespear'; did you mean tfds:tiny_shakespeare\?",
  ):
    corpora.load_text_splits("tfds:tiny_shakespear", data_dir=str(tmp_path))
  with pytest.raises(
      UsageError,
      match=(
          rf"tfds:lm1b is not prepared in {tmp_path}/lm1b/.* cannot be downloaded "
          r"offline; .*tfds build lm1b.*--config.data.tfds_data_dir"
      ),
  ) as e:
    corpora.load_text_splits("tfds:lm1b", data_dir=str(tmp_path))
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_any_text(tmp_path):
  tok = tokenizers.build_tokenizer("byte", [], vocab_size=0, directory=str(tmp_path))
  ids = tok.encode(CODE)
  assert ids.dtype == np.int32 and ids.max() < 256
  assert len(ids) == len(CODE.encode("utf-8")) > len(CODE)  # multi-byte chars
  assert tok.decode(ids) == CODE
  assert tok.decode(np.concatenate([ids[:3], [300, -1]])) == CODE[:3]
  assert tok.decode(ids[-1:].tolist() + [0xE6]) == "d\ufffd"  # cut UTF-8
  assert isinstance(tokenizers.load_tokenizer(str(tmp_path)), tokenizers.ByteTokenizer)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_round_trips_code_exactly_and_saves(tmp_path, model_type):
  docs = _code_corpus() + [CODE]
  tok = tokenizers.build_tokenizer(
      "sentencepiece", docs, vocab_size=400, model_type=model_type, directory=str(tmp_path)
  )
  assert tok.vocab_size == 400
  for text in [CODE, docs[0], "    \n\n\t  x\n", ""]:
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == text
  ids = tok.encode(docs[1])
  assert len(ids) < len(docs[1]) / 2  # it learned pieces, not just bytes

  loaded = tokenizers.load_tokenizer(str(tmp_path))
  np.testing.assert_array_equal(loaded.encode(CODE), tok.encode(CODE))
  assert [x.tolist() for x in loaded.encode_many(docs[:3])] == [
      tok.encode(d).tolist() for d in docs[:3]
  ]


def test_build_tokenizer_reuses_directory_and_refuses_mismatch(tmp_path, monkeypatch):
  docs = _code_corpus(20)
  first = tokenizers.build_tokenizer(
      "sentencepiece", docs, vocab_size=300, model_type="bpe", directory=str(tmp_path)
  )

  def fail(*args, **kwargs):
    raise AssertionError("retrained although the directory had a tokenizer")

  monkeypatch.setattr(tokenizers.SentencePieceTokenizer, "train", fail)
  again = tokenizers.build_tokenizer(
      "sentencepiece", ["other"], vocab_size=300, model_type="bpe", directory=str(tmp_path)
  )
  assert again.model_proto == first.model_proto
  with pytest.raises(
      UsageError,
      match=r"holds a sentencepiece \(vocab_size=300, "
      r"model_type=bpe\) tokenizer but the config asks for "
      r"sentencepiece \(vocab_size=512",
  ):
    tokenizers.build_tokenizer(
        "sentencepiece", docs, vocab_size=512, model_type="bpe", directory=str(tmp_path)
    )


@pytest.mark.parametrize(
    "name, vocab_size, match",
    [
        (
            "wordpiece",
            1000,
            r"unknown tokenizer 'wordpiece' \(data.tokenizer\); valid: byte, sentencepiece",
        ),
        ("sentencepiece", 100, r"data.vocab_size=100 is too small .* at least 260"),
        (
            "sentencepiece",
            262,
            r"data.vocab_size=262 is too small for this corpus: "
            r"sentencepiece needs at least \d+",
        ),
    ],
)
def test_tokenizer_config_errors(name, vocab_size, match):
  with pytest.raises(UsageError, match=match):
    tokenizers.build_tokenizer(
        name, [CODE] + _code_corpus(5), vocab_size=vocab_size, model_type="bpe"
    )


# ---------------------------------------------------------------------------
# LM pipeline
# ---------------------------------------------------------------------------


def _position_tokens(n):
  """Tokens whose value is their position, so a window reveals its start."""
  return np.arange(n, dtype=np.uint16)


def _starts(batch):
  return batch["inputs"][:, 0].tolist()


def test_tokenize_corpus_concatenates_documents():
  docs = ["héllo\n", "", "wörld"]
  byte = lm_pipeline.tokenize_corpus(docs, tokenizers.ByteTokenizer())
  assert byte.dtype == np.uint16
  assert (
      byte.tobytes() == np.frombuffer("".join(docs).encode(), np.uint8).astype(np.uint16).tobytes()
  )
  sp = tokenizers.build_tokenizer(
      "sentencepiece", _code_corpus(20), vocab_size=300, model_type="bpe"
  )
  docs = _code_corpus(3)
  ids = lm_pipeline.tokenize_corpus(docs, sp)
  assert ids.dtype == np.uint16
  np.testing.assert_array_equal(ids, np.concatenate([sp.encode(d) for d in docs]))


def test_train_batches_are_shifted_windows_reshuffled_each_epoch():
  tokens = _position_tokens(28)  # seq_len 8 -> 20 windows -> 5 batches/epoch
  ds = lm_pipeline.train_dataset(tokens, seq_len=8, batch_size=4, seed=1)
  it = iter(ds)
  epochs = [[s for _ in range(5) for s in _starts(next(it))] for _ in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(20))  # every start offset once
  assert epochs[0] != epochs[1] != epochs[2]
  batch = ds[0]
  assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
  assert batch["inputs"].shape == batch["targets"].shape == (4, 8)
  starts = batch["inputs"][:, :1]
  np.testing.assert_array_equal(batch["inputs"], starts + np.arange(8))
  np.testing.assert_array_equal(batch["targets"], starts + np.arange(1, 9))


def test_train_stream_depends_only_on_seed():
  tokens = _position_tokens(1000)

  def first(seed, n=6):
    it = iter(lm_pipeline.train_dataset(tokens, seq_len=16, batch_size=8, seed=seed))
    return [_starts(next(it)) for _ in range(n)]

  assert first(3) == first(3)
  assert first(3) != first(4)


def test_process_shards_are_disjoint_and_interleave_the_global_batch():
  tokens = _position_tokens(500)
  kw = dict(seq_len=10, seed=7)
  whole = lm_pipeline.train_dataset(tokens, batch_size=8, **kw)
  shards = [
      lm_pipeline.train_dataset(tokens, batch_size=4, process_index=p, process_count=2, **kw)
      for p in range(2)
  ]
  for step in [0, 1, 30, 61, 62, 100]:  # 490 windows: epoch 2 starts in step 61
    global_batch = whole[step]["inputs"]
    for p in range(2):
      np.testing.assert_array_equal(shards[p][step]["inputs"], global_batch[p::2])
  first_epoch = [set(), set()]
  for step in range(490 // 8):
    for p in range(2):
      first_epoch[p].update(_starts(shards[p][step]))
  assert not first_epoch[0] & first_epoch[1]  # disjoint
  assert len(first_epoch[0]) == len(first_epoch[1]) == 490 // 8 * 4


def test_iterator_state_resumes_exactly():
  tokens = _position_tokens(300)
  ds = lm_pipeline.train_dataset(tokens, seq_len=12, batch_size=4, seed=0)
  it = iter(ds)
  reference = [next(it) for _ in range(10)]
  it = iter(ds)
  for _ in range(4):
    next(it)
  state = it.get_state()
  resumed = iter(ds)
  resumed.set_state(state)
  for k in range(4, 10):
    np.testing.assert_array_equal(next(resumed)["inputs"], reference[k]["inputs"])


def test_iterator_checkpoints_through_orbax(tmp_path):
  tokens = _position_tokens(300)
  ds = lm_pipeline.train_dataset(tokens, seq_len=12, batch_size=4, seed=0)
  it = iter(ds)
  for _ in range(5):
    next(it)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  after_save = [next(it)["inputs"] for _ in range(3)]
  restored = iter(ds)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    assert mngr.latest_step() == 5
    mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  for want in after_save:
    np.testing.assert_array_equal(next(restored)["inputs"], want)


def test_eval_batches_tile_the_split_deterministically():
  tokens = _position_tokens(83)  # 10 windows of 8 (needs 81), 2 batches of 4
  batches = lm_pipeline.eval_batches(tokens, seq_len=8, batch_size=4, num_batches=0)
  assert len(batches) == 2
  inputs = np.concatenate([b["inputs"] for b in batches]).reshape(-1)
  np.testing.assert_array_equal(inputs, np.arange(64))  # no gaps, no overlap
  targets = np.concatenate([b["targets"] for b in batches]).reshape(-1)
  np.testing.assert_array_equal(targets, np.arange(1, 65))
  again = lm_pipeline.eval_batches(tokens, seq_len=8, batch_size=4, num_batches=1)
  assert len(again) == 1
  np.testing.assert_array_equal(again[0]["inputs"], batches[0]["inputs"])


def test_short_splits_are_usage_errors():
  with pytest.raises(
      UsageError,
      match=r"the validation split has 8 tokens; model.block_size=8 needs at least 9",
  ):
    lm_pipeline.eval_batches(_position_tokens(8), seq_len=8, batch_size=2)
  with pytest.raises(
      UsageError, match=r"the train split has 5 tokens; model.block_size=8 needs at least 9"
  ):
    lm_pipeline.train_dataset(_position_tokens(5), seq_len=8, batch_size=2, seed=0)
  with pytest.raises(
      UsageError, match=r"fewer than one eval batch of 4 x model.block_size=8 needs \(33\)"
  ):
    lm_pipeline.eval_batches(_position_tokens(20), seq_len=8, batch_size=4)


def test_sentencepiece_learns_from_a_corpus_of_only_very_long_lines():
  # One 40,000-character line per document (minified code, a book per line): sentencepiece skips
  # any "sentence" over its limit, so unsplit this would train on nothing.
  words = ["alpha", "beta", "gamma", "delta", "epsilon"]
  docs = [" ".join(words[(i * 7 + j) % 5] for j in range(6000)) for i in range(3)]
  assert all(len(d) > 1 << 15 and "\n" not in d for d in docs)
  tok = tokenizers.build_tokenizer("sentencepiece", docs, vocab_size=300)
  assert tok.decode(tok.encode(docs[0][:500])) == docs[0][:500]
  assert len(tok.encode("alpha beta gamma")) < len("alpha beta gamma") // 2  # learned the words


@pytest.mark.parametrize("damage", ["records", "dataset_info"])
def test_a_damaged_corpus_cache_names_the_folder_to_delete(tmp_path, damage):
  (tmp_path / "text").mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):  # incompressible text: the stored records are as long as the documents
    (tmp_path / "text" / f"{i}.txt").write_text("".join(rng.choice(list("abcdefgh \n"), 20000)))
  source, data_dir = f"text_files:{tmp_path}/text/*.txt", str(tmp_path / "cache")
  splits = corpora.load_text_splits(source, data_dir=data_dir, val_percent=34)
  assert len("".join(splits["train"])) > 0
  (folder,) = {os.path.dirname(p) for p in _files_under(data_dir) if "array_record" in p}
  if damage == "records":  # bytes flipped inside the stored documents
    path = next(p for p in _files_under(folder) if "train.array_record" in p)
    data = bytearray(open(path, "rb").read())
    for i in range(200, 3000):  # inside the first chunk (files are padded to 128 KiB)
      data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))
  else:
    with open(os.path.join(folder, "dataset_info.json"), "w") as f:
      f.write("{garbage")
  with pytest.raises(RunError, match=r"are damaged|cache in .* is damaged") as e:
    splits = corpora.load_text_splits(source, data_dir=data_dir, val_percent=34)
    "".join(splits["train"])
  assert "delete that folder and run again to rebuild it" in str(e.value)
  assert "\n" not in str(e.value)


def _files_under(directory):
  return [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
