"""Translation with an encoder-decoder Transformer (experiments/translate.py).

Data (`config.data.source`, `bigmodel_jax.data.translation_pairs`): dates (the offline default),
tfds:<name> with a Translation feature, or the user's pairs as csv:<glob>, tsv:<glob>, jsonl:<glob>.

Tokens: each side's tokenizer (`byte` by default, or `sentencepiece` trained on the training split
and saved under <workdir>/tokenizer; one for both sides with data.shared_vocab, else
tokenizer/source and tokenizer/target) gives ids 0..V-1, followed by three specials: PAD = V,
BOS = V + 1, EOS = V + 2 (`models.seq2seq.special_ids`). Batches are {"inputs": (B, S) source
+ EOS, "targets": (B, T) target + EOS}, PAD-filled; the decoder reads BOS + targets[:, :-1]
(teacher forcing). With data.pack, training rows hold several pairs each, with segment ids
(`translate_packing`); everything else reads one pair per row. Over-long training pairs are
dropped; validation/test pairs are truncated (BLEU and exact match still compare against the full
reference text); each split logs how many.
A `decode.input` longer than data.max_source_len warns with both lengths and is cut (or, with
decode.on_long_input=error, refused).

`--mode=translate`: decode.input is one text, or CSV/TSV/JSONL file(s) whose every row's
data.source_column is translated into decode.output (`batch_translate.py`).
"""

import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
import sacrebleu

from bigmodel_jax import batch_translate, beam_search, models, translate_packing
from bigmodel_jax.data import tokenizers, too_long, translation_pairs
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.models import seq2seq
from bigmodel_jax.tasks import base

TOKENIZER_DIR = "tokenizer"


