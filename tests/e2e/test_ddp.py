"""DDP on CPU (gloo): 2 processes x batch B == 1 process with 2 accumulation steps x batch B."""

from __future__ import annotations

import numpy as np
import pytest
import torch.distributed as dist
from torchrun_helpers import metrics, run, small_config, torchrun

from llm_tiny.config import load_config
from llm_tiny.train.checkpoint import load_checkpoint
from llm_tiny.train.loop import train


@pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")
def test_two_processes_match_one_process_with_accumulation(tmp_path):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    # Bounded in time: past it, torchrun and every rank under it are killed (no rank hangs).
    proc = run(torchrun("train", str(small_config(ddp_dir))), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Rank 0 alone logs: one summary line, not two.
    assert proc.stdout.count("done: step 12") == 1

    cfg = load_config(small_config(single_dir, train={"grad_accum_steps": 2}))
    result = train(cfg, progress=False, log=lambda _: None)

    ddp, single = metrics(ddp_dir / "run"), metrics(single_dir / "run")
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [str(s) for s in range(13)]
    for column in ("train_loss", "val_loss", "grad_norm", "tokens"):
        a = [float(r[column]) for r in ddp if r[column]]
        b = [float(r[column]) for r in single if r[column]]
        assert len(a) == len(b) > 0, column
        np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=column)
    assert float(ddp[-1]["val_loss"]) == pytest.approx(result.val_loss, rel=1e-5)

    # Rank 0 wrote the checkpoint, holding the RNG states of both ranks.
    ckpt = load_checkpoint(ddp_dir / "run" / "last.pt")
    assert ckpt["step"] == 12 and len(ckpt["rng"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
