"""Tasks, chosen by name (`config.task`): each owns its loss, metrics, batch layout and showcase.

A task is the class `Task` in `bigmodel_jax/tasks/<name>.py`. The trainer calls:

  Task(config)                       validates the task's config; writes nothing
  task.modes                         {mode name: fn(variables)} beyond train/eval, e.g. "sample";
                                     variables = {"params": ..., **model_state} on the host
  task.setup(workdir, create)        loads (or, when create, builds and saves) tokenizers etc.
  task.init_variables(rng)           boxed flax variables: {"params": ..., other collections}
  task.loss(params, model_state, batch, rng, train)
                                     -> (loss, (metrics as {name: (sum, count)}, new model_state))
  task.train_iterator(batch_size, seed, process_index, process_count)
                                     a checkpointable grain iterator of host batches
  task.eval_batches(batch_size)      a list of host batches
  task.batch_spec(batch_size)        optional: {name: jax.ShapeDtypeStruct}, for --mode=plan
  task.units_per_example, task.unit  throughput unit (e.g. 256 "tokens" per example)
  task.flops_per_unit                training FLOPs per unit of the model in use (after setup and
                                     any swap), for MFU (0 if unknown)
  task.summarize(values)             host-side derived metrics (e.g. perplexity)
  task.final_metrics(variables)      optional: host-side eval metrics computed once at the end of
                                     training and in --mode=eval (e.g. BLEU from beam search)
  task.showcase(variables)           what a person sees at the end of training
"""

import importlib
import pkgutil

from bigmodel_jax.errors import UsageError


def names() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__))


def get(name: str):
  if name not in names():
    raise UsageError(f"task={name!r} is not valid; valid: {', '.join(names())}")
  return importlib.import_module(f"{__name__}.{name}").Task
