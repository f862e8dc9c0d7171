"""Shared test helpers: tiny configs on a private data cache, running the trainer quietly, and
reading metrics.jsonl."""

import contextlib
import csv
import io
import json
import os
import random

import jax.numpy as jnp
import tensorflow_datasets as tfds

from bigmodel_jax import config as config_lib
from bigmodel_jax import trainer

# Every field of models.gpt.GPT at a tiny size, for tests that build the module directly.
TINY_GPT = dict(
    vocab_size=32,
    block_size=16,
    num_layers=2,
    num_heads=2,
    embed_dim=16,
    mlp_dim=0,
    dropout=0.0,
    positions="learned",
    use_bias=True,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    attention_impl=None,
    remat="none",
)


def tiny_config(data_dir: str, experiment: str = "textgen:tiny", **overrides):
  """The experiment's tiny preset, with dotted-key overrides given as name__sub=value."""
  c = config_lib.load_experiment(experiment)
  if "tfds_data_dir" in c.data:
    c.data.tfds_data_dir = data_dir
  if "sample" in c:
    c.sample.num_samples = 0  # no showcase samples: tests that want them ask
  config_lib.set_values(c, {k.replace("__", "."): v for k, v in overrides.items()}, "test")
  config_lib.validate(c)
  return c


def run_quietly(config, workdir, mode: str = "train", **hooks):
  """trainer.run -> (its result, what it printed)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = trainer.run(config, str(workdir), mode, **hooks)
  return result, out.getvalue()


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict]:
  """{step: record} for one split; a later line for the same step wins (as after a resume)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if record["split"] == split:
        out[record["step"]] = record
  return out


def prepared_tfds_metadata(data_dir, name, splits):
  """Writes the dataset_info.json a prepared array_record dataset would have.

  `mock_data`'s default policy (USE_CODE) reports no splits and an unprepared
  dataset, so real split selection is tested with USE_FILES and this metadata.
  """
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix="array_record"
  )
  builder.info.set_splits(
      tfds.core.SplitDict(
          [
              tfds.core.SplitInfo(
                  name=s, shard_lengths=[n], num_bytes=0, filename_template=template
              )
              for s, n in splits.items()
          ]
      )
  )
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)


TOPIC_WORDS = {
    "food": ("pasta", "sauce", "bread", "cheese"),
    "sports": ("goal", "match", "team", "score"),
    "weather": ("rain", "sunny", "storm", "cloud"),
}


def topics(n: int, seed: int = 0) -> list[tuple[str, str]]:
  """(text, label) rows of 3 classes (TOPIC_WORDS), numbered so each text is distinct; every
  fifth text holds a comma, quotes and a line break."""
  r = random.Random(seed)
  rows = []
  for i in range(n):
    label = sorted(TOPIC_WORDS)[i % 3]
    words = [r.choice(TOPIC_WORDS[label]) for _ in range(4)]
    text = " ".join(words)
    if i % 5 == 0:
      text = f'{words[0]}, "{words[1]}",\n{" ".join(words[2:])}'
    rows.append((f"{text} #{i}", label))
  return rows


def write_csv(path, rows, header=("id", "text", "label"), delimiter=",") -> str:
  """Writes (text, label) rows with a numbered id column as CSV (or TSV); returns the path."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter=delimiter)
    if header:
      writer.writerow(header)
    writer.writerows((i, text, label) for i, (text, label) in enumerate(rows))
  return str(path)
