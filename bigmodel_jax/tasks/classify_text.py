"""Text classification: a label per text (sentiment, topic, ...), with any model of `models/` that
maps tokens (B, T) to logits (B, num_classes) ("text_encoder", "rnn").

Data (`config.data.source`, see `data/labelled_texts.py`): `reviews` (generated, offline),
`tfds:<name>` (a prepared TFDS dataset) or the user's own rows, `csv:<glob>`, `tsv:<glob>`,
`jsonl:<glob>` (columns data.text_column, data.label_column), with any number of classes. The
class list is saved with the run (`dataset.json`, with the source), so eval and predict use the
classes training used, and the model's number of classes comes from it.

Texts are tokenized by `data.tokenizer` (byte, or sentencepiece trained on the training split and
saved in the workdir's tokenizer/), truncated to `model.max_len` and padded at the end. Token ids
are the tokenizer's + 1, so that 0 is padding: the models mask it out. Truncation is never silent:
each split logs how many of its texts were cut, and a longer `predict.input` warns with both
lengths (or, with predict.on_long_input=error, is refused).

`data.pack` (text_encoder only): training and eval rows hold several texts each, in order, with
segment ids (data/packing.py; at most `data.max_segments` per row): the model keeps them apart and
gives each its own logits, and the loss and metrics count each text once. Prediction is unpacked.

`--mode=predict`: `predict.input` is a text, or CSV/TSV/JSONL file(s) whose every row is predicted
into `predict.output` (`batch_predict.py`).
"""

import functools
import os

from absl import logging
import jax
import numpy as np
import optax

from bigmodel_jax import batch_predict, models, text_packing
from bigmodel_jax.data import labelled_texts, reviews, tokenizers, too_long
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import base

TOKENIZER_DIR = "tokenizer"
DATASET_FILE = "dataset.json"
MODELS = ("text_encoder", "rnn")


