"""Shared test helpers: tiny configs on a private data cache, and reading metrics.jsonl."""

import json
import os

from bigmodel_jax import config as config_lib


def tiny_config(data_dir: str, experiment: str = "textgen:tiny", **overrides):
  """The experiment's tiny preset, with dotted-key overrides given as name__sub=value."""
  c = config_lib.load_experiment(experiment)
  c.data.tfds_data_dir = data_dir
  c.sample.num_samples = 0
  config_lib.set_values(c, {k.replace("__", "."): v for k, v in overrides.items()}, "test")
  config_lib.validate(c)
  return c


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict]:
  """{step: record} for one split; a later line for the same step wins (as after a resume)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if record["split"] == split:
        out[record["step"]] = record
  return out
