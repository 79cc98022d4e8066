"""The golden losses (tests/golden/losses.json, made by tests/golden/regenerate.py): one process
equals them exactly; DDP over 2 processes equals them (it computes the same sums: its
all-reduce of two float32 gradients is the accumulation's one addition); FSDP over 2 processes
within `FSDP_RTOL` (its reduce-scatter adds the gradients in another order, and its clipping
norm sums squares per shard: a few float32 ulps by step 20; 1.2e-7 measured)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from golden.regenerate import GOLDEN, golden_config, single_process_losses
from torchrun_helpers import column, finish, free_port, run, start, stop, torchrun

GOLD = json.loads(GOLDEN.read_text(encoding="utf-8"))["train_loss"]
FSDP_RTOL = 1e-5


def test_the_golden_file_is_a_whole_run():
    assert len(GOLD) == 20 and all(np.isfinite(GOLD)) and GOLD[-1] < GOLD[0] - 1.0


def test_one_process_equals_the_golden_losses_exactly(tmp_path):
    assert single_process_losses(tmp_path) == GOLD


@pytest.mark.slow
@pytest.mark.parametrize(
    ("parallel", "recompute"), [("ddp", False), ("fsdp", False), ("fsdp", True)]
)
def test_two_processes_match_the_golden_losses(tmp_path, parallel, recompute):
    # recompute: activation checkpointing of each (sharded) block: the same sums again.
    model = {"grad_checkpointing": recompute}
    cfg = golden_config(tmp_path, ranks=2, runtime={"parallel": parallel}, model=model)
    proc = run(torchrun("train", str(cfg)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = column(tmp_path / "run", "train_loss")
    if parallel == "ddp":
        assert losses == GOLD
    else:
        np.testing.assert_allclose(losses, GOLD, rtol=FSDP_RTOL, atol=0)


def node(rank: int, endpoint: str, cfg) -> list[str]:
    """The torchrun command of node `rank` of 2, one process each."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}",
        "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
        "--rdzv-id=golden", "--max-restarts=0", "-m", "llm_tiny", "train", str(cfg),
    ]  # fmt: skip


@pytest.mark.slow
def test_two_nodes_train_as_one_two_process_run(tmp_path):
    # Two torchrun launches on this machine, one process each, meeting through the c10d
    # rendezvous on 127.0.0.1 as two nodes would (docs/training.md, "Several machines").
    cfg = golden_config(tmp_path, ranks=2)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [start(node(rank, endpoint, cfg)) for rank in (0, 1)]
    try:
        done = [finish(launched, timeout=300) for launched in nodes]
    finally:
        for launched in nodes:
            stop(launched)
    assert [d.returncode for d in done] == [0, 0], done[0].stderr[-2000:] + done[1].stderr[-2000:]
    assert "2 processes" in done[0].stdout + done[1].stdout
    assert column(tmp_path / "run", "train_loss") == GOLD
