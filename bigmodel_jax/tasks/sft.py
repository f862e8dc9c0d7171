"""Supervised fine-tuning of a GPT: next-token loss on the answers only, rows packed.

Examples come from `bigmodel_jax.data.instructions` (generated pystrings exchanges, or your own
JSONL prompt/completion or chat files); each is tokenized whole, the loss weights mark the tokens
the answer writes, and `data.pack` puts several examples in a row with segment ids (the GPT's
attention and positions then see each example as if alone). A run starts from a textgen (lm) run's
parameters with `config.init_from`, and uses that run's tokenizer. Exact match (the answer,
decoded greedily until its stop string, equal to the reference) is the final metric.
"""

import functools
import os
import shutil

from absl import logging
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigmodel_jax.data import instructions, packing, tokenizers
from bigmodel_jax.errors import UsageError
from bigmodel_jax.tasks import lm

FIELDS = {"inputs": np.int32, "targets": np.int32, "weights": np.float32, "segment_ids": np.int32}
EVAL_CHUNK = 64  # prompts decoded at once for exact match


class Task(lm.Task):
  """Batches are FIELDS, each (B, T); the loss is the mean NLL over answer tokens."""

  final_metric_names = ("exact_match",)
  init_from_tasks = ("lm",)

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    if d.eval_examples < 0 or d.num_examples <= 0 or d.num_val_examples <= 0:
      raise UsageError(
          f"data.num_examples={d.num_examples} and data.num_val_examples={d.num_val_examples} "
          f"must be > 0, data.eval_examples={d.eval_examples} >= 0"
      )
    if not d.end:
      raise UsageError("data.end must be a non-empty string: it tells where an answer stops")
    if d.source != "pystrings" and not d.source.startswith("jsonl:"):
      raise UsageError(f"data.source={d.source!r} is not valid; valid: {instructions.SOURCES_HELP}")

  # --- data ---------------------------------------------------------------------------------

  def setup(self, workdir: str, create: bool) -> None:
    """The run's tokenizer: saved in the workdir, else (create) init_from's, else a new one."""
    directory = os.path.join(workdir, lm.TOKENIZER_DIR)
    source = os.path.join(self.config.init_from, lm.TOKENIZER_DIR)
    if create and not os.path.exists(directory) and self.config.init_from:
      if not os.path.isdir(source):
        raise UsageError(f"config.init_from={self.config.init_from!r} has no {lm.TOKENIZER_DIR}/")
      shutil.copytree(source, directory)  # the pretrained model's vocabulary, kept with this run
    if create and not os.path.exists(directory):
      d = self.config.data
      texts = ["".join(t for t, _ in e.pieces) for e in self._examples["train"]]
      tokenizers.build_tokenizer(
          d.tokenizer,
          texts,
          vocab_size=d.vocab_size,
          model_type=d.spm_model_type,
          directory=directory,
      )
    super().setup(workdir, create=False)

  @functools.cached_property
  def _examples(self) -> dict[str, list[instructions.Example]]:
    template = getattr(self.tokenizer, "chat_template", None)
    return instructions.load(self.config.data.source, self.config.data, template)

  @functools.lru_cache(maxsize=4)
  def _rows(self, split: str, pack: bool) -> dict[str, np.ndarray]:
    fields = [packing.lm_fields(e.pieces, self.tokenizer) for e in self._examples[split]]
    out, tokens = packing.rows(
        fields, self.config.model.block_size, pack, split, "model.block_size + 1 tokens"
    )
    logging.info(
        "%s split: %d examples, %s tokens in %d rows of %d (%s): %.1f%% padding",
        split,
        len(fields),
        f"{tokens:,}",
        len(out["inputs"]),
        self.config.model.block_size,
        "packed" if pack else "one example per row",
        100 * packing.waste(out["segment_ids"]),
    )
    return out

  def padding_waste(self, split: str = "train") -> dict[str, float]:
    """{"unpacked": fraction, "packed": fraction} of padding positions in the split's rows."""
    return {
        name: packing.waste(self._rows(split, pack)["segment_ids"])
        for name, pack in (("unpacked", False), ("packed", True))
    }

  def train_iterator(self, batch_size: int, seed: int, process_index: int, process_count: int):
    data = self._rows("train", self.config.data.pack)
    ds = grain.MapDataset.range(len(data["inputs"])).shuffle(seed=seed).repeat()
    ds = ds[process_index::process_count].batch(batch_size, drop_remainder=True)
    return iter(ds.map(lambda rows: {k: v[rows] for k, v in data.items()}))

  def eval_batches(self, batch_size: int):
    data = self._rows("validation", self.config.data.pack)
    n = len(data["inputs"])
    pad = -n % batch_size  # rows of padding (weight 0) fill the last batch
    data = {k: np.concatenate([v, np.zeros((pad, v.shape[1]), v.dtype)]) for k, v in data.items()}
    batches = [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)]
    limit = self.config.train.eval_batches
    return batches[:limit] if limit > 0 else batches

  # --- model and loss -----------------------------------------------------------------------

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (batch_size, self.config.model.block_size)
    return {k: jax.ShapeDtypeStruct(shape, dtype) for k, dtype in FIELDS.items()}

  def loss(self, params, model_state, batch, rng, train: bool):
    logits = self.model.apply(
        {"params": params, **model_state},
        batch["inputs"],
        train=train,
        segment_ids=batch["segment_ids"],
        rngs={"dropout": rng},
    )  # (B, T, V) float32
    w = batch["weights"]  # (B, T): 1 on answer tokens
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]) * w
    count = w.sum()
    correct = ((logits.argmax(-1) == batch["targets"]) * w).sum()
    metrics = {"loss": (token_loss.sum(), count), "accuracy": (correct, count)}
    return token_loss.sum() / jnp.maximum(count, 1.0), (metrics, model_state)

  # --- exact match --------------------------------------------------------------------------

  def answers(self, params, examples) -> list[str]:
    """Greedy answers to the examples' prompts, each cut at its stop string."""
    encode = self.tokenizer.encode
    prompts = [np.asarray(encode(e.prompt), np.int32) for e in examples]
    max_new = max(len(encode(e.answer + e.stop)) for e in examples)
    width = min(max(len(p) for p in prompts) + max_new, self.model.block_size)
    prompts = [p[-(width - max_new) :] for p in prompts]  # a too-long prompt keeps its end
    texts = []
    for i in range(0, len(prompts), EVAL_CHUNK):
      chunk = prompts[i : i + EVAL_CHUNK]
      tokens = np.zeros((EVAL_CHUNK, width), np.int32)
      lengths = np.ones((EVAL_CHUNK,), np.int32)
      for j, p in enumerate(chunk):
        tokens[j, : len(p)], lengths[j] = p, len(p)
      out = np.asarray(_greedy(self.model, params, tokens, lengths, max_new))
      texts += [self.tokenizer.decode(row) for row in out[: len(chunk)]]
    return [t.split(e.stop)[0] if e.stop in t else None for t, e in zip(texts, examples)]

  def final_metrics(self, variables) -> dict[str, float]:
    examples = self._examples["validation"][: self.config.data.eval_examples or None]
    got = self.answers(variables["params"], examples)
    return {"exact_match": float(np.mean([g == e.answer for g, e in zip(got, examples)]))}

  def showcase(self, variables) -> None:
    examples = self._examples["validation"][:5]
    for e, got in zip(examples, self.answers(variables["params"], examples)):
      mark = "ok " if got == e.answer else "bad"
      print(f"{mark} {e.prompt.strip()!r:40} expected {e.answer!r:14} got {got!r}", flush=True)
    super().showcase(variables)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _greedy(model, params, tokens, lengths, max_new: int):
  """tokens (B, W) with each row's prompt left-aligned, lengths (B,) -> (B, max_new) greedy
  continuations; a full forward pass per token (W is a few dozen, so no KV cache is needed)."""
  rows = jnp.arange(tokens.shape[0])

  def step(s, carry):
    tokens, out = carry
    logits = model.apply({"params": params}, tokens)  # (B, W, V)
    next_token = logits[rows, lengths + s - 1].argmax(-1).astype(jnp.int32)  # (B,)
    tokens = tokens.at[rows, jnp.minimum(lengths + s, tokens.shape[1] - 1)].set(next_token)
    return tokens, out.at[:, s].set(next_token)

  out = jnp.zeros((tokens.shape[0], max_new), jnp.int32)
  return jax.lax.fori_loop(0, max_new, step, (tokens, out))[1]
