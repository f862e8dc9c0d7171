"""The one trainer: `run(config, workdir, mode)`; every experiment goes through it.

The task owns the loss, metrics and batch layout; this file knows nothing about any model. The
pure step functions live in `steps.py`; either strategy of `parallel.py` compiles them, and this
file runs the loop around them: restore, train, evaluate, log, checkpoint, showcase.
"""

import contextlib
import functools
import itertools
import math
import os
import time

from absl import logging
import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp

from bigmodel_jax import (
    checkpoint,
    interop,
    lora,
    optim,
    parallel,
    plan,
    profiling,
    safety,
    serve,
    steps,
    tasks,
)
from bigmodel_jax import metrics as metrics_lib
from bigmodel_jax.compress import distill, prune, quantize
from bigmodel_jax.compress import report as compress_report
from bigmodel_jax.errors import RunError, UsageError


def run(config, workdir: str, mode: str = "train", **test_hooks):
  """Validates everything it can, then trains (mode "train"), evaluates, plans or runs a task mode.

  Process-wide JAX setup (`runtime.initialize`) is the caller's: run.py does it once.
  test_hooks (tests only): stop_after=N stops training at step N as if interrupted;
  poison_steps=(N, ...) makes those steps' gradients NaN.
  """
  config = distill.with_saved(config, workdir)  # a distilled student's model is its own
  task = lora.wrap(tasks.get(config.task)(config), config)  # adapters when model.lora asks
  task = quantize.wrap(task, workdir)  # int8 kernels when the workdir holds a quantized checkpoint
  task = distill.wrap(task, config, train=mode == "train")  # a teacher when distill.teacher is set
  valid = ["train", "eval", "plan", "compress", *task.modes, *serve.MODES]
  if mode not in valid:
    raise UsageError(
        f"--mode={mode!r} is not valid for {config.experiment}; valid: {', '.join(valid)}"
    )
  if mode in serve.MODES:
    serve.check_mode(mode, config)
  if mode == "serve" and config.serve.bundle:  # an exported bundle: no checkpoint, no task
    return serve.serve_bundle(config)
  best_metric = config.checkpoint.best_metric
  if best_metric and best_metric not in task.eval_metrics:
    raise UsageError(
        f"checkpoint.best_metric={best_metric!r} is not a metric every evaluation "
        f"of {config.task} reports; valid: {', '.join(task.eval_metrics)}"
    )
  strategy = parallel.make(config)
  if mode == "plan":
    return plan.plan(config, task)
  safety.check_workdir(workdir, writing=mode == "train")
  if mode in ("compress", "train"):
    quantize.check_not_quantized(workdir, mode)
  if mode == "train":
    tx = _optimizer(config)[0]
    plan.check_fits(
        strategy.abstract(
            functools.partial(steps.init_state, task=task, tx=tx), jax.random.key(config.seed)
        )
    )
    ckpt_dir = os.path.join(workdir, checkpoint.DIRECTORY)
    done = checkpoint.latest_step_number(ckpt_dir)
    if done is not None and done > config.train.steps:
      raise UsageError(
          f"train.steps={config.train.steps} is below the step of the checkpoint in "
          f"{ckpt_dir} ({done}); raise train.steps to train on, or use --mode=eval"
      )
    with safety.RemoveIfFailed(workdir, lambda: checkpoint.has_steps(ckpt_dir)):
      os.makedirs(workdir, exist_ok=True)
      # One writer per workdir; on several processes (one shared workdir) process 0 holds it.
      lock = safety.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
      with lock:
        return train_and_evaluate(config, workdir, task, strategy, **test_hooks)

  task.setup(workdir, create=False)
  config = prune.with_saved(config, workdir)  # a pruned run's masks are part of its state
  tx = _optimizer(config)[0]
  if isinstance(task, quantize.QuantTask):  # its checkpoint holds no optimizer moments
    tx = quantize.frozen_optimizer()
  init_fn = functools.partial(steps.init_state, task=task, tx=tx)
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
  restored = ckpt.restore_latest(
      strategy.abstract(init_fn, jax.random.key(config.seed)), None, config
  )
  ckpt.close()
  if restored is None and config.init_from:  # score or sample a pretrained model before training
    restored = _from_init_from(config, init_fn, jax.random.key(config.seed), tx, task), 0
  if restored is None:
    raise RunError(
        f"no checkpoint in {ckpt.directory}; train first with python run.py "
        f"--experiment={config.experiment} --workdir={workdir}"
    )
  state, step = strategy.place(restored[0]), restored[1]
  if mode == "compress":
    return compress_report.run(config, workdir, task, strategy, state, step, Evaluator)
  if mode == "eval":
    values = Evaluator(task, strategy, config)(state, final=True)
    metrics_lib.log_eval(step, "validation", values)
    print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
    return values
  variables = _variables(strategy.to_host_layout(state))
  if mode in serve.MODES:
    return serve.run(mode, task, config, tasks.base.plain_variables(task, variables), workdir)
  return task.modes[mode](variables)


