"""Experiment configs: load by name, apply presets and `--config.a.b=v` overrides, validate.

An experiment is `experiments/<name>.py` with `get_config(arg) -> ConfigDict`; the part after a
colon in `--experiment=textgen:tiny` is `arg`. Presets are flat dicts of dotted keys, applied with
the same checked machinery as command-line overrides, so a typo in a preset fails like a typo on
the command line. Every error here is a one-line `UsageError` raised before anything is written.

Every command that takes a config (run.py, the benchmark) reads `--config.a.b=v` through
`split_overrides` and builds the config with `from_command_line`: one syntax, one set of errors.
A validated config is locked: code that sets a misspelt field fails instead of adding one.
"""

import ast
from collections.abc import Mapping
import importlib
import math
import os
from typing import Any

from absl import flags
import ml_collections

from bigmodel_jax.errors import UsageError, did_you_mean

EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments")


def available_experiments() -> list[str]:
  return sorted(
      f[:-3] for f in os.listdir(EXPERIMENTS_DIR) if f.endswith(".py") and not f.startswith("_")
  )


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """Separates `--config.a.b=v` (or `--config.a.b v`) from the flags absl parses.

  -> (the other arguments, {"a.b": "v"}); a later override of the same key wins.
  """
  rest, overrides = [], {}
  args = iter(argv)
  for arg in args:
    if arg.startswith("--config."):
      key, eq, value = arg[len("--config.") :].partition("=")
      if not eq:
        value = next(args, None)
        if value is None or value.startswith("--"):
          raise UsageError(f"--config.{key} needs a value: --config.{key}=VALUE")
      overrides[key] = value
    else:
      rest.append(arg)
  return rest, overrides


def parse_command_line(argv: list[str], flag_values=flags.FLAGS) -> tuple[list[str], dict]:
  """absl's flags and our `--config.*` overrides from argv -> (positional args, overrides);
  a bad flag is a one-line UsageError. For `app.run(main, flags_parser=...)`."""
  rest, overrides = split_overrides(argv)
  try:
    return flag_values(rest), overrides
  except flags.Error as e:
    raise UsageError(str(e).splitlines()[0]) from None