class Task(text_packing.PackedRows, base.ArrayTask):
  """Batches are {"tokens": int32 (B, max_len), "label": int32 (B,)} (+ "weight" in eval);
  packed, {"tokens", "segment_ids": int32 (B, W), "label": int32 (B, S), "label_weight": float32
  (B, S)} with W = max_len (+ 1 for pooling "first": a [CLS] slot per text), S = max_segments."""

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    if d.tokenizer not in tokenizers.NAMES:
      raise UsageError(
          f"data.tokenizer={d.tokenizer!r} is not valid; valid: {', '.join(tokenizers.NAMES)}"
      )
    max_len = config.model.get("max_len")
    if not isinstance(max_len, int) or max_len <= 0:
      raise UsageError(f"model.max_len={max_len!r} must be a positive integer")
    p = config.predict
    if p.num_examples < 0 or p.batch_size <= 0:
      raise UsageError(
          f"predict.num_examples={p.num_examples} must be >= 0 and predict.batch_size="
          f"{p.batch_size} > 0"
      )
    too_long.check_policy("predict.on_long_input", p.on_long_input)
    self.check_packing()
    # Checks the source and gives its classes; reads no texts (records are built once, here).
    self.source = labelled_texts.open_source(d)
    self.class_names, self.eval_split = self.source.class_names, self.source.eval_split
    self.modes = {"predict": self.predict}
    self.tokenizer = None
    self.workdir = ""
    # Built now (with the configured vocabulary) so that model config errors come early.
    self.model = self._make_model()

  def _make_model(self):
    vocab = (
        self.tokenizer.vocab_size
        if self.tokenizer
        else (256 if self.config.data.tokenizer == "byte" else self.config.data.vocab_size)
    )
    return models.make(
        self.config.model, MODELS, vocab_size=vocab + 1, num_classes=len(self.class_names)
    )

  # --- data ---------------------------------------------------------------------------------

  def setup(self, workdir: str, create: bool) -> None:
    """Loads the run's class list and tokenizer from the workdir, or (create) makes and saves
    them there."""
    d = self.config.data
    path = os.path.join(workdir, DATASET_FILE)
    if os.path.exists(path):
      self.class_names = labelled_texts.load_classes(path)
    elif create:
      labelled_texts.save_classes(path, d.source, self.class_names)
    # else: a run from before dataset.json, trained on the source's own classes
    directory = os.path.join(workdir, TOKENIZER_DIR)
    if os.path.exists(directory):
      self.tokenizer = tokenizers.load_tokenizer(directory)
    elif create:
      self.tokenizer = tokenizers.build_tokenizer(
          d.tokenizer,
          self._texts("train")[0],
          vocab_size=d.vocab_size,
          model_type=d.spm_model_type,
          directory=directory,
      )
    else:
      raise RunError(
          f"no tokenizer in {directory}; train first with "
          f"python run.py --experiment={self.config.experiment} --workdir={workdir}"
      )
    self.workdir = workdir
    self.model = self._make_model()

  @functools.cache
  def _texts(self, split: str) -> tuple[list[str], np.ndarray]:
    """(texts, int32 labels: indices into the run's class list) of "train" or the eval split."""
    texts, names = self.source.texts(split)
    index = {name: i for i, name in enumerate(self.class_names)}
    unknown = sorted(set(names) - set(index))
    if unknown:
      raise RunError(
          f"the {split} split of data.source={self.config.data.source} has labels this run's "
          f"classes lack ({', '.join(map(repr, unknown[:5]))}); its classes: "
          f"{', '.join(self.class_names)}. Train in a new --workdir for other classes"
      )
    return texts, np.asarray([index[n] for n in names], np.int32).reshape(-1)

  @functools.cache
  def split_arrays(self, split: str) -> dict[str, np.ndarray]:
    texts, labels = self._texts(split)
    tokens, lengths = self._encode(texts)
    max_len = self.config.model.max_len
    logging.info("%s split: %d examples", split, len(texts))
    too_long.log_split(
        split,
        int(np.sum(lengths > max_len)),
        len(texts),
        "texts",
        f"model.max_len={max_len} tokens",
        f"cut to their first {max_len}",
    )
    return {"tokens": tokens, "label": labels}

  def encode(self, texts) -> np.ndarray:
    """Texts -> int32 (N, max_len): tokenizer ids + 1, truncated, padded with 0 at the end."""
    return self._encode(texts)[0]

  def _encode(self, texts) -> tuple[np.ndarray, np.ndarray]:
    """(encode(texts), each text's length in tokens before truncation)."""
    out = np.zeros((len(texts), self.config.model.max_len), np.int32)
    lengths = np.zeros(len(texts), np.int64)
    for i, (row, ids) in enumerate(zip(out, self.tokenizer.encode_many(texts))):
      lengths[i] = len(ids)
      ids = ids[: len(row)]
      row[: len(ids)] = ids + 1
    return out, lengths

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    if self.pack:
      return self.packed_spec(batch_size)
    return {
        "tokens": jax.ShapeDtypeStruct((batch_size, self.config.model.max_len), np.int32),
        "label": jax.ShapeDtypeStruct((batch_size,), np.int32),
    }

  # --- model and loss -----------------------------------------------------------------------

  def init_variables(self, rng):
    tokens = np.zeros((1, self.config.model.max_len), np.int32)
    return self.model.init({"params": rng}, tokens, train=False)

  def loss(self, params, model_state, batch, rng, train: bool):
    packed = {}
    if "segment_ids" in batch:
      packed = {"segment_ids": batch["segment_ids"], "num_segments": batch["label"].shape[1]}
    logits = self.model.apply(
        {"params": params, **model_state},
        batch["tokens"],
        train=train,
        rngs={"dropout": rng},
        **packed,
    )  # (B, classes) float32, packed (B, S, classes)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])  # (B[, S])
    weight = batch["weight"] if "weight" in batch else np.ones(logits.shape[:1], np.float32)
    if packed:  # each text once: its slot's weight (and its row's, in eval)
      weight = batch["label_weight"] * weight[:, None]
    count = weight.sum()
    correct = (logits.argmax(-1) == batch["label"]).astype(np.float32)
    metrics = {
        "loss": ((losses * weight).sum(), count),
        "accuracy": ((correct * weight).sum(), count),
    }
    return (losses * weight).sum() / count, (metrics, model_state)

  # --- prediction ---------------------------------------------------------------------------

  def probabilities(self, variables, tokens: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, num_classes) for encoded texts, in fixed-size (padded) batches."""
    fn = getattr(self, "_probs_fn", None)
    if fn is None:
      fn = self._probs_fn = jax.jit(lambda v, t: jax.nn.softmax(self.model.apply(v, t)))
    out = []
    for start in range(0, len(tokens), batch_size):
      chunk = tokens[start : start + batch_size]
      padded = np.zeros((batch_size,) + chunk.shape[1:], np.int32)
      padded[: len(chunk)] = chunk
      out.append(np.asarray(fn(variables, padded))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

  def predict(self, variables) -> dict:
    """`--mode=predict --config.predict.input=...`: a text (prints and returns its label), or
    CSV/TSV/JSONL file(s) whose every row is predicted into predict.output (`batch_predict`)."""
    p = self.config.predict
    text = p.input
    if not text.strip():
      raise UsageError(
          'predict.input is empty; pass --config.predict.input="some text" (or a .csv, .tsv or '
          ".jsonl file)"
      )
    found = batch_predict.input_files(text)
    if found:
      return self._predict_files(variables, *found)
    tokens, lengths = self._encode([text])
    max_len = self.config.model.max_len
    too_long.check_input(
        "predict.input",
        int(lengths[0]),
        max_len,
        f"model.max_len={max_len}",
        "predict.on_long_input",
        p.on_long_input,
    )
    probs = self.probabilities(variables, tokens)[0]
    label = self.class_names[int(probs.argmax())]
    print(f"{label} ({probs.max():.3f}): {text}")
    print("  " + ", ".join(f"{n} {p:.3f}" for n, p in zip(self.class_names, probs)), flush=True)
    return {"label": label, "probabilities": dict(zip(self.class_names, probs.tolist()))}

  def _predict_files(self, variables, scheme: str, paths: list[str]) -> dict:
    p, d = self.config.predict, self.config.data

    def classify(texts):
      tokens, lengths = self._encode(texts)
      return self.probabilities(variables, tokens, p.batch_size), lengths

    return batch_predict.run(
        scheme,
        paths,
        os.path.expanduser(p.output) or os.path.join(self.workdir, "predictions.csv"),
        text_column=d.text_column,
        header=d.header,
        class_names=self.class_names,
        classify=classify,
        batch_size=p.batch_size,
        max_len=self.config.model.max_len,
        on_long_input=p.on_long_input,
    )

  def showcase(self, variables) -> None:
    """Eval-split accuracy, then a few eval texts (and, for `reviews`, fixed contrast probes)."""
    data = self.split_arrays(self.eval_split)
    limit = self.config.train.eval_batches * self.config.train.batch_size or len(data["label"])
    probs = self.probabilities(variables, data["tokens"][:limit])
    labels = data["label"][:limit]
    print(
        f"\n{self.config.data.source} {self.eval_split} accuracy: "
        f"{np.mean(probs.argmax(-1) == labels):.2%} ({len(labels)} examples)"
    )
    texts = self._texts(self.eval_split)[0]
    k = self.config.predict.num_examples
    rows = [(texts[i], labels[i], probs[i]) for i in range(min(k, len(labels)))]
    if self.config.data.source == "reviews" and k:
      print(f"first {len(rows)} {self.eval_split} examples, then probes (order and negation):")
      tokens = self.encode([t for t, _ in reviews.PROBES])
      rows += list(
          zip(
              [t for t, _ in reviews.PROBES],
              [y for _, y in reviews.PROBES],
              self.probabilities(variables, tokens),
          )
      )
    for text, label, p in rows:
      guess = int(p.argmax())
      mark = "ok   " if guess == label else "WRONG"
      text = text if len(text) <= 110 else text[:107] + "..."
      print(f"  {mark} {self.class_names[guess]:>8} {p[guess]:.3f}  {text}")
    print(flush=True)
