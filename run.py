"""bigmodel_jax entry point.

  python run.py --experiment=textgen[:preset] [--config.section.key=value ...]
                [--workdir=./workdir/<experiment>] [--mode=train|eval|plan|<task mode>]

This file parses flags, does the process-wide JAX setup once (`runtime.initialize`), and hands the
run to `bigmodel_jax.trainer.run(config, workdir, mode)`. Errors meant for people become one line
on stderr and an exit code (2 usage, 1 runtime).
"""

import logging as std_logging
import sys
from typing import NamedTuple

from absl import app, flags, logging

from bigmodel_jax import config as config_lib
from bigmodel_jax.errors import RunError, UsageError

_EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment name, optionally :preset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes; default ./workdir/<name>.")
_MODE = flags.DEFINE_string("mode", "train", "train, eval, plan, or a task's mode (e.g. sample).")


class Args(NamedTuple):
  positional: list[str]
  overrides: dict[str, str]  # {"model.num_layers": "2"} from --config.model.num_layers=2


def parse_flags(argv: list[str]) -> Args:
  try:
    return Args(*config_lib.parse_command_line(argv))
  except UsageError as e:
    _fail(e)


def quiet_libraries() -> None:
  """Keeps orbax's, grain's and TFDS's INFO chatter out of the log; their warnings still show."""
  noisy = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/jax/_src/xla_bridge")
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or not any(n in r.pathname for n in noisy)
  )


def main(args: Args) -> None:
  quiet_libraries()
  if len(args.positional) > 1:
    _fail(
        UsageError(
            f"unexpected arguments {args.positional[1:]}; flags look like --experiment=textgen"
        )
    )
  try:
    config = config_lib.from_command_line(_EXPERIMENT.value, args.overrides)
    workdir = _WORKDIR.value or f"./workdir/{config.experiment.split(':')[0]}"
    # Imported late: config errors come back fast, without starting JAX.
    from bigmodel_jax import runtime, trainer  # pylint: disable=g-import-not-at-top

    runtime.initialize(config)
    trainer.run(config, workdir, _MODE.value)
  except (UsageError, RunError) as e:
    _fail(e)


def _fail(error: UsageError | RunError) -> None:
  print(f"error: {error}", file=sys.stderr)
  sys.exit(error.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
