"""MFU's peak: the data-sheet table is read by the most specific device kind and names its dtype."""

import types

import pytest

from bigmodel_jax import metrics


@pytest.mark.parametrize(
    "kind, key, flops",
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100", 989e12),  # SXM
        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe", 756e12),  # not the SXM figure
        ("NVIDIA H100 NVL", "NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", "NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", "NVIDIA H200 NVL", 835e12),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100", 312e12),
        ("NVIDIA A100 80GB PCIe", "NVIDIA A100", 312e12),
        ("TPU v5 lite", "TPU v5 lite", 197e12),  # v5e, not v5p's "TPU v5"
        ("TPU v5", "TPU v5", 459e12),
        ("TPU v6 lite", "TPU v6 lite", 918e12),
    ],
)
def test_data_sheet_peak_takes_the_longest_matching_key(kind, key, flops):
  assert metrics.data_sheet_peak(kind) == (key, flops, "bf16 dense")


@pytest.mark.parametrize("kind", ["cpu", "NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-16GB", ""])
def test_unlisted_device_kinds_have_no_data_sheet_peak(kind):
  assert metrics.data_sheet_peak(kind) is None


def test_peak_source_names_the_device_the_entry_and_the_dtype(monkeypatch):
  fake = types.SimpleNamespace(device_kind="NVIDIA H100 PCIe", platform="gpu")
  monkeypatch.setattr(metrics.jax, "devices", lambda: [fake])
  assert metrics.peak_flops_per_device() == (
      756e12,
      "data-sheet bf16 dense peak for 'NVIDIA H100 PCIe'",
  )
  fake.device_kind = "NVIDIA H100 80GB HBM3"
  assert metrics.peak_flops_per_device() == (
      989e12,
      "data-sheet bf16 dense peak for 'NVIDIA H100 80GB HBM3' (table entry 'NVIDIA H100')",
  )


def test_a_measured_cpu_peak_is_of_the_runs_matmul_dtype(monkeypatch):
  """On CPU the MFU peak is measured in the matmuls' operand dtype (bf16 runs at up to 2x f32 on
  AVX512-BF16), which a run's config gives as model.matmul_dtype, else model.dtype."""
  import ml_collections

  measured = []
  monkeypatch.setattr(
      metrics,
      "measure_matmul_flops",
      lambda n=1024, r=20, dtype="float32": measured.append(dtype) or 100e9,
  )
  flops, source = metrics.peak_flops_per_device("bfloat16")
  assert measured == ["bfloat16"] and "measured bfloat16 1024x1024 matmuls on the CPU" in source
  config = lambda **model: ml_collections.ConfigDict({"model": model})  # noqa: E731
  assert metrics.matmul_dtype(config(dtype="float32", matmul_dtype="bfloat16")) == "bfloat16"
  assert metrics.matmul_dtype(config(dtype="bfloat16", matmul_dtype="")) == "bfloat16"
  assert metrics.matmul_dtype(config(dtype="float32")) == "float32"
  assert metrics.matmul_dtype(config()) == "float32"
  assert metrics.measure_matmul_flops(64, 2, "bfloat16") > 0