def from_command_line(
    spec: str, overrides: Mapping[str, str], values: Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
  """`--experiment=spec` with `values` (typed, e.g. a benchmark's shape) and then the
  command-line `overrides` applied, validated and locked."""
  config = load_experiment(spec)
  if values:
    set_values(config, values, source=f"{spec} settings")
  apply_overrides(config, overrides)
  validate(config)
  return config


def load_experiment(spec: str) -> ml_collections.ConfigDict:
  """`name` or `name:preset` -> the experiment's config (not yet locked)."""
  if not spec:
    raise UsageError(f"--experiment is required; one of: {', '.join(available_experiments())}")
  name, _, arg = spec.partition(":")
  if name not in available_experiments():
    raise UsageError(
        f"unknown experiment {name!r}{did_you_mean(name, available_experiments())}; "
        f"valid: {', '.join(available_experiments())}"
    )
  module = importlib.import_module(f"experiments.{name}")
  config = module.get_config(arg or None)
  config.experiment = spec
  return config


def base_config(task: str) -> ml_collections.ConfigDict:
  """The sections every experiment shares (seed, init_from, train, checkpoint, parallel), with
  defaults; an experiment file adds its data/model sections and changes what it needs."""
  c = ml_collections.ConfigDict()
  c.experiment = ""
  c.task = task
  c.seed = 0
  # Another run's workdir (or its checkpoints/ folder) to start from, e.g. for fine-tuning;
  # parameter paths matching any regex in init_reinit keep their fresh initialisation.
  c.init_from = ""
  c.init_reinit = ()

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 32  # global, over all devices and micro-batches
  c.train.grad_accum_steps = 1
  c.train.optimizer = "adamw"  # | sgd | adafactor (optim.py); all decay weights as AdamW does
  c.train.momentum = 0.9  # sgd only; 0 -> plain SGD
  c.train.nesterov = False  # sgd only
  # After a linear warmup from 0 over warmup_steps: cosine (decay to min_lr_ratio of the peak at
  # the last step) | linear (the same, linearly) | constant | wsd (warmup-stable-decay: constant,
  # then linear decay to min_lr_ratio over the last decay_fraction of the steps).
  c.train.schedule = "cosine"
  # wsd only. 0.2: Hagele et al. 2024 (arXiv:2405.18392) report that a linear cooldown over ~20%
  # of the steps matches a cosine schedule's final loss.
  c.train.decay_fraction = 0.2
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.1
  c.train.weight_decay = 0.1
  # Parameters whose '/'-joined path (e.g. h_0/attn/query/kernel) this regex finds (re.search) get
  # no weight decay: by default biases, norm scales and embeddings (GPT's wte/wpe among them).
  # "(^|/)(bias|scale)$" decays embeddings too; "" decays everything.
  c.train.no_decay = r"(^|/)(bias|scale|embedding)$|wte|wpe"
  # Only parameters whose '/'-joined path this regex finds (re.search) train; the rest stay
  # exactly as they were (fine-tuning part of a model). "" -> all of them, or, with LoRA
  # (model.lora.rank > 0), only the adapters; with LoRA, what it finds trains beside them.
  c.train.trainable = ""
  c.train.b1 = 0.9
  c.train.b2 = 0.99
  c.train.grad_clip = 1.0
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.eval_batches = 0  # 0 -> the whole validation split
  c.train.on_nan = "stop"  # | skip: reject non-finite updates, up to max_nan_skips in a row
  c.train.max_nan_skips = 10
  # (first, last): write a jax.profiler trace of those steps to <workdir>/tensorboard; () = off.
  c.train.profile_steps = ()

  # Magnitude pruning during training (bigmodel_jax/compress/prune.py); target 0 and pattern
  # "unstructured" -> off.
  c.prune = ml_collections.ConfigDict()
  c.prune.target = 0.0  # final sparsity of each pruned tensor, in [0, 1) (unstructured)
  c.prune.pattern = "unstructured"  # | "N:M", e.g. "2:4": keep N of every M input-side weights
  c.prune.start_step = 0  # the cubic sparsity ramp starts here (N:M masks apply from here)
  c.prune.end_step = 0  # ...and reaches target here; masks are fixed after (0 -> train.steps)
  # Parameters (2+ axes) whose '/'-joined path this regex finds are pruned: by default every
  # kernel, so not embeddings, norm scales or biases.
  c.prune.params = r"(^|/)kernel$"

  # --mode=compress (bigmodel_jax/compress/report.py): variants written under
  # <workdir>/compressed/<variant>/ and measured next to the original.
  c.compress = ml_collections.ConfigDict()
  c.compress.variants = ("int8", "prune_50", "prune_75", "prune_90", "prune_2of4", "distill")
  c.compress.finetune_steps = 100  # each pruned variant's fine-tune from the trained model
  # The distill variant's student: dotted overrides of this run's config, e.g.
  # ("model.num_layers=2", "model.embed_dim=64"); () -> half the model's layers and widths
  # (compress/report.py: student_overrides).
  c.compress.student = ()
  # The student's training steps from scratch against the trained model; 0 -> train.steps, the
  # budget the teacher itself trained with.
  c.compress.distill_steps = 0

  # Knowledge distillation (bigmodel_jax/compress/distill.py; Hinton et al. 2015): this run's
  # model (the student) also learns the soft targets of another trained run of the same
  # experiment (the teacher). Loss: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * the
  # task's own loss, where _T is the softmax at temperature T.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ""  # the teacher's workdir (its latest checkpoint); "" -> off
  c.distill.temperature = 2.0  # T > 0; above 1 softens both distributions (Hinton et al.)
  c.distill.alpha = 0.5  # in [0, 1]: the KL term's weight; 0 -> the plain task loss

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 250
  c.checkpoint.keep = 3
  c.checkpoint.best_metric = ""  # e.g. "loss": also keep the best checkpoint by eval loss
  c.checkpoint.async_save = True
  c.checkpoint.on_corrupt = "stop"  # | fallback: restore the newest valid checkpoint instead

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = "pmap"  # | mesh
  c.parallel.num_devices = 0  # 0 -> all devices
  # CPU only: split the host into this many JAX devices, each running its own slice of the batch.
  # 0: JAX's default (one device using all cores); -1: the most devices, at most one per core,
  # that split the per-process micro-batch evenly. textgen uses -1: its Transformer trains
  # 1.2-1.5x faster data parallel over cores.
  c.parallel.cpu_devices = 0
  c.parallel.fsdp = 1  # mesh only; data axis = devices / (fsdp * tensor)
  c.parallel.tensor = 1  # (-1 on either: all devices the other leaves)
  # mesh only: logical axis name (on parameters and activations) -> mesh axes, as (name, axes)
  # pairs; axes are one of data/fsdp/tensor, a tuple of them, or None (replicated).
  c.parallel.logical_rules = (
      ("batch", ("data", "fsdp")),
      ("vocab", "tensor"),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("kv", None),
      ("length", None),
      ("norm", None),
  )

  # Multi-process runs (see README): explicit coordinator, or auto-detection on TPU/SLURM/...
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator = ""  # "host:port" of process 0
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.auto = False
  # Seconds to wait for the coordinator (and for JAX's own initialisation) before giving up.
  c.distributed.timeout_s = 300

  # Persistent XLA compilation cache: a restarted run skips compiling ("" -> off).
  c.compile_cache_dir = "~/.cache/bigmodel_jax/xla"

  # --mode=serve and --mode=export (bigmodel_jax/serve/).
  c.serve = ml_collections.ConfigDict()
  c.serve.host = "127.0.0.1"  # 0.0.0.0 to accept other machines (then set an api_key)
  c.serve.port = 8000  # 0 -> any free port (the URL printed on start says which)
  # Bearer token every endpoint but /health requires ("" -> the BIGMODEL_API_KEY environment
  # variable; both empty -> no key).
  c.serve.api_key = ""
  # Generation: KV-cache slots decoded together (continuous batching); prediction: the most
  # requests run as one batch.
  c.serve.max_batch = 16
  # Prediction: how long the first request of a batch waits for others to join.
  c.serve.max_wait_ms = 5.0
  # Requests waiting for a slot beyond which new ones are refused (429), so memory stays bounded.
  c.serve.max_queue = 1024
  # Request bodies larger than this are refused (413) before they are read in full.
  c.serve.max_body_mb = 8.0
  # On SIGTERM: stop accepting, then give in-flight requests this many seconds to finish.
  c.serve.drain_s = 30.0
  # --mode=export: where the bundle goes ("" -> <workdir>/export).
  c.serve.export_dir = ""
  # --mode=serve: serve this export bundle (its programs and preprocessing, not the workdir's
  # checkpoint) with the serve.* settings above ("" -> serve the workdir's checkpoint).
  c.serve.bundle = ""
  return c


def apply_preset(
    config: ml_collections.ConfigDict, arg: str | None, presets: Mapping[str, Mapping[str, Any]]
) -> ml_collections.ConfigDict:
  """Applies `presets[arg]` (a dict of dotted keys to values); arg None is the default preset."""
  if arg is None:
    return config
  if arg not in presets:
    raise UsageError(
        f"unknown preset {arg!r}{did_you_mean(arg, list(presets))}; "
        f"valid: {', '.join(sorted(presets))} (or none for the default)"
    )
  return set_values(config, presets[arg], source=f"preset {arg!r}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, str]):
  """Applies command-line overrides {"model.num_layers": "2"}, parsing each by its field's type."""
  for key, text in overrides.items():
    current = _get(config, key, source=f"--config.{key}")
    _set(config, key, _parse(key, text, current), source=f"--config.{key}")
  return config


def set_values(config: ml_collections.ConfigDict, values: Mapping[str, Any], source: str):
  """Sets typed values {"model.num_layers": 2}, checked like overrides (for code and tests)."""
  for key, value in values.items():
    _set(config, key, value, source=source)
  return config


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys += leaf_keys(v, f"{prefix}{k}.")
    else:
      keys.append(f"{prefix}{k}")
  return keys


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks that hold for every experiment (tasks and models check their own fields), then locks
  the config: its values may still change, but no field can be added."""
  check_values(config)
  t = config.train
  for key in ("steps", "batch_size", "grad_accum_steps", "log_every", "eval_every"):
    if t[key] <= 0:
      raise UsageError(f"train.{key}={t[key]} must be a positive integer")
  if t.batch_size % t.grad_accum_steps:
    raise UsageError(
        f"train.batch_size={t.batch_size} must be divisible by "
        f"train.grad_accum_steps={t.grad_accum_steps}"
    )
  for key in ("learning_rate", "warmup_steps", "weight_decay", "grad_clip", "eval_batches"):
    if t[key] < 0:
      raise UsageError(f"train.{key}={t[key]} must be >= 0")
  for key in ("b1", "b2"):
    if not 0 <= t[key] < 1:
      raise UsageError(f"train.{key}={t[key]} must be in [0, 1)")
  if not 0 <= t.min_lr_ratio <= 1:
    raise UsageError(
        f"train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1] (the final learning "
        "rate as a fraction of train.learning_rate)"
    )
  from bigmodel_jax import (
      optim,  # pylint: disable=g-import-not-at-top (optax: only when validating)
  )

  optim.validate(t)
  if config.checkpoint.every_steps <= 0 or config.checkpoint.keep <= 0:
    raise UsageError("checkpoint.every_steps and checkpoint.keep must be positive integers")
  if t.on_nan not in ("stop", "skip"):
    raise UsageError(f"train.on_nan={t.on_nan!r} is not valid; valid: stop, skip")
  if config.checkpoint.on_corrupt not in ("stop", "fallback"):
    raise UsageError(
        f"checkpoint.on_corrupt={config.checkpoint.on_corrupt!r} is not valid; "
        "valid: stop, fallback"
    )
  if config.parallel.strategy not in ("pmap", "mesh"):
    raise UsageError(
        f"parallel.strategy={config.parallel.strategy!r} is not valid; valid: pmap, mesh"
    )
  if config.parallel.cpu_devices < -1:
    raise UsageError(
        f"parallel.cpu_devices={config.parallel.cpu_devices} must be >= 0, or -1 "
        "for one per core"
    )
  for axis in ("fsdp", "tensor"):
    if config.parallel[axis] < 1 and config.parallel[axis] != -1:
      raise UsageError(
          f"parallel.{axis}={config.parallel[axis]} must be >= 1, or -1 for all "
          "devices left after the other axes"
      )
  d = config.distributed
  if d.timeout_s <= 0:
    raise UsageError(f"distributed.timeout_s={d.timeout_s} must be a positive number of seconds")
  if d.coordinator:
    from bigmodel_jax import parallel  # pylint: disable=g-import-not-at-top (starts no backend)

    parallel.coordinator_address(d.coordinator)
  profile = tuple(t.profile_steps)
  if profile and not (
      len(profile) == 2
      and all(isinstance(s, int) for s in profile)
      and 1 <= profile[0] <= profile[1]
  ):
    raise UsageError(
        f"train.profile_steps={profile!r} must be (first, last) steps with "
        "1 <= first <= last, e.g. --config.train.profile_steps=10,12; () = off"
    )
  config.lock()


SEED_RANGE = 2**32  # jax.random.key folds wider seeds onto 32 bits: 2**63 - 1 and -1 collide


def check_values(config: ml_collections.ConfigDict) -> None:
  """Every number in the config is finite and fits where it goes: NaN and Inf settings are refused
  (a NaN learning rate would otherwise train to NaN parameters), integers fit int64, and seeds fit
  the 32 bits a JAX or NumPy seed keeps. Every text is valid UTF-8 (a command-line argument that
  is not arrives as undecodable surrogates, and would fail later wherever it is written)."""
  for key in leaf_keys(config):
    value = _get(config, key, source="config")
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, str):
        try:
          v.encode("utf-8")
        except UnicodeEncodeError:
          raise UsageError(
              f"{key}={v.encode('utf-8', 'replace').decode()!r} is not valid UTF-8; "
              "give the text (or path) in UTF-8"
          ) from None
      if isinstance(v, bool):
        continue
      if isinstance(v, float) and not math.isfinite(v):
        raise UsageError(f"{key}={value!r} must be a finite number")
      name = key.rsplit(".", 1)[-1]
      if (
          isinstance(v, int)
          and (name == "seed" or name.endswith("_seed"))
          and not (0 <= v < SEED_RANGE)
      ):
        raise UsageError(f"{key}={v} must be a seed in [0, {SEED_RANGE - 1}]")
      if isinstance(v, int) and not -(2**63) <= v < 2**63:
        raise UsageError(f"{key}={v} does not fit a 64-bit integer")


# --- helpers -----------------------------------------------------------------------------------


def _get(config, key: str, source: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      keys = leaf_keys(config)
      raise UsageError(f"{source}: unknown config key {key!r}{did_you_mean(key, keys)}")
    node = node[part]
  if isinstance(node, ml_collections.ConfigDict):
    raise UsageError(
        f"{source}: {key!r} is a group, set one of its keys: "
        f"{', '.join(key + '.' + k for k in leaf_keys(node))}"
    )
  return node


def _set(config, key: str, value: Any, source: str) -> None:
  current = _get(config, key, source)
  if current is not None and not _same_kind(current, value):
    raise UsageError(f"{source}: {key} expects {type(current).__name__}, got {value!r}")
  *parents, last = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[last] = float(value) if isinstance(current, float) else value


def _same_kind(current, value) -> bool:
  if isinstance(current, bool) or isinstance(value, bool):
    return isinstance(current, bool) and isinstance(value, bool)
  if isinstance(current, float):
    return isinstance(value, (int, float))
  if isinstance(current, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(current))


def _parse(key: str, text: str, current: Any) -> Any:
  """Parses a command-line string into the type of the field it replaces."""
  kind = type(current).__name__
  try:
    if isinstance(current, bool):
      lowered = text.lower()
      if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError
      return lowered in ("true", "1", "yes")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
    if isinstance(current, (tuple, list)):
      value = (
          ast.literal_eval(text)
          if text.strip()[:1] in "(["
          else tuple(_literal(p) for p in text.split(",") if p.strip())
      )
      return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return _literal(text)
  except (ValueError, SyntaxError):
    raise UsageError(
        f"--config.{key}={text!r}: expected {kind} (current value {current!r})"
    ) from None


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text.strip())
  except (ValueError, SyntaxError):
    return text.strip()
