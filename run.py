"""bigmodel_jax entry point.

  python run.py --experiment=textgen[:preset] [--config.section.key=value ...]
                [--workdir=./workdir/<experiment>] [--mode=train|eval|<task mode>]

All the work happens in `bigmodel_jax.trainer.run(config, workdir, mode)`; this file parses flags and
turns errors meant for people into one line on stderr and an exit code (2 usage, 1 runtime).
"""

import sys

from absl import app
from absl import flags
from absl import logging
import logging as std_logging

from bigmodel_jax import config as config_lib
from bigmodel_jax.errors import RunError, UsageError

_EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment name, optionally :preset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes; default ./workdir/<name>.")
_MODE = flags.DEFINE_string("mode", "train", "train, eval, or a mode of the experiment's task.")


def split_config_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """Separates `--config.a.b=v` (or `--config.a.b v`) from the flags absl parses."""
  rest, overrides = [], {}
  args = iter(argv)
  for arg in args:
    if arg.startswith("--config."):
      key, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        value = next(args, None)
        if value is None or value.startswith("--"):
          raise UsageError(f"--config.{key} needs a value: --config.{key}=VALUE")
      overrides[key] = value
    else:
      rest.append(arg)
  return rest, overrides


def parse_flags(argv: list[str]) -> list[str]:
  try:
    rest, overrides = split_config_overrides(argv)
    positional = flags.FLAGS(rest)
  except flags.Error as e:
    _fail(UsageError(str(e).splitlines()[0]))
  except UsageError as e:
    _fail(e)
  parse_flags.overrides = overrides
  return positional


def quiet_libraries() -> None:
  """Keeps orbax's, grain's and TFDS's INFO chatter out of the log; their warnings still show."""
  noisy = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/jax/_src/xla_bridge")
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or not any(n in r.pathname for n in noisy))


def main(argv: list[str]) -> None:
  quiet_libraries()
  if len(argv) > 1:
    _fail(UsageError(f"unexpected arguments {argv[1:]}; flags look like --experiment=textgen"))
  try:
    config = config_lib.load_experiment(_EXPERIMENT.value)
    config_lib.apply_overrides(config, parse_flags.overrides)
    config_lib.validate(config)
    workdir = _WORKDIR.value or f"./workdir/{config.experiment.split(':')[0]}"
    from bigmodel_jax import trainer  # imported late: config errors come back fast, without jax
    trainer.run(config, workdir, _MODE.value)
  except (UsageError, RunError) as e:
    _fail(e)


def _fail(error: UsageError | RunError) -> None:
  print(f"error: {error}", file=sys.stderr)
  sys.exit(error.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
