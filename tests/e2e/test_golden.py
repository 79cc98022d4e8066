"""The golden losses (tests/golden/losses.json, made by tests/golden/regenerate.py): one process
equals them exactly; DDP over 2 processes equals them (it computes the same sums: its
all-reduce of two float32 gradients is the accumulation's one addition); FSDP over 2 processes
within `FSDP_RTOL` (its reduce-scatter adds the gradients in another order, and its clipping
norm sums squares per shard: a few float32 ulps by step 20; 1.2e-7 measured)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from golden.regenerate import GOLDEN, golden_config, single_process_losses
from torchrun_helpers import column, run, torchrun

GOLD = json.loads(GOLDEN.read_text(encoding="utf-8"))["train_loss"]
FSDP_RTOL = 1e-5


def test_the_golden_file_is_a_whole_run():
    assert len(GOLD) == 20 and all(np.isfinite(GOLD)) and GOLD[-1] < GOLD[0] - 1.0


def test_one_process_equals_the_golden_losses_exactly(tmp_path):
    assert single_process_losses(tmp_path) == GOLD


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_the_golden_losses(tmp_path, parallel):
    cfg = golden_config(tmp_path, ranks=2, runtime={"parallel": parallel})
    proc = run(torchrun("train", str(cfg)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = column(tmp_path / "run", "train_loss")
    if parallel == "ddp":
        assert losses == GOLD
    else:
        np.testing.assert_allclose(losses, GOLD, rtol=FSDP_RTOL, atol=0)