class Evaluator:
  """The task's eval step, compiled once per run; a call sums its metrics over the eval batches.

  With `final` (end of training, --mode=eval) it adds the task's host-side `final_metrics`.
  """

  def __init__(self, task, strategy, config):
    self.task, self.strategy = task, strategy
    self.batch_size = config.train.batch_size // jax.process_count()
    self.step_fn = strategy.compile(
        functools.partial(steps.eval_step, task=task, axis_name=strategy.axis_name), train=False
    )

  def __call__(self, state, final: bool = False, interrupted=lambda: False) -> dict | None:
    """-> {metric: value}, or None when `interrupted()` turned true between batches."""
    totals = None
    for batch in self.task.eval_batches(self.batch_size):
      if interrupted():
        logging.warning("Evaluation stopped part-way by %s", interrupted())
        return None
      m = self.strategy.metrics_to_host(
          self.step_fn(state, self.strategy.put_batch(batch), jax.random.key(0))
      )
      totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
    values = self.task.summarize(metrics_lib.reduce(totals))
    if final:
      values.update(self.task.final_metrics(_variables(self.strategy.to_host_layout(state))))
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:  # a NaN is never reported as a result
      raise RunError(
          f"evaluation gave non-finite {', '.join(bad)} ({values[bad[0]]}): the "
          "parameters or the validation data hold NaN/Inf values"
      )
    return values


def train_and_evaluate(config, workdir: str, task, strategy, **test_hooks):
  # Signals are handled before anything is written: during setup one stops the run at once.
  stop = safety.StopOnSignal()
  try:
    return _train_and_evaluate(config, workdir, task, strategy, stop, **test_hooks)
  finally:
    stop.restore()


def _train_and_evaluate(
    config,
    workdir: str,
    task,
    strategy,
    stop,
    *,
    stop_after: int | None = None,
    poison_steps: tuple[int, ...] = (),
):
  primary = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  # Process 0 builds what the run saves (e.g. trains the tokenizer); the others then load it.
  if primary:
    task.setup(workdir, create=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("task setup")
    if not primary:
      task.setup(workdir, create=False)
  tx, schedule = _optimizer(config)
  init_fn = functools.partial(steps.init_state, task=task, tx=tx)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  per_process = config.train.batch_size // jax.process_count()
  data = task.train_iterator(per_process, config.seed, jax.process_index(), jax.process_count())
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint)
  best_metric = config.checkpoint.best_metric
  best = checkpoint.Checkpointer(workdir, config.checkpoint, best=True) if best_metric else None
  state, start = _restore_or_init(config, strategy, ckpt, init_fn, init_rng, data, tx, task)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  host_params = strategy.to_host_layout(state).params
  n_params = sum(x.size for x in jax.tree.leaves(host_params))
  n_train = optim.trainable_count(host_params, config.train, lora.enabled(config))
  peak, peak_source = metrics_lib.peak_flops_per_device(metrics_lib.matmul_dtype(config))
  logging.info(
      "Model: %s parameters (%s trainable); %s strategy on %d device(s); MFU peak %.3g FLOP/s "
      "per device (%s)",
      f"{n_params:,}",
      f"{n_train:,}",
      strategy.name,
      strategy.num_devices,
      peak,
      peak_source,
  )

  step_fn = strategy.compile(
      functools.partial(
          steps.train_step,
          task=task,
          tx=tx,
          schedule=schedule,
          accum=config.train.grad_accum_steps,
          axis_name=strategy.axis_name,
          poison_steps=tuple(poison_steps),
      )
  )
  evaluate = Evaluator(task, strategy, config)
  writer = metrics_lib.MetricWriter(workdir, enabled=primary, resume_step=start)
  profiler = profiling.StepProfiler(config.train.profile_steps, workdir, enabled=primary)
  progress = metrics_lib.Progress(config.train.steps, start)
  guard = safety.NanGuard(config.train.on_nan, config.train.max_nan_skips)
  t = config.train
  units_per_step = t.batch_size * task.units_per_example
  batches = itertools.chain([next(data)] if start < t.steps else [], data)  # first one in setup
  stop.training()  # from here a signal finishes the step and saves
  pending, stopping = [], None
  try:
    for step in range(start + 1, t.steps + 1):
      profiler.before(step)
      with profiler.annotate(step):
        state, (m, flags) = step_fn(state, strategy.put_batch(next(batches)), step_rng)
      profiler.after(step, state)
      pending.append(m)
      guard.add(step, flags)
      if step == start + 1:
        jax.block_until_ready(state)
        logging.info(
            "First step (compile + run) took %.1f s", time.perf_counter() - progress.start_time()
        )
        progress.update(step)  # throughput from here on leaves compilation out
      if step == stop_after:
        stop.requested = f"stop_after={stop_after}"
      stopping = stop.requested  # read once: a signal may land anywhere below
      last = step == t.steps or bool(stopping)
      if step % t.log_every == 0 or last:
        guard.check()
        values = _reduce_pending(strategy, pending)
        pending = []
        per_step, eta = progress.update(step)
        values[f"{task.unit}_per_s"] = units_per_step / per_step
        if task.flops_per_unit:
          values["mfu"] = (
              task.flops_per_unit * units_per_step / per_step / (peak * strategy.num_devices)
          )
        values["skipped_steps"] = guard.skipped_total
        writer.write(step, "train", task.summarize(values))
        if primary:
          logging.info(progress.line(step, values, eta))
      paused = time.perf_counter()
      if step % t.eval_every == 0 or last:
        guard.check()
        values = evaluate(state, final=step == t.steps, interrupted=lambda: stop.requested)
        if values is not None:
          writer.write(step, "validation", values)
          metrics_lib.log_eval(step, "validation", values)
          if best is not None:
            best.save(
                step,
                strategy.to_host_layout(state),
                data,
                config.to_dict(),
                force=True,
                metrics={best_metric: values[best_metric]},
            )
      if stop.requested and not stopping:  # arrived during evaluation: save now, not a step on
        stopping, last = stop.requested, True
      if step % config.checkpoint.every_steps == 0 or last:
        guard.check()  # never save a step after a NaN that is meant to stop the run
        safety.check_finite_params(state.params, step)
        ckpt.save(step, strategy.to_host_layout(state), data, config.to_dict(), force=True)
      progress.exclude(time.perf_counter() - paused)
      if stopping:
        logging.warning("Stopped at step %d on %s; checkpoint saved", step, stopping)
        break
  finally:
    profiler.stop()
    ckpt.close()  # waits for async saves to commit
    if best is not None:
      best.close()
    writer.close()
  if start == t.steps:
    logging.info("Already trained to train.steps=%d; raise it to train further", t.steps)
  if not stopping and primary:
    task.showcase(_variables(strategy.to_host_layout(state)))
  return state


