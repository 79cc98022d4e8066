"""`python -m llm_tiny config` as a user runs it: the resolved config, and one-line errors with
exit status 2 (the config itself is tests/unit/test_config.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_tiny", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_config_cli_prints_resolved_config():
    result = run_cli("config", "configs/tiny.yaml", "--train.max_iters=300")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["train"]["max_iters"] == 300


@pytest.mark.parametrize(
    "args",
    [
        ("config", "configs/tiny.yaml", "--model.n_emb=64"),
        ("config", "does/not/exist.yaml"),
        ("config", "configs/tiny.yaml", "--bogus"),
        ("nonsense-command",),
    ],
)
def test_cli_errors_are_one_line_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
