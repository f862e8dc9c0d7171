"""Scale-out: two processes (gloo on 127.0.0.1), --mode=plan, and elastic resume onto fewer
devices."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from bigmodel_jax import parallel, trainer
from tests.helpers import read_metrics, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _losses(workdir, upto=None):
  return np.array(
      [r["loss"] for s, r in sorted(read_metrics(workdir).items()) if upto is None or s <= upto]
  )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir, data_dir, steps):
  """One run of 2 processes x 2 CPU devices, as two VMs would run it."""
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  common = [
      "--experiment=textgen:tiny",
      f"--workdir={workdir}",
      "--config.parallel.strategy=mesh",
      f"--config.train.steps={steps}",
      "--config.train.log_every=1",
      "--config.sample.num_samples=0",
      f"--config.data.tfds_data_dir={data_dir}",
      f"--config.distributed.coordinator=127.0.0.1:{port}",
      "--config.distributed.num_processes=2",
  ]
  procs = [
      subprocess.Popen(
          [sys.executable, "run.py", *common, f"--config.distributed.process_id={i}"],
          cwd=REPO,
          env=env,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]
  errors = [p.communicate(timeout=600)[1] for p in procs]
  for p, err in zip(procs, errors):
    assert p.returncode == 0, err[-3000:]
  return errors


def test_two_processes_match_one_process_and_resume(data_dir, tmp_path):
  one = str(tmp_path / "one")
  for steps in (4, 8):  # train to 4, then resume to 8
    trainer.run(
        tiny_config(
            data_dir,
            parallel__strategy="mesh",
            parallel__num_devices=4,
            train__steps=steps,
            train__log_every=1,
        ),
        one,
    )
  two = str(tmp_path / "two")
  _two_processes(two, data_dir, 4)
  errors = _two_processes(two, data_dir, 8)
  assert "Resumed from" in errors[0]
  np.testing.assert_allclose(_losses(two), _losses(one), rtol=2e-5)
  assert len(_losses(two)) == 8


def _plan(data_dir, **parallel):
  config = tiny_config(data_dir, **{f"parallel__{k}": v for k, v in parallel.items()})
  return trainer.run(config, "/nonexistent/never/written", "plan")


def test_plan_shows_fsdp_dividing_parameter_memory(data_dir, capsys):
  data8 = _plan(data_dir, strategy="mesh", fsdp=1)
  fsdp8 = _plan(data_dir, strategy="mesh", fsdp=8)
  assert data8["mesh_data"] == 8 and fsdp8["mesh_fsdp"] == 8
  ratio = data8["param_bytes_per_device"] / fsdp8["param_bytes_per_device"]
  assert 6 < ratio <= 8
  assert data8["optimizer_bytes_per_device"] / fsdp8["optimizer_bytes_per_device"] > 6
  assert fsdp8["flops_per_step_per_device"] > 0 and fsdp8["total_bytes_per_device"] > 0
  assert "per device  parameters" in capsys.readouterr().out
  assert not os.path.exists("/nonexistent/never/written")


@pytest.mark.parametrize(
    "before, after",
    [
        (
            {"strategy": "mesh", "fsdp": 8},
            {"strategy": "mesh", "fsdp": 2, "tensor": 2, "num_devices": 4},
        ),
        ({"strategy": "pmap"}, {"strategy": "pmap", "num_devices": 4}),
    ],
)
def test_elastic_resume_onto_fewer_devices(data_dir, tmp_path, before, after):
  settings = lambda p: {f"parallel__{k}": v for k, v in p.items()}
  whole = str(tmp_path / "whole")
  trainer.run(tiny_config(data_dir, train__log_every=5, **settings(before)), whole)
  elastic = str(tmp_path / "elastic")
  trainer.run(tiny_config(data_dir, train__log_every=5, **settings(before)), elastic, stop_after=20)
  trainer.run(tiny_config(data_dir, train__log_every=5, **settings(after)), elastic)
  np.testing.assert_allclose(_losses(elastic), _losses(whole), rtol=2e-5)


def test_cpu_devices_start_jax_with_that_many_devices():
  """parallel.cpu_devices is applied before JAX starts (a fresh process, no XLA_FLAGS)."""
  code = """
