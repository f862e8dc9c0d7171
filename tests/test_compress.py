"""compress: int8 weight quantization (against a numpy reference) and --mode=compress end to end."""

import contextlib
import io
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bigmodel_jax import checkpoint, trainer
from bigmodel_jax.compress import quantize, report
from bigmodel_jax.errors import UsageError
from tests.helpers import tiny_config


def test_int8_matches_a_numpy_per_channel_reference():
  w = np.random.default_rng(0).normal(size=(8, 3, 5)).astype(np.float32)  # (embed, heads, kv)
  w[:, 1, 2] = 0.0  # an all-zero output channel stays exactly zero
  node = quantize.quantize_array(w, "attn/query/kernel")
  scale = np.abs(w).max(axis=0, keepdims=True) / 127  # one scale per (head, kv) output
  scale[scale == 0] = 1.0
  assert node["int8"].dtype == np.int8 and node["scale"].dtype == np.float32
  np.testing.assert_array_equal(np.asarray(node["int8"]), np.rint(w / scale).astype(np.int8))
  np.testing.assert_allclose(np.asarray(node["scale"]), scale, rtol=1e-6)
  back = np.asarray(quantize.dequantize({"k": node})["k"])
  assert np.all(np.abs(back - w) <= scale / 2 + 1e-7)
  assert np.all(back[:, 1, 2] == 0)
  table = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
  rows = quantize.quantize_array(table, "wte/embedding")  # read by row: one scale per row
  np.testing.assert_allclose(
      np.asarray(rows["scale"])[:, 0], np.abs(table).max(axis=1) / 127, rtol=1e-6
  )


def test_only_float_kernels_are_quantized_and_never_twice():
  params = {"dense": {"kernel": np.ones((4, 3), np.float32), "bias": np.ones(3, np.float32)}}
  q = quantize.quantize(params)
  assert q["dense"]["kernel"]["int8"].dtype == np.int8
  assert q["dense"]["bias"].dtype == np.float32  # biases (and norms) stay float
  with pytest.raises(UsageError, match="already int8-quantized"):
    quantize.quantize(q)


def _dtypes(workdir, step):
  meta = ocp.StandardCheckpointer().metadata(
      os.path.join(workdir, checkpoint.DIRECTORY, str(step), "state")
  )
  tree = getattr(meta, "item_metadata", meta)
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): str(m.dtype) for p, m in flat if hasattr(m, "dtype")}


@pytest.fixture(scope="module", params=["imagecls", "textgen"])
def compressed(request, tmp_path_factory):
  """One tiny run per experiment, then --mode=compress on it."""
  root = tmp_path_factory.mktemp(request.param)
  # imagecls also writes a 2:4-pruned variant (a 4-step fine-tune); textgen only int8.
  variants = ("int8", "prune_2of4") if request.param == "imagecls" else ("int8",)
  config = tiny_config(
      str(root / "tfds"),
      f"{request.param}:tiny",
      compress__variants=variants,
      compress__finetune_steps=4,
  )
  workdir = str(root / "run")
  with contextlib.redirect_stdout(io.StringIO()):
    trainer.run(config, workdir)
    rows = trainer.run(config, workdir, "compress")
  return request.param, config, workdir, {r["variant"]: r for r in rows}


# Quality the int8 model keeps (observed: accuracy equal within one of 360 digits, loss within
# 0.001 on textgen:tiny); per-channel absmax int8 is expected to cost under these.
TOLERANCE = {"imagecls": ("accuracy", 0.02), "textgen": ("loss", 0.02)}


def test_int8_workdir_is_smaller_int8_and_evaluates_like_the_float_model(compressed):
  name, config, workdir, rows = compressed
  out = os.path.join(workdir, "compressed", "int8")
  original, int8 = rows["original"], rows["int8"]
  assert int8["parameters"] == original["parameters"]
  # In memory: kernels take a quarter; biases, norms and the per-channel scales stay float.
  assert 3.3 < original["weights_mib"] / int8["weights_mib"] <= 4
  # On disk: int8 weights and no optimizer moments (the float state holds Adam's two); a tiny
  # model's state folder also holds ~15 KB of orbax metadata either way (observed 3.35x for
  # imagecls:tiny, 9x for imagecls's default model).
  assert original["state_mib"] / int8["state_mib"] > 3.0
  step = checkpoint.latest_step_number(os.path.join(out, checkpoint.DIRECTORY))
  dtypes = _dtypes(out, step)
  kernels = {k: v for k, v in dtypes.items() if k.endswith("['int8']")}
  assert kernels and set(kernels.values()) == {"int8"}
  assert not any(k.endswith("['kernel']") for k in dtypes)  # no float kernel left
  with contextlib.redirect_stdout(io.StringIO()):
    values = trainer.run(config, out, "eval")
  metric, tol = TOLERANCE[name]
  assert values[metric] == pytest.approx(int8[metric], abs=1e-6)  # the table measured the disk
  assert abs(values[metric] - original[metric]) <= tol
  with open(os.path.join(workdir, "compressed", "report.json")) as f:
    assert [r["variant"] for r in json.load(f)] == ["original", *config.compress.variants]
  table = report.table(list(rows.values()))
  assert table.splitlines()[0].split()[:2] == ["variant", "state_mib"]


def test_int8_workdir_refuses_training_and_second_quantization(compressed):
  _, config, workdir, _ = compressed
  out = os.path.join(workdir, "compressed", "int8")
  for mode in ("compress", "train"):
    with pytest.raises(UsageError, match=f"--mode={mode}: .* already holds an int8-quantized"):
      trainer.run(config, out, mode)


def test_int8_textgen_samples(compressed):
  name, config, workdir, _ = compressed
  if name != "textgen":
    pytest.skip("textgen's sample mode")
  config.sample.num_samples = 1
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    trainer.run(config, os.path.join(workdir, "compressed", "int8"), "sample")
  assert "--- sample 1/1" in out.getvalue()


def test_pruned_variant_is_a_workdir_that_evaluates_without_prune_flags(compressed):
  name, config, workdir, rows = compressed
  if name != "imagecls":
    pytest.skip("imagecls writes the pruned variant")
  row = rows["prune_2of4"]
  assert row["parameters"] == rows["original"]["parameters"]
  # 2:4 halves the dense kernels (the 3x3x1 conv's 9 input rows are not groups of 4: left dense).
  assert row["nonzero"] < rows["original"]["nonzero"] - 1000
  with contextlib.redirect_stdout(io.StringIO()):
    values = trainer.run(config, row["workdir"], "eval")  # the saved prune section is used
  assert values["accuracy"] == pytest.approx(row["accuracy"], abs=1e-6)
