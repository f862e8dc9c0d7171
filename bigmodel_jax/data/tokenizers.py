"""Tokenizers chosen by name: "byte" (UTF-8 bytes) and "sentencepiece".

Both have `vocab_size`, `encode(text) -> int32 ids`, `encode_many(texts)`,
`decode(ids) -> str` and `save(directory)`; `load_tokenizer(directory)` reads
back what `save` wrote (`tokenizer.json`, plus `spm.model` for sentencepiece).

SentencePiece is trained so that text round-trips exactly through
encode/decode: no normalisation, no dummy prefix, whitespace kept (runs of
spaces become pieces, which suits indented code), newlines kept, and unknown
characters fall back to byte pieces. One exception: SentencePiece writes
spaces as U+2581 ("▁") internally, so that character in the input decodes as a
space.
"""

from collections.abc import Iterator, Sequence
import json
import os
import re
import shutil

import numpy as np
import sentencepiece as spm

from bigmodel_jax import json_files
from bigmodel_jax.errors import UsageError

_META_FILE = "tokenizer.json"
_SPM_FILE = "spm.model"
_SPM_MODEL_TYPES = ("bpe", "unigram")
# 256 byte pieces + <unk> + a few characters; the corpus may need more.
_SPM_MIN_VOCAB = 260


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255."""

  kind = "byte"
  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    """Decodes ids; ids outside 0..255 are skipped, broken UTF-8 becomes U+FFFD."""
    ids = np.asarray(ids).reshape(-1)
    ids = ids[(ids >= 0) & (ids < 256)]
    return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def save(self, directory: str) -> None:
    _write_meta(directory, {"kind": self.kind, "vocab_size": self.vocab_size})

  @classmethod
  def train(cls, texts, *, vocab_size, model_type) -> "ByteTokenizer":
    del texts, vocab_size, model_type  # nothing to learn
    return cls()

  @classmethod
  def load(cls, directory: str, meta: dict) -> "ByteTokenizer":
    del directory, meta
    return cls()

  def matches(self, vocab_size: int, model_type: str) -> bool:
    del vocab_size, model_type  # fixed vocabulary
    return True


class SentencePieceTokenizer:
  """A SentencePiece BPE or unigram model with byte fallback."""

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes, model_type: str):
    self.model_proto = model_proto
    self.model_type = model_type
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.get_piece_size()

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
    ids = self._sp.encode(list(texts), num_threads=os.cpu_count() or 1)
    return [np.asarray(x, np.int32) for x in ids]

  def decode(self, ids) -> str:
    """Decodes ids; ids outside the vocabulary are skipped."""
    ids = np.asarray(ids).reshape(-1)
    ids = ids[(ids >= 0) & (ids < self.vocab_size)]
    return self._sp.decode(ids.tolist())

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, _SPM_FILE), "wb") as f:
      f.write(self.model_proto)
    _write_meta(
        directory, {"kind": self.kind, "vocab_size": self.vocab_size, "model_type": self.model_type}
    )

  @classmethod
  def train(
      cls,
      texts: Sequence[str],
      *,
      vocab_size: int,
      model_type: str,
      max_train_chars: int = 4_000_000,
      seed: int = 0,
  ) -> "SentencePieceTokenizer":
    """Trains on a deterministic sample of about `max_train_chars` of `texts`.

    4 MB keeps training short: on 2 cores BPE takes ~1-2 s (4k-50k pieces),
    unigram ~8 s (4k) to ~17 s (8k).
    """
    if model_type not in _SPM_MODEL_TYPES:
      raise UsageError(
          f"data.spm_model_type={model_type!r} is not a sentencepiece "
          f"model type; valid: {', '.join(_SPM_MODEL_TYPES)}"
      )
    if vocab_size < _SPM_MIN_VOCAB:
      raise UsageError(
          f"data.vocab_size={vocab_size} is too small for sentencepiece with "
          f"byte fallback (256 byte pieces + <unk> + characters); use at least "
          f"{_SPM_MIN_VOCAB}, typically 4096..32000"
      )
    spm.set_random_generator_seed(seed)
    model = _BytesWriter()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=_training_chunks(texts, max_train_chars, seed),
          model_writer=model,
          vocab_size=vocab_size,
          model_type=model_type,
          byte_fallback=True,
          normalization_rule_name="identity",
          remove_extra_whitespaces=False,
          add_dummy_prefix=False,
          allow_whitespace_only_pieces=True,
          character_coverage=0.9995,
          max_sentence_length=1 << 14,
          unk_id=0,
          bos_id=-1,
          eos_id=-1,
          pad_id=-1,
          num_threads=os.cpu_count() or 1,
          minloglevel=2,
      )
    except RuntimeError as e:
      raise UsageError(_spm_error(str(e), vocab_size)) from None
    return cls(model.data, model_type)

  @classmethod
  def load(cls, directory: str, meta: dict) -> "SentencePieceTokenizer":
    with open(os.path.join(directory, _SPM_FILE), "rb") as f:
      return cls(f.read(), meta["model_type"])

  def matches(self, vocab_size: int, model_type: str) -> bool:
    return (self.vocab_size, self.model_type) == (vocab_size, model_type)


_TOKENIZERS = {cls.kind: cls for cls in (ByteTokenizer, SentencePieceTokenizer)}
NAMES = tuple(_TOKENIZERS)  # valid values of config.data.tokenizer
Tokenizer = ByteTokenizer | SentencePieceTokenizer


def build_tokenizer(
    name: str,
    train_texts: Sequence[str],
    *,
    vocab_size: int,
    model_type: str = "bpe",
    directory: str = "",
) -> Tokenizer:
  """Returns the tokenizer `name`, trained on `train_texts` if it learns.

  If `directory` already holds a tokenizer (e.g. a resumed run's), that one is
  loaded instead of training anew, and must match `name`/`vocab_size`/
  `model_type`; otherwise the new one is saved there (unless directory is "").
  The byte tokenizer ignores vocab_size and model_type.
  """
  cls = _TOKENIZERS.get(name)
  if cls is None:
    raise UsageError(f"unknown tokenizer {name!r} (data.tokenizer); valid: {', '.join(NAMES)}")
  if directory and os.path.exists(os.path.join(directory, _META_FILE)):
    tok = load_tokenizer(directory)
    if tok.kind != name or not tok.matches(vocab_size, model_type):
      raise UsageError(
          f"{directory} holds a {_describe(tok)} tokenizer but the config asks "
          f"for {name} (vocab_size={vocab_size}, model_type={model_type}); use "
          "a fresh workdir or the settings it was trained with"
      )
    return tok
  tok = cls.train(train_texts, vocab_size=vocab_size, model_type=model_type)
  if directory:  # written aside and renamed: a stop part-way never leaves half a tokenizer
    partial = directory.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    if os.path.isdir(directory) and not any(e.is_dir() for e in os.scandir(directory)):
      shutil.rmtree(directory)  # files but no metadata: an older, half-written save
    tok.save(partial)
    os.replace(partial, directory)
  return tok


def load_tokenizer(directory: str) -> Tokenizer:
  """Loads a tokenizer that `save(directory)` wrote."""
  path = os.path.join(directory, _META_FILE)
  try:
    meta = json_files.read_json(path, "a saved tokenizer's metadata")
  except FileNotFoundError:
    raise UsageError(f"no tokenizer in {directory} ({_META_FILE} missing)") from None
  if meta.get("kind") == "hf":  # a Hugging Face tokenizer.json saved with the run (interop/)
    from bigmodel_jax.interop.tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top

    return HFTokenizer.load(directory, meta)
  cls = _TOKENIZERS.get(meta.get("kind"))
  if cls is None:
    raise UsageError(f"{path} names tokenizer kind {meta.get('kind')!r}; valid: {', '.join(NAMES)}")
  return cls.load(directory, meta)


def _describe(tok: Tokenizer) -> str:
  model_type = getattr(tok, "model_type", None)
  extra = f", model_type={model_type}" if model_type else ""
  return f"{tok.kind} (vocab_size={tok.vocab_size}{extra})"


def _write_meta(directory: str, meta: dict) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, _META_FILE), "w") as f:
    json.dump(meta, f, indent=2)


class _BytesWriter:
  """The `model_writer` sentencepiece writes the trained model into."""

  def __init__(self):
    self.data = b""

  def write(self, data: bytes) -> None:
    self.data += data


def _training_chunks(
    texts: Sequence[str], max_chars: int, seed: int, chunk_chars: int = 2048
) -> Iterator[str]:
  """Yields pieces of documents (whole lines, newlines kept) in random order.

  SentencePiece reads "sentences"; a whole source file is too long for one, so
  documents are cut at line ends into chunks of about `chunk_chars`. Stops
  after the document that brings the total past `max_chars`.
  """
  total = 0
  for i in np.random.default_rng(seed).permutation(len(texts)):
    text = texts[int(i)]
    total += len(text)
    lines, size = [], 0
    for line in _pieces(text.splitlines(keepends=True), chunk_chars):
      if lines and size + len(line) > chunk_chars:
        yield "".join(lines)
        lines, size = [], 0
      lines.append(line)
      size += len(line)
    if lines:
      yield "".join(lines)
    if total >= max_chars:
      return


def _pieces(lines: Sequence[str], size: int) -> Iterator[str]:
  """Lines, with any longer than `size` characters cut into pieces: sentencepiece silently skips
  a "sentence" over its max_sentence_length, so a corpus of long lines (minified code, one line
  per book) would otherwise train on nothing."""
  for line in lines:
    yield from (line[i : i + size] for i in range(0, len(line), size)) if len(line) > size else (
        line,
    )


def _spm_error(message: str, vocab_size: int) -> str:
  """Turns a sentencepiece training failure into a one-line config error."""
  message = " ".join(message.split())
  if m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", message):
    return (
        f"data.vocab_size={vocab_size} is too small for this corpus: "
        f"sentencepiece needs at least {m.group(1)} (byte pieces + the "
        "corpus's characters)"
    )
  if m := re.search(
      r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message
  ):
    return (
        f"data.vocab_size={vocab_size} is too large for this corpus: "
        f"sentencepiece can make at most {m.group(1)} pieces from it"
    )
  return f"sentencepiece training failed (data.vocab_size={vocab_size}): {message}"
