"""The contract between the trainer and a task, as code: every task subclasses `Task`.

The abstract methods are what every task must provide (the trainer, `--mode=eval` and
`--mode=plan` call all of them); the rest have defaults a task overrides when it has more to say.
`bigmodel_jax.tasks.get` refuses a class that is not a complete `Task`.
"""

import abc
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import jax
import numpy as np

from bigmodel_jax.data import arrays

Batch = dict[str, Any]  # {name: numpy array}, the leading axis is the batch
Metrics = dict[str, tuple[Any, Any]]  # {name: (sum, count)}, reduced on the host


class Task(abc.ABC):
  """One application: its data, model, loss, metrics and what a person sees.

  `Task(config)` validates the task's own config fields and writes nothing.
  """

  # Throughput unit of the progress line and the benchmark: `units_per_example` `unit` per example
  # (e.g. 256 "tokens"); `flops_per_unit` is training FLOPs per unit of the model in use (after
  # setup and any swap), for MFU (0: not reported).
  unit: str = "examples"
  units_per_example: int = 1
  flops_per_unit: float = 0.0
  # What every evaluation reports (device metrics and `summarize`'s derived ones), and what only
  # the final one adds (`final_metrics`). `checkpoint.best_metric` must name one of the former;
  # tests check both lists against what evaluation really returns.
  eval_metrics: tuple[str, ...] = ("loss", "accuracy")
  final_metric_names: tuple[str, ...] = ()
  # Modes beyond train / eval / plan: {name: fn(variables)}, variables = {"params": ..., **state}
  # on the host. A task fills it in __init__ (e.g. {"sample": self.sample}).
  modes: Mapping[str, Callable[[dict], Any]] = MappingProxyType({})
  # Other tasks whose runs `config.init_from` may name (e.g. sft starts from an lm run).
  init_from_tasks: tuple[str, ...] = ()

  def __init__(self, config):
    self.config = config

  # --- data ---------------------------------------------------------------------------------

  @abc.abstractmethod
  def setup(self, workdir: str, create: bool) -> None:
    """Loads what the run saved (tokenizers, dataset statistics) from the workdir, or, with
    `create`, builds and saves it there. Called before any data or model use except plan."""

  @abc.abstractmethod
  def train_iterator(
      self, batch_size: int, seed: int, process_index: int, process_count: int
  ) -> Iterator[Batch]:
    """A checkpointable grain iterator of this process's host batches, deterministic by seed."""

  @abc.abstractmethod
  def eval_batches(self, batch_size: int) -> list[Batch]:
    """The validation batches (padded rows carry weight 0 where a task needs them)."""

  @abc.abstractmethod
  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of one training batch, so `--mode=plan` compiles without data."""

  # --- model and loss -----------------------------------------------------------------------

  @abc.abstractmethod
  def init_variables(self, rng) -> dict:
    """Boxed flax variables {"params": ..., other collections}, from shapes only."""

  @abc.abstractmethod
  def loss(
      self, params, model_state, batch: Batch, rng, train: bool
  ) -> tuple[jax.Array, tuple[Metrics, dict]]:
    """-> (scalar loss, (metrics as {name: (sum, count)}, new model_state)); pure."""

  def loss_and_logits(
      self, params, model_state, batch: Batch, rng, train: bool
  ) -> tuple[jax.Array, tuple[Metrics, dict], jax.Array]:
    """-> (`loss`'s scalar, `loss`'s (metrics, model_state), the logits it came from (..., K)),
    K = len(output_names()) (no padding rows): what distillation (compress/distill.py) needs. A
    task can be distilled when the class that defines its `loss` defines this too."""
    raise NotImplementedError

  def output_names(self) -> list[str]:
    """What each of the K logits means (class names, decoded tokens), after setup: a teacher and
    its student must agree on it."""
    raise NotImplementedError

  def after_update(self, params, model_state: dict) -> dict:
    """model_state once an update is applied, from the new `params` (e.g. an EMA of the
    weights); pure. Runs once per optimizer step, whatever train.grad_accum_steps (the loss runs
    once per micro-batch)."""
    del params
    return model_state

  def summarize(self, values: dict[str, float]) -> dict[str, float]:
    """Host-side derived metrics (e.g. perplexity from loss)."""
    return values

  def final_metrics(self, variables) -> dict[str, float]:
    """Host-side metrics computed at the end of training and in --mode=eval (e.g. BLEU)."""
    del variables
    return {}

  # --- what a person sees -------------------------------------------------------------------

  @abc.abstractmethod
  def showcase(self, variables) -> Any:
    """Printed at the end of training: samples, accuracy, a confusion matrix, ..."""

  def pretrained_params(self, abstract_params) -> Any:
    """Parameters from config.init_from=hf:<dir> (a Hugging Face folder), shaped like
    `abstract_params`; only tasks that can read such a folder override this."""
    del abstract_params
    from bigmodel_jax.errors import UsageError  # pylint: disable=g-import-not-at-top

    raise UsageError(
        f"config.init_from={self.config.init_from!r}: task {self.config.task!r} cannot start "
        "from a Hugging Face folder (the lm task of textgen can)"
    )


class ArrayTask(Task):
  """A task whose splits are in-memory arrays: `train_iterator` and `eval_batches` come from
  `split_arrays(split)` for `train_split` and `eval_split`, with `train_augment()` applied to the
  training batches on the host."""

  train_split, eval_split = "train", "test"

  @abc.abstractmethod
  def split_arrays(self, split: str) -> dict[str, np.ndarray]:
    """{name: array} of one split, examples on the leading axis (the task caches it)."""

  def train_augment(self) -> Callable[[Batch, np.random.Generator], Batch] | None:
    """A host-side fn(batch, rng) -> batch for the training batches, or None."""
    return None

  def train_iterator(self, batch_size: int, seed: int, process_index: int, process_count: int):
    return iter(
        arrays.train_dataset(
            self.split_arrays(self.train_split),
            batch_size=batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            augment=self.train_augment(),
        )
    )

  def eval_batches(self, batch_size: int) -> list[Batch]:
    return arrays.eval_batches(
        self.split_arrays(self.eval_split),
        batch_size=batch_size,
        max_batches=self.config.train.eval_batches,
    )


class WrappedTask(Task):
  """Another task whose parameters are stored transformed (LoRA adapters beside the kernels,
  int8 kernels): everything is the inner task's, except that its loss, modes, final metrics and
  showcase see `plain_params(params)`, the parameters its model applies. A subclass defines
  plain_params and the init_variables that builds the stored form."""

  def __init__(self, inner: Task):
    super().__init__(inner.config)
    self.inner = inner
    self.modes = {
        name: (lambda variables, fn=fn: fn(self.plain(variables)))
        for name, fn in inner.modes.items()
    }

  def __getattr__(self, name):  # tokenizer, model, ...: the inner task's
    if name == "inner":
      raise AttributeError(name)
    return getattr(self.inner, name)

  unit = property(lambda self: self.inner.unit)
  units_per_example = property(lambda self: self.inner.units_per_example)
  flops_per_unit = property(lambda self: self.inner.flops_per_unit)
  eval_metrics = property(lambda self: self.inner.eval_metrics)
  final_metric_names = property(lambda self: self.inner.final_metric_names)
  init_from_tasks = property(lambda self: self.inner.init_from_tasks)

  @abc.abstractmethod
  def plain_params(self, params) -> dict:
    """The stored parameters as the inner task's model applies them."""

  def plain(self, variables: dict) -> dict:
    """{"params": plain_params(...), ...}: the inner task's variables."""
    return {**variables, "params": self.plain_params(variables["params"])}

  def setup(self, workdir, create):
    self.inner.setup(workdir, create)

  def train_iterator(self, batch_size, seed, process_index, process_count):
    return self.inner.train_iterator(batch_size, seed, process_index, process_count)

  def eval_batches(self, batch_size):
    return self.inner.eval_batches(batch_size)

  def batch_spec(self, batch_size):
    return self.inner.batch_spec(batch_size)

  def loss(self, params, model_state, batch, rng, train):
    return self.inner.loss(self.plain_params(params), model_state, batch, rng, train)

  def loss_and_logits(self, params, model_state, batch, rng, train):
    return self.inner.loss_and_logits(self.plain_params(params), model_state, batch, rng, train)

  def output_names(self):
    return self.inner.output_names()

  def after_update(self, params, model_state):
    return self.inner.after_update(self.plain_params(params), model_state)

  def summarize(self, values):
    return self.inner.summarize(values)

  def final_metrics(self, variables):
    return self.inner.final_metrics(self.plain(variables))

  def showcase(self, variables):
    return self.inner.showcase(self.plain(variables))

  def pretrained_params(self, abstract_params):  # the inner model's, e.g. from a hf:<dir> folder
    return self.inner.pretrained_params(abstract_params)


def plain_variables(task: Task, variables: dict) -> dict:
  """What the innermost task's model applies, through every WrappedTask around it."""
  while isinstance(task, WrappedTask):
    task, variables = task.inner, task.plain(variables)
  return variables
