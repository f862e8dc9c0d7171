"""Language modelling: next-token prediction over a tokenized text corpus (textgen)."""

import functools
import math
import os

from absl import logging
import jax
import numpy as np
import optax

from bigmodel_jax import generate, models
from bigmodel_jax.data import corpora, lm_pipeline, tokenizers
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.interop import lm as hf_io
from bigmodel_jax.models import gpt
from bigmodel_jax.tasks import base

TOKENIZER_DIR = "tokenizer"


class Task(base.Task):
  """Batches are {"inputs": int32 (B, T), "targets": int32 (B, T)}; loss is mean token NLL."""

  unit = "tokens"
  eval_metrics = ("loss", "accuracy", "perplexity")

  def __init__(self, config):
    super().__init__(config)
    # init_from=hf:<dir>: its config.json sets the architecture (and the tokenizer, by default).
    self.pretrained = hf_io.pretrained(config)
    self.hf_tokenizer = hf_io.tokenizer(config)  # data.tokenizer=hf:<dir>, else None
    if config.data.tokenizer not in tokenizers.NAMES and self.hf_tokenizer is None:
      raise UsageError(
          f"data.tokenizer={config.data.tokenizer!r} is not valid; "
          f"valid: {', '.join(tokenizers.NAMES)}, hf:<dir>"
      )
    s = config.sample
    if (
        s.temperature < 0
        or not 0 < s.top_p <= 1
        or s.top_k < 0
        or s.max_new_tokens < 0
        or (s.num_samples < 0)
    ):
      raise UsageError(
          f"sample settings out of range: temperature={s.temperature} (>= 0; 0 is greedy), "
          f"top_p={s.top_p} (in (0, 1]), top_k={s.top_k} (>= 0), max_new_tokens="
          f"{s.max_new_tokens} (>= 0), num_samples={s.num_samples} (>= 0); see config.sample"
      )
    self.units_per_example = config.model.block_size
    if config.data.tokenizer == "byte":  # one token per UTF-8 byte: checkable before any work
      self._check_showcase_prompt(len(config.sample.prompt.encode("utf-8")))
    self.modes = {"sample": self.sample, "export_hf": self.export_hf}
    self.tokenizer, self.workdir = self.hf_tokenizer, None
    # The model is built now (with the configured vocabulary) so that shape errors come early.
    self.model = models.make(config.model, ("gpt",), vocab_size=self._vocab_size())
    self._flops = (None, 0.0)  # (the model they were counted for, training FLOPs per token)
    self._names = (None, [])  # (the tokenizer they were decoded with, output_names())

  @property
  def flops_per_unit(self) -> float:
    """Training FLOPs per token of `self.model` as it is now: setup() rebuilds the model with the
    tokenizer's vocabulary and bench.py swaps in its own, so a count from __init__ goes stale."""
    if self._flops[0] is not self.model:
      self._flops = (self.model, gpt.flops_per_token(self.model))
    return self._flops[1]

  def _vocab_size(self) -> int:
    if self.pretrained:
      return self.pretrained.hf.vocab_size
    return (
        self.tokenizer.vocab_size
        if self.tokenizer
        else (256 if self.config.data.tokenizer == "byte" else self.config.data.vocab_size)
    )

  # --- data ---------------------------------------------------------------------------------

  def setup(self, workdir: str, create: bool) -> None:
    """Loads the run's tokenizer from the workdir, or (create) trains and saves one there."""
    directory = os.path.join(workdir, TOKENIZER_DIR)
    self.workdir = workdir
    if os.path.exists(directory):
      self.tokenizer = tokenizers.load_tokenizer(directory)
    elif self.hf_tokenizer is not None:  # saved with the run, like a trained one
      self.tokenizer = self.hf_tokenizer
      if self.pretrained:
        self.pretrained.check_tokenizer(self.tokenizer)
      if create:
        hf_io.save_tokenizer(self.tokenizer, directory)
    elif create:
      self.tokenizer = tokenizers.build_tokenizer(
          self.config.data.tokenizer,
          self._splits["train"],
          vocab_size=self.config.data.vocab_size,
          model_type=self.config.data.spm_model_type,
          directory=directory,
      )
    else:
      raise RunError(
          f"no tokenizer in {directory}; train first with "
          f"python run.py --experiment={self.config.experiment} --workdir={workdir}"
      )
    if self.pretrained:
      self.pretrained.check_tokenizer(self.tokenizer)
    self.model = models.make(self.config.model, ("gpt",), vocab_size=self._vocab_size())
    if create:
      self._check_showcase_prompt(len(self.tokenizer.encode(self.config.sample.prompt)))

  def _check_showcase_prompt(self, n: int) -> None:
    """The samples shown after training must fit the context: say so before training, not after.
    `n` is the prompt's length in tokens."""
    s, context = self.config.sample, self.config.model.block_size
    if s.num_samples > 0 and s.prompt:
      if n >= context:
        raise UsageError(
            f"sample.prompt is {n} tokens but model.block_size={context}: the samples "
            "shown after training would not fit; shorten the prompt, or set "
            "sample.num_samples=0"
        )

  @functools.cached_property
  def _splits(self):
    d = self.config.data
    return corpora.load_text_splits(
        d.source, data_dir=d.tfds_data_dir, val_percent=d.val_percent, text_key=d.text_key
    )

  @functools.lru_cache(maxsize=2)
  def _tokens(self, split: str) -> np.ndarray:
    tokens = lm_pipeline.tokenize_corpus(self._splits[split], self.tokenizer)
    logging.info("%s split: %s tokens", split, f"{len(tokens):,}")
    return tokens

  def train_iterator(self, batch_size: int, seed: int, process_index: int, process_count: int):
    ds = lm_pipeline.train_dataset(
        self._tokens("train"),
        seq_len=self.config.model.block_size,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
    return iter(ds)

  def eval_batches(self, batch_size: int):
    return lm_pipeline.eval_batches(
        self._tokens("validation"),
        seq_len=self.config.model.block_size,
        batch_size=batch_size,
        num_batches=self.config.train.eval_batches,
    )

  # --- model and loss -----------------------------------------------------------------------

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (batch_size, self.config.model.block_size)
    return {
        "inputs": jax.ShapeDtypeStruct(shape, np.int32),
        "targets": jax.ShapeDtypeStruct(shape, np.int32),
    }

  def init_variables(self, rng):
    tokens = np.zeros((1, self.config.model.block_size), np.int32)
    return self.model.init({"params": rng}, tokens, train=False)

  def loss(self, params, model_state, batch, rng, train: bool):
    return self.loss_and_logits(params, model_state, batch, rng, train)[:2]

  def loss_and_logits(self, params, model_state, batch, rng, train: bool):
    logits = self.model.apply(
        {"params": params, **model_state}, batch["inputs"], train=train, rngs={"dropout": rng}
    )  # (B, T, V) float32, V padded to model.vocab_multiple
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    count = np.float32(token_loss.size)
    correct = (logits.argmax(-1) == batch["targets"]).sum()
    metrics = {"loss": (token_loss.sum(), count), "accuracy": (correct.astype(np.float32), count)}
    # The padding rows of the vocabulary are no tokens: distillation compares the real ones.
    return token_loss.mean(), (metrics, model_state), logits[..., : self._vocab_size()]

  def output_names(self) -> list[str]:
    """Each token of the vocabulary, decoded (cached: a 50k vocabulary takes a moment)."""
    if self._names[0] is not self.tokenizer:
      n = self.tokenizer.vocab_size
      self._names = (self.tokenizer, [self.tokenizer.decode([i]) for i in range(n)])
    return self._names[1]

  def summarize(self, values: dict[str, float]) -> dict[str, float]:
    if "loss" in values:
      values["perplexity"] = math.exp(min(values["loss"], 50.0))
    return values

  # --- generation ---------------------------------------------------------------------------

  def sample(self, variables) -> list[str]:
    """`--mode=sample`: generates from config.sample.prompt and prints the samples."""
    s = self.config.sample
    prompt = self.tokenizer.encode(s.prompt)
    max_new = s.max_new_tokens
    if 0 < len(prompt) < self.model.block_size < len(prompt) + max_new:
      max_new = self.model.block_size - len(prompt)
      logging.warning(
          "sample.max_new_tokens=%d does not fit the context (model.block_size=%d) "
          "after the %d-token prompt; generating %d",
          s.max_new_tokens,
          self.model.block_size,
          len(prompt),
          max_new,
      )
    out = generate.generate(
        self.model,
        variables["params"],
        prompt,
        max_new_tokens=max_new,
        rng=jax.random.key(s.seed),
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        num_samples=s.num_samples,
    )
    texts = [self.tokenizer.decode(row) for row in np.asarray(out)]
    for i, text in enumerate(texts):
      print(
          f"--- sample {i + 1}/{len(texts)} (temperature {s.temperature}, top_k {s.top_k}, "
          f"top_p {s.top_p}, seed {s.seed}) ---\n{text}\n",
          flush=True,
      )
    return texts

  # --- Hugging Face interop -----------------------------------------------------------------

  def pretrained_params(self, abstract_params):
    """config.init_from=hf:<dir>: the folder's weights as this model's parameters."""
    return self.pretrained.params(abstract_params, self.model.param_dtype)

  def export_hf(self, variables) -> str:
    """`--mode=export_hf`: writes <workdir>/export_hf, a folder transformers loads."""
    folder = os.path.join(self.workdir, hf_io.EXPORT_DIR)
    hf_io.export(variables["params"], self.model, folder, self.tokenizer)
    print(f"wrote {folder} (transformers: AutoModelForCausalLM.from_pretrained)", flush=True)
    return folder

  def showcase(self, variables) -> None:
    if self.config.sample.num_samples > 0:
      self.sample(variables)