def _restore_or_init(config, strategy, ckpt, init_fn, init_rng, data, tx, task):
  """-> (state in the strategy's layout, its step)."""
  # Restore order: (1) the latest valid checkpoint in this workdir (resume: state, data position
  # and all); (2) config.init_from, another run's parameters or a Hugging Face folder's (hf:<dir>)
  # (fine-tuning; fresh optimizer, step 0); (3) a fresh init.
  # A distillation run's teacher is in no checkpoint: distill.attach adds it on every path.
  restored = ckpt.restore_latest(strategy.abstract(init_fn, init_rng), data, config)
  if restored is not None:
    logging.info("Resumed from %s/%d", ckpt.directory, restored[1])
    return strategy.place(distill.attach(restored[0], task)), restored[1]
  if config.init_from:
    state = _from_init_from(config, init_fn, init_rng, tx, task)
    return strategy.place(distill.attach(state, task)), 0
  state = strategy.init_state(init_fn, init_rng)
  if isinstance(task, distill.DistillTask):  # the teacher's values replace its fresh init
    state = strategy.place(distill.attach(strategy.to_host_layout(state), task))
  return state, 0


def _from_init_from(config, init_fn, init_rng, tx, task) -> steps.TrainState:
  """A fresh state (host layout) with config.init_from's parameters: another run's (of this task
  or one it declares in Task.init_from_tasks), or a Hugging Face folder's (hf:<dir>, through the
  task's `pretrained_params`)."""
  fresh = jax.jit(lambda r: flax.linen.meta.unbox(init_fn(r)))(init_rng)
  # LoRA adapters are this run's own: the base parameters come from init_from, they stay fresh.
  base = {k: v for k, v in fresh.params.items() if k != lora.KEY}
  abstract = jax.eval_shape(lambda: base)
  if interop.is_hf(config.init_from):
    params = checkpoint.keep_fresh(task.pretrained_params(abstract), base, config.init_reinit)
  else:
    tasks_ok = (config.task, *task.init_from_tasks)
    params = checkpoint.params_from(config.init_from, abstract, base, config.init_reinit, tasks_ok)
  if lora.KEY in fresh.params:
    params = {**params, lora.KEY: fresh.params[lora.KEY]}
  return fresh.replace(params=params, opt_state=tx.init(params))


def _optimizer(config):
  """The run's optimizer and schedule; with config.prune, its pruning link last (masks in the
  optimizer state)."""
  tx, schedule = optim.make_optimizer(config.train, lora.enabled(config))
  return prune.wrap(tx, config), schedule


def _variables(state: steps.TrainState) -> dict:
  """What a model's apply takes: {"params": ..., other collections (e.g. batch_stats)}."""
  return {"params": state.params, **state.model_state}


def _reduce_pending(strategy, pending) -> dict[str, float]:
  """Sums per-step metric sums; norms and lr (count 1 per step) average over the steps."""
  total = jax.tree.map(lambda *xs: sum(xs), *[strategy.metrics_to_host(m) for m in pending])
  return metrics_lib.reduce(total)
