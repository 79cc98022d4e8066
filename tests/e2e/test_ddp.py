"""DDP on CPU (gloo): 2 processes x batch B == 1 process with 2 accumulation steps x batch B."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import yaml

from llm_tiny.config import load_config
from llm_tiny.train.checkpoint import load_checkpoint
from llm_tiny.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "tiny.txt"


def torchrun() -> str | None:
    beside = Path(sys.executable).with_name("torchrun")
    return str(beside) if beside.exists() else shutil.which("torchrun")


def write_config(tmp_path: Path, **train) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    raw = {
        "model": {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32},
        "data": {
            "input": [str(corpus)],
            "tokenizer": str(tmp_path / "tok.json"),
            "vocab_size": 256,
            "data_dir": str(tmp_path / "data"),
        },
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 3},
        "train": {
            "out_dir": str(tmp_path / "run"),
            "max_iters": 12,
            "batch_size": 4,
            "eval_interval": 6,
            "ckpt_interval": 6,
            "log_interval": 1,
            "eval_batch_size": 8,
            "threads": 1,
            "device": "cpu",
            "sample_at_end": False,
            **train,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not dist.is_available() or torchrun() is None, reason="needs torch.distributed")
def test_two_processes_match_one_process_with_accumulation(tmp_path):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            torchrun(),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "llm_tiny",
            "train",
            str(write_config(ddp_dir)),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Rank 0 alone logs: one summary line, not two.
    assert proc.stdout.count("done: step 12") == 1

    cfg = load_config(write_config(single_dir, grad_accum_steps=2))
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