import jax
from bigmodel_jax import config as config_lib, parallel
config = config_lib.load_experiment("textgen:tiny")
config_lib.set_values(config, {"parallel.cpu_devices": 3, "train.batch_size": 12}, "test")
parallel.configure_cpu_devices(config)
print(jax.device_count())
"""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
  ).stdout
  assert out.split()[-1] == "3"


def test_cpu_collective_timeouts_reach_xla_and_keep_the_users_own(monkeypatch):
  """XLA:CPU aborts a process whose device waits at a collective past its terminate timeout (40 s
  by default; seen on a loaded 2-core host): parallel sets it to 30 min. XLA refuses unknown
  flags at start, so a pmap all-reduce in a fresh process checks the names."""
  code = """
from bigmodel_jax import parallel
parallel.patient_cpu_collectives()
import os, jax
print(os.environ["XLA_FLAGS"])
print(jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i")(jax.numpy.ones(8))[0])
"""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  out = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
  ).stdout.split()
  assert out[-1] == "8.0" and "--xla_cpu_collective_call_terminate_timeout_seconds=1800" in out
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_collective_timeout_seconds=5")
  parallel.patient_cpu_collectives()
  flags = os.environ["XLA_FLAGS"].split()
  assert "--xla_cpu_collective_timeout_seconds=5" in flags
  assert "--xla_cpu_collective_call_terminate_timeout_seconds=1800" in flags and len(flags) == 2


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"train.batch_size": 12}, 6),  # 8 doesn't divide 12
        ({"train.batch_size": 16}, 8),
        ({"train.batch_size": 11}, 1),  # prime, above 8
        ({"train.batch_size": 12, "train.grad_accum_steps": 2}, 6),  # micro-batch 6
        ({"train.batch_size": 24, "distributed.num_processes": 2}, 6),  # 12 per process
        ({"train.batch_size": 12, "parallel.strategy": "mesh", "parallel.tensor": 4}, 4),
    ],
)
def test_cpu_devices_auto_picks_one_per_core_that_divides(monkeypatch, overrides, expected):
  """cpu_devices=-1 on an 8-core host: the most devices that split the per-process micro-batch
  and that the mesh's model axes divide."""
  from bigmodel_jax import config as config_lib
  from bigmodel_jax import parallel

  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
  config = config_lib.load_experiment("textgen:tiny")
  config_lib.set_values(config, overrides, "test")
  assert parallel._devices_per_core(config) == expected


def test_cpu_plan_memory_matches_per_layer_arithmetic_and_says_it_ignores_remat(data_dir, capsys):
  b, t, c, h, layers = 4, 256, 128, 4, 2
  shape = dict(
      model__num_layers=layers,
      model__embed_dim=c,
      model__num_heads=h,
      model__block_size=t,
      train__batch_size=b,
      parallel__num_devices=1,
  )
  plans = {}
  for remat in ("none", "full"):
    config = tiny_config(data_dir, model__remat=remat, **shape)
    plans[remat] = trainer.run(config, "/nonexistent/never/written", "plan")
  # What backward keeps per layer without remat (float32): LayerNorm outputs, q/k/v, attention
  # output and residuals (9 x B*T*C), the MLP's two (B, T, 4C) tensors, and the attention scores and
  # probabilities, between the causal query blocks' share (10/16 at T=256) and all of (B, H, T, T).
  per_layer = lambda share: 4 * (b * t * (9 * c + 2 * 4 * c) + share * 2 * b * h * t * t)
  low, high = layers * per_layer(10 / 16), layers * per_layer(1.0)
  assert 0.5 * low < plans["none"]["activation_bytes_per_device"] < 2 * high
  # XLA:CPU keeps the same buffers whatever model.remat says; the printed plan says so.
  assert plans["full"]["activation_bytes_per_device"] == pytest.approx(
      plans["none"]["activation_bytes_per_device"], rel=0.05
  )
  assert "model.remat='full' is not in these CPU figures" in capsys.readouterr().out


def test_pmean_averages_over_the_devices_and_costs_nothing_over_one():
  import jax

  mean = lambda tree: parallel.pmean(tree, "d")  # noqa: E731
  n = jax.local_device_count()
  tree = {"a": np.arange(n * 3, dtype=np.float32).reshape(n, 3), "b": np.ones((n, 2), np.float32)}
  out = jax.pmap(mean, axis_name="d")(tree)
  np.testing.assert_allclose(out["a"], np.broadcast_to(tree["a"].mean(0), (n, 3)), rtol=1e-6)
  np.testing.assert_allclose(out["b"], tree["b"])
  one = jax.pmap(mean, axis_name="d", devices=jax.local_devices()[:1])
  first = jax.tree.map(lambda x: x[:1], tree)
  assert "all-reduce" not in one.lower(first).compile().as_text()
  np.testing.assert_array_equal(one(first)["a"], first["a"])
