"""Benchmark: our recommender next to the `implicit` library's ALS on the same split.

  python -m bigmodel_jax.bench_recsys [--experiment=recsys[:preset]] [--config.a.b=v ...]
                                      [--workdir=DIR]

Trains the experiment (default: recsys, the offline default) with the one trainer in --workdir (a
temporary folder unless given; a finished run there is evaluated, not retrained), then fits
implicit's AlternatingLeastSquares (Hu, Koren and Volinsky 2008; implicit==0.7.3, a dev
dependency) on exactly the training interactions our model saw, and ranks the same held-out
items among the same candidates with the same code (bigmodel_jax/ranking.py). ALS is shown twice:
with implicit's defaults, and with the best of a small grid over factors, regularization and alpha
chosen on the evaluation split itself, which favours ALS: ours is not tuned that way. The most
popular baseline completes the table. Exit status 1 when ours scores below ALS's best NDCG@10.
"""

import contextlib
import io
import itertools
import sys
import tempfile
import time

from absl import app, flags
import numpy as np
import scipy.sparse
import threadpoolctl

from bigmodel_jax import config as config_lib
from bigmodel_jax import ranking, runtime, tasks, trainer
from bigmodel_jax.errors import RunError, UsageError


def _define_flags():
  """Defined only when this file is the program: its flags share names (--experiment,
  --workdir) with run.py and tools/kill_resume.py, and the tests import its ALS helpers."""
  return (
      flags.DEFINE_string("experiment", "recsys", "A recsys experiment[:preset]."),
      flags.DEFINE_string("workdir", "", "Where our model trains; default: a temp folder."),
  )


ALS_DEFAULTS = {"factors": 100, "regularization": 0.01, "alpha": 1.0}
ALS_GRID = {"factors": (16, 32, 64), "regularization": (0.1, 10.0), "alpha": (1.0, 10.0, 40.0)}
ALS_ITERATIONS = 15  # implicit's default


def fit_als(task, seed: int, **params):
  """implicit ALS on the task's training interactions -> (model, user x item CSR, seconds)."""
  try:
    from implicit.cpu.als import (  # pylint: disable=g-import-not-at-top
        AlternatingLeastSquares,
    )
  except ImportError:
    raise RunError(
        "the benchmark needs implicit: python -m pip install -r requirements-dev.txt"
    ) from None
  s = task.split
  user_items = scipy.sparse.csr_matrix(
      (np.ones(len(s.train_users), np.float32), (s.train_users, s.train_items)),
      shape=(task.data.num_users, task.num_items),
  )
  # implicit asks for single-threaded BLAS (its own threads do the work) and warns otherwise.
  with threadpoolctl.threadpool_limits(1, "blas"):
    model = AlternatingLeastSquares(
        iterations=ALS_ITERATIONS, random_state=seed, num_threads=0, **params
    )
    start = time.perf_counter()
    model.fit(user_items, show_progress=False)
  return model, user_items, time.perf_counter() - start


def als_scores(model):
  """users int (B,) -> (B, I) ALS scores, for `task.evaluate`."""
  users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
  return lambda batch: users[batch] @ items.T


def run(spec: str, overrides: dict, workdir: str) -> dict[str, dict]:
  config = config_lib.from_command_line(spec, overrides)
  if config.task != "recsys":
    raise UsageError(f"--experiment={spec} is a {config.task} experiment; give a recsys one")
  runtime.initialize(config)
  rows = {}
  start = time.perf_counter()
  with contextlib.redirect_stdout(io.StringIO()):  # the showcase; the table below says it all
    trainer.run(config, workdir)
    ours = trainer.run(config, workdir, "eval")
  rows[f"ours ({config.model.name}, {config.loss.name})"] = {
      **{n: ours[n] for n in ranking.NAMES},
      "seconds": time.perf_counter() - start,
  }
  task = tasks.get("recsys")(config)
  model, _, seconds = fit_als(task, config.seed, **ALS_DEFAULTS)
  rows["implicit ALS, defaults"] = {**task.evaluate(als_scores(model)), "seconds": seconds}
  best = None
  for values in itertools.product(*ALS_GRID.values()):
    params = dict(zip(ALS_GRID, values))
    model, _, seconds = fit_als(task, config.seed, **params)
    result = {**task.evaluate(als_scores(model)), "seconds": seconds}
    if best is None or result[ranking.NAMES[1]] > best[1][ranking.NAMES[1]]:
      best = params, result
  label = ", ".join(f"{k} {v:g}" for k, v in best[0].items())
  rows[f"implicit ALS, best of grid ({label})"] = best[1]
  rows["most popular"] = {**task.popular_metrics(), "seconds": 0.0}
  return rows


def format_table(rows: dict[str, dict]) -> str:
  names = (*ranking.NAMES, "seconds")
  out = ["| model | " + " | ".join(n.replace("_at_", "@") for n in names) + " |"]
  out.append("| --- " * (len(names) + 1) + "|")
  for label, values in rows.items():
    cells = [f"{values[n]:.4f}" for n in ranking.NAMES] + [f"{values['seconds']:.1f}"]
    out.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def parse_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  try:
    return config_lib.parse_command_line(argv)
  except UsageError as e:
    _fail(e)


def main(args: tuple[list[str], dict[str, str]]) -> None:
  """args: (positional arguments, --config.* overrides of the experiment)."""
  try:
    with tempfile.TemporaryDirectory() as scratch:
      rows = run(_EXPERIMENT.value, args[1], _WORKDIR.value or f"{scratch}/run")
  except (UsageError, RunError) as e:
    _fail(e)
  print(format_table(rows), flush=True)
  ndcg = ranking.NAMES[1]
  ours = next(iter(rows.values()))[ndcg]
  best_als = max(v[ndcg] for k, v in rows.items() if k.startswith("implicit"))
  verdict = "at least as good as" if ours >= best_als else "BELOW"
  print(f"\nours: NDCG@10 {ours:.4f}, {verdict} ALS's best {best_als:.4f}", flush=True)
  if ours < best_als:
    sys.exit(1)


def _fail(error: UsageError | RunError) -> None:
  print(f"error: {error}", file=sys.stderr)
  sys.exit(error.exit_code)


if __name__ == "__main__":
  _EXPERIMENT, _WORKDIR = _define_flags()
  app.run(main, flags_parser=parse_flags)
