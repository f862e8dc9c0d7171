"""Text classification: a label per text (sentiment, topic, ...), with any model of `models/` that
maps tokens (B, T) to logits (B, num_classes) ("text_encoder", "rnn").

Data (`config.data.source`):
  reviews       the offline generated review corpus of `data/reviews.py` (train and a held-out
                test split drawn with another seed; labels negative/positive)
  tfds:<name>   a prepared TFDS dataset with a text feature (`data.text_key`) and a ClassLabel
                (`data.label_key`), e.g. tfds:imdb_reviews; trains on "train" and evaluates on
                "test" (or "validation"); read through array_record, never downloaded

Texts are tokenized by `data.tokenizer` (byte, or sentencepiece trained on the training split and
saved in the workdir's tokenizer/), truncated to `model.max_len` and padded at the end. Token ids
are the tokenizer's + 1, so that 0 is padding: the models mask it out. Truncation is never silent:
each split logs how many of its texts were cut, and a longer `predict.input` warns with both
lengths (or, with predict.on_long_input=error, is refused).
"""

import functools
import os

from absl import logging
import jax
import numpy as np
import optax
import tensorflow_datasets as tfds

from bigmodel_jax import models
from bigmodel_jax.data import arrays, reviews, tfds_source, tokenizers, too_long
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import base

TOKENIZER_DIR = "tokenizer"
MODELS = ("text_encoder", "rnn")
SOURCES_HELP = "reviews, tfds:<name>"


class Task(base.Task):
  """Batches are {"tokens": int32 (B, max_len), "label": int32 (B,)} (+ "weight" in eval)."""

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
    if config.predict.num_examples < 0:
      raise UsageError(f"predict.num_examples={config.predict.num_examples} must be >= 0")
    too_long.check_policy("predict.on_long_input", config.predict.on_long_input)
    if d.source == "reviews":
      for key in ("num_train", "num_test"):
        if d[key] <= 0:
          raise UsageError(f"data.{key}={d[key]} must be a positive integer")
      self.class_names, self.eval_split = reviews.CLASS_NAMES, "test"
    elif d.source.startswith("tfds:") and d.source[5:]:
      self._builder, self.eval_split = _open_tfds(
          d.source[5:], d.tfds_data_dir, d.text_key, d.label_key
      )
      self.class_names = tuple(self._builder.info.features[d.label_key].names)
    else:
      raise UsageError(f"data.source={d.source!r} is not valid; valid: {SOURCES_HELP}")
    self.modes = {"predict": self.predict}
    self.tokenizer = None
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
    """Loads the run's tokenizer from the workdir, or (create) trains and saves one there."""
    d = self.config.data
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
    self.model = self._make_model()

  @functools.cached_property
  def _generated(self):
    d = self.config.data
    return reviews.splits(d.num_train, d.num_test, seed=d.seed)

  @functools.cache
  def _texts(self, split: str) -> tuple[list[str], np.ndarray]:
    """(texts, int32 labels) of "train" or the eval split."""
    d = self.config.data
    if d.source == "reviews":
      return self._generated[split]
    return _read_tfds(self._builder, split, d.text_key, d.label_key)

  @functools.cache
  def _arrays(self, split: str) -> dict[str, np.ndarray]:
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

  def train_iterator(self, batch_size: int, seed: int, process_index: int, process_count: int):
    return iter(
        arrays.train_dataset(
            self._arrays("train"),
            batch_size=batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
        )
    )

  def eval_batches(self, batch_size: int):
    return arrays.eval_batches(
        self._arrays(self.eval_split),
        batch_size=batch_size,
        max_batches=self.config.train.eval_batches,
    )

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        "tokens": jax.ShapeDtypeStruct((batch_size, self.config.model.max_len), np.int32),
        "label": jax.ShapeDtypeStruct((batch_size,), np.int32),
    }

  # --- model and loss -----------------------------------------------------------------------

  def init_variables(self, rng):
    tokens = np.zeros((1, self.config.model.max_len), np.int32)
    return self.model.init({"params": rng}, tokens, train=False)

  def loss(self, params, model_state, batch, rng, train: bool):
    logits = self.model.apply(
        {"params": params, **model_state}, batch["tokens"], train=train, rngs={"dropout": rng}
    )  # (B, classes) float32
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])  # (B,)
    weight = batch["weight"] if "weight" in batch else np.ones(losses.shape, np.float32)
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
    """`--mode=predict --config.predict.input="some text"`: prints and returns the label."""
    p = self.config.predict
    text = p.input
    if not text.strip():
      raise UsageError('predict.input is empty; pass --config.predict.input="some text"')
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

  def showcase(self, variables) -> None:
    """Eval-split accuracy, then a few eval texts (and, for `reviews`, fixed contrast probes)."""
    data = self._arrays(self.eval_split)
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


# --- TFDS ----------------------------------------------------------------------------------------


def _open_tfds(name: str, data_dir: str, text_key: str, label_key: str):
  """(builder, eval split name) of a prepared array_record dataset, checked; one-line errors."""
  source = f"tfds:{name}"
  builder = tfds_source.open_prepared(name, data_dir)
  features = builder.info.features
  described = ", ".join(f"{k} ({type(f).__name__})" for k, f in sorted(features.items()))
  for key, kind, want in (
      (text_key, tfds.features.Text, "text"),
      (label_key, tfds.features.ClassLabel, "label"),
  ):
    if key not in features or not isinstance(features[key], kind):
      raise UsageError(
          f"data.{want}_key={key!r} is not a {kind.__name__} feature of {source}; "
          f"features: {described}"
      )
  splits = set(builder.info.splits)
  eval_split = next((s for s in ("test", "validation") if s in splits), None)
  if "train" not in splits or eval_split is None:
    raise UsageError(
        f"{source} needs a train split and a test or validation split; its "
        f"splits: {', '.join(sorted(splits)) or 'none'}"
    )
  return builder, eval_split


def _read_tfds(builder, split: str, text_key: str, label_key: str):
  source = builder.as_data_source(split)
  texts, labels = [], np.zeros(len(source), np.int32)
  for i in range(len(source)):
    record = source[i]
    text = record[text_key]
    texts.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    labels[i] = int(record[label_key])
  logging.info("tfds:%s %s: %d examples from %s", builder.name, split, len(texts), builder.data_dir)
  return texts, labels