class Task(translate_packing.PackedPairs, base.ArrayTask):
  """Batches are {"inputs": int32 (B, S), "targets": int32 (B, T)}; loss is mean token NLL.
  Packed training batches add {"src_segments": (B, S), "tgt_segments": (B, T)} int32."""

  eval_split = "validation"

  eval_metrics = ("loss", "accuracy", "sequence_accuracy")
  final_metric_names = ("test_bleu", "test_exact_match")

  def __init__(self, config):
    super().__init__(config)
    self._validate(config)
    self.check_packing()
    self._source = translation_pairs.open_source(config.data)
    self.modes = {"translate": self.translate}
    self.src_tok = self.tgt_tok = None
    self._final = None
    self.model = self._make_model()

  @staticmethod
  def _validate(config):
    d, dec = config.data, config.decode
    if d.tokenizer not in tokenizers.NAMES:
      raise UsageError(
          f"data.tokenizer={d.tokenizer!r} is not valid; valid: {', '.join(tokenizers.NAMES)}"
      )
    if d.tokenizer == "sentencepiece" and d.vocab_size < 260:
      raise UsageError(
          f"data.vocab_size={d.vocab_size} is too small for sentencepiece; use at "
          "least 260, typically 4000..32000"
      )
    at_least = {
        "data.max_source_len": 2,
        "data.max_target_len": 2,
        "decode.beam_size": 1,
        "decode.max_len": 1,
        "decode.batch_size": 1,
        "decode.eval_examples": 0,
        "decode.show": 0,
        "data.train_examples": 0,
        "data.eval_examples": 0,
    }
    for key, low in at_least.items():
      section, name = key.split(".")
      if config[section][name] < low:
        raise UsageError(f"{key}={config[section][name]} must be >= {low}")
    if not 1 <= d.holdout_percent <= 33:
      raise UsageError(f"data.holdout_percent={d.holdout_percent} must be in 1..33")
    too_long.check_policy("decode.on_long_input", dec.on_long_input)
    if dec.length_penalty < 0:
      raise UsageError(f"decode.length_penalty={dec.length_penalty} must be >= 0 (0 = off)")
    if not 0 <= config.train.label_smoothing < 1:
      raise UsageError(f"train.label_smoothing={config.train.label_smoothing} must be in [0, 1)")

  def _make_model(self):
    d = self.config.data
    guess = 256 if d.tokenizer == "byte" else d.vocab_size
    src, tgt = (t.vocab_size if t else guess for t in (self.src_tok, self.tgt_tok))
    return models.make(
        self.config.model,
        ("seq2seq",),
        src_vocab_size=src + seq2seq.NUM_SPECIAL,
        tgt_vocab_size=tgt + seq2seq.NUM_SPECIAL,
        share_embeddings=d.shared_vocab,
    )

  # --- data ---------------------------------------------------------------------------------

  def setup(self, workdir: str, create: bool) -> None:
    """Loads the run's tokenizer(s) from the workdir, or (create) trains and saves them there."""
    d = self.config.data
    root = os.path.join(workdir, TOKENIZER_DIR)
    dirs = [root] if d.shared_vocab else [os.path.join(root, side) for side in ("source", "target")]
    saved = all(os.path.exists(os.path.join(p, "tokenizer.json")) for p in dirs)
    if not create and not saved:
      raise RunError(
          f"no tokenizer in {root}; train first with python run.py "
          f"--experiment={self.config.experiment} --workdir={workdir}"
      )
    self.workdir = workdir
    src, tgt = ([], []) if saved else self._texts["train"]  # saved ones are loaded, not trained
    texts = [list(src) + list(tgt)] if d.shared_vocab else [src, tgt]
    toks = [
        tokenizers.build_tokenizer(
            d.tokenizer, t, vocab_size=d.vocab_size, model_type=d.spm_model_type, directory=p
        )
        for t, p in zip(texts, dirs)
    ]
    self.src_tok, self.tgt_tok = toks[0], toks[-1]
    self.model = self._make_model()

  @functools.cached_property
  def _texts(self) -> dict[str, tuple[list[str], list[str]]]:
    return self._source.splits()

  def _encode(self, tok, texts, length: int):
    """Texts -> (N, length) int32 ids + EOS, PAD-filled, cut to fit; and each text's length in
    tokens before the cut (EOS not counted: it fits when length - 1 or fewer)."""
    pad, _, eos = seq2seq.special_ids(tok.vocab_size + seq2seq.NUM_SPECIAL)
    out = np.full((len(texts), length), pad, np.int32)
    lengths = np.zeros(len(texts), np.int64)
    for i, ids in enumerate(tok.encode_many(list(texts))):
      lengths[i] = len(ids)
      ids = np.append(ids[: length - 1], eos)
      out[i, : len(ids)] = ids
    return out, lengths

  @functools.lru_cache(maxsize=3)
  def split_arrays(self, split: str) -> dict[str, np.ndarray]:
    d = self.config.data
    src, tgt = self._texts[split]
    inputs, src_len = self._encode(self.src_tok, src, d.max_source_len)
    targets, tgt_len = self._encode(self.tgt_tok, tgt, d.max_target_len)
    fits = (src_len < d.max_source_len) & (tgt_len < d.max_target_len)
    keep = fits if split == "train" else np.ones(len(src), bool)
    logging.info("%s split: %d pairs", split, keep.sum())
    too_long.log_split(
        split,
        int(np.sum(~fits)),
        len(src),
        "pairs",
        f"data.max_source_len={d.max_source_len} or data.max_target_len="
        f"{d.max_target_len} tokens (EOS included)",
        "dropped" if split == "train" else "cut to fit",
    )
    if not keep.any():
      raise UsageError(
          f"no {split} pair fits data.max_source_len={d.max_source_len} and "
          f"data.max_target_len={d.max_target_len} tokens"
      )
    return {"inputs": inputs[keep], "targets": targets[keep]}

  # --- model and loss -----------------------------------------------------------------------

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    if self.pack:
      return self.packed_spec(batch_size)
    d = self.config.data
    return {
        "inputs": jax.ShapeDtypeStruct((batch_size, d.max_source_len), np.int32),
        "targets": jax.ShapeDtypeStruct((batch_size, d.max_target_len), np.int32),
    }

  def init_variables(self, rng):
    d = self.config.data
    src = jnp.zeros((1, d.max_source_len), jnp.int32)
    return self.model.init({"params": rng}, src, jnp.zeros((1, d.max_target_len), jnp.int32))

  def loss(self, params, model_state, batch, rng, train: bool):
    src, tgt = batch["inputs"], batch["targets"]  # (B, S), (B, T)
    pad, bos, _ = self.model.tgt_specials
    tgt_in = jnp.concatenate([jnp.full_like(tgt[:, :1], bos), tgt[:, :-1]], axis=1)
    segments = {k: batch[k] for k in translate_packing.SEGMENT_KEYS if k in batch}
    if segments:  # packed rows: every pair's decoder input starts with BOS
      tgt_in = jnp.where(translate_packing.segment_starts(segments["tgt_segments"]), bos, tgt_in)
    logits = self.model.apply(
        {"params": params, **model_state},
        src,
        tgt_in,
        train=train,
        rngs={"dropout": rng},
        **segments,
    )  # (B, T, V) float32
    rows = batch.get("weight", jnp.ones(src.shape[0], jnp.float32))  # (B,)
    mask = (tgt != pad) & (rows[:, None] > 0)  # (B, T)
    nll = jnp.where(mask, optax.softmax_cross_entropy_with_integer_labels(logits, tgt), 0.0)
    smoothing = self.config.train.label_smoothing
    objective = nll
    if smoothing:
      labels = optax.smooth_labels(jax.nn.one_hot(tgt, logits.shape[-1]), smoothing)
      objective = jnp.where(mask, optax.softmax_cross_entropy(logits, labels), 0.0)
    count = mask.sum().astype(jnp.float32)
    correct = (logits.argmax(-1) == tgt) & mask
    if segments:  # each pair once, as unpacked
      exact, pairs = translate_packing.exact_pairs(correct, mask, segments["tgt_segments"])
    else:
      exact = (jnp.all(correct | ~mask, axis=1) & (rows > 0)).sum().astype(jnp.float32)
      pairs = rows.sum()
    metrics = {
        "loss": (nll.sum(), count),
        "accuracy": (correct.sum().astype(jnp.float32), count),
        "sequence_accuracy": (exact, pairs),
    }
    return objective.sum() / jnp.maximum(count, 1.0), (metrics, model_state)

  # --- decoding -----------------------------------------------------------------------------

  def _encode_sources(self, texts: list[str], split: str = "") -> np.ndarray:
    """Sources to decode -> (N, max_source_len) ids; cuts are logged under `split`, or, with no
    split (texts = [decode.input]), warned about or refused by decode.on_long_input."""
    d, dec = self.config.data, self.config.decode
    src, lengths = self._encode(self.src_tok, texts, d.max_source_len)
    if split:
      too_long.log_split(
          split,
          int(np.sum(lengths >= d.max_source_len)),
          len(texts),
          "sources",
          f"data.max_source_len={d.max_source_len} tokens (EOS included)",
          "cut to fit for decoding",
      )
    else:
      too_long.check_input(
          "decode.input",
          int(lengths[0]),
          d.max_source_len - 1,
          f"data.max_source_len={d.max_source_len}, EOS included",
          "decode.on_long_input",
          dec.on_long_input,
      )
    return src

  def _translate(self, params, src: np.ndarray, size: int = 0) -> list[str]:
    """Decodes encoded sources on the host with the configured search, in batches of `size`
    (default min(decode.batch_size, N)), the last one padded to that size."""
    dec = self.config.decode
    size = size or min(dec.batch_size, len(src))
    eos = self.model.tgt_specials[2]
    out = []
    for start in range(0, len(src), size):
      chunk = src[start : start + size]
      rows = len(chunk)
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - rows, 0)])
      tokens = beam_search.decode(
          self.model, params, chunk, dec.max_len, dec.beam_size, dec.length_penalty
      )[:rows]
      out += [self.tgt_tok.decode(ids) for ids in beam_search.strip(tokens, eos)]
    return out

  def final_metrics(self, variables) -> dict[str, float]:
    """BLEU (sacrebleu) and exact match of the test split, decoded with the configured search."""
    src, refs = self._texts["test"]
    n = self.config.decode.eval_examples or len(src)
    src, refs = list(src[:n]), list(refs[:n])
    hyps = self._translate(variables["params"], self._encode_sources(src, "test"))
    values = {
        "test_bleu": float(sacrebleu.corpus_bleu(hyps, [refs]).score),
        "test_exact_match": float(np.mean([h.strip() == r.strip() for h, r in zip(hyps, refs)])),
    }
    self._final = (src, refs, hyps, values)
    return values

  def translate(self, variables) -> list[str] | dict:
    """`--mode=translate`: decode.input (a text, or files: see `batch_translate`), or the first
    decode.show test sources."""
    dec = self.config.decode
    found = batch_translate.input_files(dec.input) if dec.input.strip() else None
    if found:
      return self._translate_files(variables["params"], *found)
    texts = [dec.input] if dec.input else list(self._texts["test"][0][: max(dec.show, 1)])
    src = self._encode_sources(texts, "" if dec.input else "test")
    hyps = self._translate(variables["params"], src)
    for text, hyp in zip(texts, hyps):
      print(f"{text}\n  -> {hyp}", flush=True)
    return hyps

  def _translate_files(self, params, scheme: str, paths: list[str]) -> dict:
    d, dec = self.config.data, self.config.decode

    def translate(texts):
      src, lengths = self._encode(self.src_tok, texts, d.max_source_len)
      return self._translate(params, src, dec.batch_size), lengths

    return batch_translate.run(
        scheme,
        paths,
        os.path.expanduser(dec.output)
        or os.path.join(self.workdir, batch_translate.DEFAULT_OUTPUT),
        source_column=d.source_column,
        header=d.header,
        translate=translate,
        batch_size=dec.batch_size,
        max_source_len=d.max_source_len,
        on_long_input=dec.on_long_input,
    )

  def showcase(self, variables) -> None:
    if self._final is None:
      self.final_metrics(variables)
    src, refs, hyps, values = self._final
    dec = self.config.decode
    print(
        f"--- test: BLEU {values['test_bleu']:.2f}, exact match "
        f"{100 * values['test_exact_match']:.1f}% over {len(src)} examples (beam "
        f"{dec.beam_size}, length penalty {dec.length_penalty}) ---",
        flush=True,
    )
    wrong = [i for i in range(len(src)) if hyps[i].strip() != refs[i].strip()]
    shown = list(range(min(dec.show, len(src))))
    for i in shown + [i for i in wrong if i not in shown][:3]:
      mark = "ok" if i not in wrong else "WRONG"
      print(
          f"source:     {src[i]}\nreference:  {refs[i]}\nhypothesis: {hyps[i]}  [{mark}]\n",
          flush=True,
      )
