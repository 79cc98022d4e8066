"""`python -m llm_tiny viz` as a subprocess on the session's tiny trained run: the attention
grid, embeddings, gradient flow, and a one-line error without a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import expected, image_size

from llm_tiny import viz
from llm_tiny.train.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """The session's tiny trained run (tests/conftest.py), copied: the pictures are written
    beside its checkpoint."""
    return shutil.copytree(tiny_run, tmp_path_factory.mktemp("viz") / "run")


def viz_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llm_tiny", "viz", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_cli_attention_grid_and_single_head(run, tmp_path):
    out = tmp_path / "grid.png"
    result = viz_cli("attention", "--ckpt", str(run), "--text", TEXT[:20], "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    n_tokens = 20  # byte level: one token per character
    assert image_size(out) == expected(viz.attention_layout(2, 2, n_tokens).figsize)

    single = tmp_path / "head.png"
    assert viz.main(["attention", "--ckpt", str(run), "--text", TEXT[:20], "--head", "1",
                     "--layer", "0", "--out", str(single)]) == 0  # fmt: skip
    assert image_size(single) == expected(viz.attention_layout(1, 1, n_tokens).figsize)

    layer = tmp_path / "layer.png"
    assert viz.main(["attention", "--ckpt", str(run), "--text", "hear me", "--layer", "-1",
                     "--out", str(layer)]) == 0  # fmt: skip
    assert image_size(layer) == expected(viz.attention_layout(1, 2, 7).figsize)


def test_cli_embeddings_with_and_without_the_data(run, tmp_path, capsys):
    result = viz_cli("embeddings", "--ckpt", str(run), "--top", "10")
    assert result.returncode == 0, result.stderr
    default = run / "embeddings.png"
    assert image_size(default) == expected(viz.embeddings_figsize())

    missing = tmp_path / "fallback.png"
    args = ["embeddings", "--ckpt", str(run / "best.pt"), "--data-dir", str(tmp_path / "gone")]
    assert viz.main([*args, "--out", str(missing)]) == 0
    assert "no token counts" in capsys.readouterr().err
    assert image_size(missing) == expected(viz.embeddings_figsize())


def test_cli_grad_flow(run):
    result = viz_cli("grad-flow", "--ckpt", str(run))
    assert result.returncode == 0, result.stderr
    assert "wte = lm_head" in result.stdout and "1.mlp.proj" in result.stdout
    model, _, _, _ = load_model(run)
    n_weights = sum(1 for p in model.parameters() if p.dim() >= 2)  # a tied matrix counts once
    assert image_size(run / "grad_flow.png") == expected(viz.grad_flow_figsize(n_weights))


def test_cli_error_exits_2_without_traceback(tmp_path):
    result = viz_cli("attention", "--ckpt", str(tmp_path / "no_run"), "--text", "x")
    assert result.returncode == 2
    assert "not found" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
