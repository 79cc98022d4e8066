"""Mixed precision and torch.compile on CUDA. Skipped without a GPU."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from llm_tiny.config import load_config
from llm_tiny.runtime import resolve_dtype
from llm_tiny.train.checkpoint import load_checkpoint
from llm_tiny.train.loop import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CORPUS = Path(__file__).resolve().parents[2] / "data" / "tiny.txt"


def run(tmp_path: Path, **train_values) -> tuple[object, list[dict[str, str]], dict]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:50_000], encoding="utf-8")
    raw = {
        "model": {"block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 64},
        "data": {
            "input": [str(corpus)],
            "tokenizer": str(tmp_path / "tok.json"),
            "vocab_size": 256,
            "data_dir": str(tmp_path / "data"),
        },
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 5},
        "train": {
            "out_dir": str(tmp_path / "run"),
            "max_iters": 60,
            "batch_size": 16,
            "eval_interval": 30,
            "ckpt_interval": 30,
            "log_interval": 1,
            "device": "cuda",
            "sample_at_end": False,
            **train_values,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    result = train(load_config(path), progress=False, log=lambda _: None)
    with (tmp_path / "run" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return result, rows, load_checkpoint(tmp_path / "run" / "last.pt")


def losses(rows: list[dict[str, str]]) -> list[float]:
    return [float(r["train_loss"]) for r in rows if r["train_loss"]]


def test_float16_uses_the_grad_scaler_and_learns(tmp_path):
    result, rows, ckpt = run(tmp_path, dtype="float16")
    assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0
    assert result.val_loss < 0.8 * float(rows[0]["val_loss"])
    assert all(p.dtype == torch.float32 for p in ckpt["model"].values() if p.is_floating_point())
    # Resuming restores the scaler's scale too.
    resumed, _, ckpt2 = run(tmp_path, dtype="float16", max_iters=70, resume="always")
    assert resumed.step == 70 and ckpt2["scaler"]["scale"] > 0


def test_bfloat16_learns_without_a_scaler(tmp_path):
    result, rows, ckpt = run(tmp_path, dtype="bfloat16")
    assert ckpt["scaler"] == {}
    assert result.val_loss < 0.8 * float(rows[0]["val_loss"])


def test_auto_dtype_on_cuda():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_dtype("auto", torch.device("cuda")) == expected


def test_compile_matches_eager_and_saves_clean_keys(tmp_path):
    eager, eager_rows, _ = run(tmp_path / "eager", max_iters=30)
    compiled, compiled_rows, ckpt = run(tmp_path / "compiled", max_iters=30, compile=True)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    # Same data and initialisation; kernels differ, so the curves agree only approximately.
    assert losses(compiled_rows)[0] == pytest.approx(losses(eager_rows)[0], rel=1e-3)
    assert compiled.val_loss == pytest.approx(eager.val_loss, rel=0.03)
