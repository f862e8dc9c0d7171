"""Padding waste of the text tasks that pack: the fraction of row positions that are padding, one
example per row (unpacked) against several per row with segment ids (packed).

  python -m bigmodel_jax.tools.padding_waste                       # translate, sentiment, sft
  python -m bigmodel_jax.tools.padding_waste --experiments=translate:ted_pt_en --split=validation

Each experiment's data is built as a run builds it (its tokenizer is trained or made in a scratch
folder, deleted afterwards), with the experiment's row widths and packing settings; the task's
`padding_waste(split)` counts the positions. translate counts source and target rows together.
"""

import shutil
import tempfile

from absl import app, flags

from bigmodel_jax import config as config_lib
from bigmodel_jax import tasks
from bigmodel_jax.errors import UsageError

_EXPERIMENTS = flags.DEFINE_list(
    "experiments", ["translate", "sentiment", "sft"], "Experiments (name or name:preset)."
)
_SPLIT = flags.DEFINE_string("split", "train", "Which split's rows to count.")


def padding_waste(spec: str, split: str) -> dict[str, float]:
  """{"unpacked": fraction, "packed": fraction} of padding in an experiment's `split` rows."""
  config = config_lib.load_experiment(spec)
  config_lib.validate(config)
  task = tasks.get(config.task)(config)
  if not hasattr(task, "padding_waste"):
    raise UsageError(f"experiment {spec!r} (task {config.task!r}) does not pack its rows")
  scratch = tempfile.mkdtemp(prefix="padding_waste_")
  try:
    task.setup(scratch, create=True)
    return task.padding_waste(split)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def main(argv):
  del argv
  print(f"{'experiment':<24} {'split':<12} {'unpacked':>9} {'packed':>9}")
  for spec in _EXPERIMENTS.value:
    waste = padding_waste(spec, _SPLIT.value)
    print(
        f"{spec:<24} {_SPLIT.value:<12} {100 * waste['unpacked']:8.1f}% "
        f"{100 * waste['packed']:8.1f}%",
        flush=True,
    )


if __name__ == "__main__":
  app.run(main)
