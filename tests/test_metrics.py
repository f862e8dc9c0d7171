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
