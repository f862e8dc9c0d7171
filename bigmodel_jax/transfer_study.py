"""The transfer study (`python run.py --experiment=ssl --mode=transfer_study`): does the ssl encoder
pay when labels are few?

For each label fraction in study.fractions, each way to start in study.starts and each seed in
study.seeds, one imagecls run (ViT, same data and model settings as the ssl run) trains on that
share of the labelled training images (drawn per class by the seed) and is scored on the whole
test split:

  scratch  a fresh ViT, every weight trained
  ssl      init_from the ssl run: its encoder, a fresh head, every weight fine-tuned
  probe    init_from the ssl run, the encoder frozen: only the linear head trains

Each run has its own workdir under <ssl workdir>/transfer_study/, so a rerun of the study (or one
interrupted) reuses the runs already finished. Prints a table of mean test accuracy and its spread
(standard deviation and range over the seeds), and writes transfer_study.json and
transfer_study.png (accuracy against label fraction) into the ssl workdir.
"""

import contextlib
import io
import json
import os

from absl import logging
import jax
import ml_collections
import numpy as np

from bigmodel_jax import classification, trainer
from bigmodel_jax import config as config_lib
from bigmodel_jax.data import images
from bigmodel_jax.errors import UsageError

STARTS = ("scratch", "ssl", "probe")


def check(s) -> None:
  """config.study: one-line UsageErrors before anything runs."""
  fractions = tuple(s.fractions)
  if not fractions or not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in fractions):
    raise UsageError(
        f"study.fractions={fractions} must be label fractions in (0, 1], e.g. 0.01,0.1,1.0"
    )
  bad = [x for x in s.starts if x not in STARTS]
  if bad or not s.starts:
    raise UsageError(
        f"study.starts={tuple(s.starts)}: {bad or 'empty'}; valid: {', '.join(STARTS)}"
    )
  if not s.seeds or s.steps < 1 or s.batch_size < 1:
    raise UsageError(
        f"study.seeds={tuple(s.seeds)} must name at least one seed, and study.steps={s.steps} "
        f"and study.batch_size={s.batch_size} be positive integers"
    )


def _dotted(prefix: str, group) -> dict:
  """{"model.lora.rank": 0, ...}: a config group's leaves by their dotted names."""
  out = {}
  for key, value in group.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_dotted(f"{prefix}.{key}", value))
    else:
      out[f"{prefix}.{key}"] = value
  return out


def imagecls_config(ssl_config, ssl_workdir: str, start: str, fraction: float, seed: int, n: int):
  """The imagecls run for one cell: the ssl run's data and model settings, `n` labelled images."""
  s = ssl_config.study
  c = config_lib.load_experiment("imagecls")
  devices = ssl_config.parallel.num_devices or jax.local_device_count()
  batch = max(devices, min(s.batch_size, n) // devices * devices)  # pmap: a multiple of devices
  values = {f"data.{k}": v for k, v in ssl_config.data.items() if k in c.data}
  values.update(_dotted("model", ssl_config.model))
  values.update(_dotted("parallel", ssl_config.parallel))
  values.update(
      {
          "compile_cache_dir": ssl_config.compile_cache_dir,
          "seed": seed,
          "data.label_fraction": float(fraction),
          "data.label_seed": seed,
          "train.steps": s.steps,
          "train.batch_size": batch,
          "train.learning_rate": s.probe_learning_rate if start == "probe" else s.learning_rate,
          "train.warmup_steps": s.steps // 10,
          "train.log_every": s.steps,
          "train.eval_every": s.steps,
          "checkpoint.every_steps": s.steps,
          "checkpoint.keep": 1,
      }
  )
  if start != "scratch":
    values.update({"init_from": os.path.abspath(ssl_workdir)})
  if start == "probe":
    values.update({"linear_probe": True, "train.weight_decay": 0.0})
  config_lib.set_values(c, values, source=f"transfer study ({start}, {fraction:g}, seed {seed})")
  config_lib.validate(c)
  return c


def run(ssl_config, ssl_workdir: str, train_labels: np.ndarray) -> dict:
  """Runs (or reuses) every cell; -> {start: {fraction: [test accuracy per seed]}}."""
  s = ssl_config.study
  root = os.path.join(ssl_workdir, "transfer_study")
  results = {start: {} for start in s.starts}
  for fraction in s.fractions:
    for seed in s.seeds:
      n = len(images.label_subset(train_labels, fraction, seed))
      for start in s.starts:
        c = imagecls_config(ssl_config, ssl_workdir, start, fraction, seed, n)
        workdir = os.path.join(root, f"{start}_{fraction:g}_seed{seed}")
        with contextlib.redirect_stdout(io.StringIO()):  # each run's showcase: not the study's
          trainer.run(c, workdir)
        accuracy = last_eval(workdir)["accuracy"]
        results[start].setdefault(float(fraction), []).append(accuracy)
        logging.info(
            "transfer study: %s, %g of the labels (%d images), seed %d: test accuracy %.4f",
            start,
            fraction,
            n,
            seed,
            accuracy,
        )
  print(format_results(results, ssl_config.data.source), flush=True)
  with open(os.path.join(ssl_workdir, "transfer_study.json"), "w") as f:
    json.dump({start: {str(k): v for k, v in r.items()} for start, r in results.items()}, f)
  path = plot(results, os.path.join(ssl_workdir, "transfer_study.png"), ssl_config.data.source)
  print(f"  plot: {path}", flush=True)
  return results


def last_eval(workdir: str) -> dict:
  """The run's last validation record in metrics.jsonl (its final evaluation)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if '"validation"' in line]
  return max(records, key=lambda r: r["step"])


def format_results(results: dict, source: str) -> str:
  starts = list(results)
  fractions = sorted(next(iter(results.values())))
  rows = []
  for fraction in fractions:
    row = [f"{100 * fraction:g}%"]
    for start in starts:
      a = 100 * np.asarray(results[start][fraction])
      row.append(f"{a.mean():.2f} +- {a.std():.2f} [{a.min():.1f}, {a.max():.1f}]")
    rows.append(row)
  seeds = len(results[starts[0]][fractions[0]])
  head = f"\n{source}: test accuracy (%), mean +- standard deviation [range] over {seeds} seeds"
  return head + "\n" + classification.format_table(["labels", *starts], rows)


def plot(results: dict, path: str, source: str) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top (only this mode draws)

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  for start, by_fraction in results.items():
    fractions = sorted(by_fraction)
    acc = [100 * np.asarray(by_fraction[f]) for f in fractions]
    x = 100 * np.asarray(fractions)
    ax.errorbar(
        x, [a.mean() for a in acc], yerr=[a.std() for a in acc], marker="o", capsize=4, label=start
    )
    for xi, a in zip(x, acc):
      ax.scatter(np.full(len(a), xi), a, s=8, alpha=0.4, color=ax.lines[-1].get_color())
  ax.set_xscale("log")
  ax.set_xlabel("labelled training images (%)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"ViT on {source}: from scratch vs from the ssl encoder")
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path
