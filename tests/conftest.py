"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# glibc writes why it aborts (e.g. "double free or corruption") to /dev/tty unless this is set, so
# a worker that dies of it would leave no reason in the log (pytest.ini: the crashes seen so far).
os.environ.setdefault("LIBC_FATAL_STDERR_", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from bigmodel_jax import parallel  # noqa: E402

# Eight devices on two cores, beside the other xdist worker and the tests' subprocesses: a device
# can lag its pmap all-reduce by more than XLA:CPU's 40 s, which aborts the worker (seen in a
# training run on an overloaded machine). Subprocesses inherit the flags. (pytest.ini reruns a
# test whose worker dies of another native crash.)
parallel.patient_cpu_collectives()

import jax  # noqa: E402  (must come after XLA_FLAGS)

# Tests compile many small programs; optimising them costs more than it saves.
jax.config.update("jax_disable_most_optimizations", True)
