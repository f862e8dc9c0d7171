"""Process-wide JAX setup, done once by the entry point (run.py, the benchmark) before any work.

Library functions (`trainer.run`, `plan.plan`, ...) never change process-wide state; a test or a
notebook that calls them directly runs on the JAX it already has.
"""

import os

from absl import logging
import jax

from bigmodel_jax import parallel


def initialize(config) -> None:
  """CPU collective timeouts, the multi-process runtime, the CPU device split, the persistent
  compile cache and who logs.

  Must run before anything touches a device: the first three only work before JAX's backends start.
  """
  parallel.patient_cpu_collectives()
  parallel.initialize_distributed(config.distributed)
  parallel.configure_cpu_devices(config)
  if config.compile_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compile_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # one process speaks for the job
