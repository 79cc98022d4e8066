"""Runtime: the hardware peak table and model FLOPs utilisation."""

from __future__ import annotations

import pytest

from llm_tiny.config import ModelConfig
from llm_tiny.model import TinyGPT
from llm_tiny.runtime import mfu, peak_flops_for


def test_mfu_uses_the_device_table_or_the_given_peak():
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops_for("NVIDIA A10") == 125e12  # not mistaken for an A100
    assert peak_flops_for("NVIDIA GeForce RTX 4090") == 165e12
    assert peak_flops_for("NVIDIA L4") == 121e12
    assert peak_flops_for("NVIDIA H200") == 989e12
    assert peak_flops_for("Some CPU") is None and peak_flops_for(None) is None
    model = TinyGPT(ModelConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16))
    f = model.flops_per_token()
    assert mfu(f, 1000.0, device_name="NVIDIA A100-SXM4-80GB") == pytest.approx(f * 1000 / 312e12)
    assert mfu(f, 1000.0, "NVIDIA A100", peak_flops=1e12) == pytest.approx(f * 1e-9)
    assert mfu(f, 1000.0, "cpu") is None
