"""benchmarks/rl_vs_sft.py and rl_ablations.py as a user runs them, at tiny sizes: the JSON
they print and write, and one line with exit status 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
def test_rl_vs_sft_runs_both_arms_per_seed_and_writes_json(tmp_path):
    out = tmp_path / "rl.json"
    proc = bench(
        "rl_vs_sft.py", "--seeds", "1", "--seconds", "3", "--sft-steps", "5", "--n", "300",
        "--json", str(out), "--plot", str(tmp_path / "rl.png"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = last_json(proc.stdout)
    assert result == json.loads(out.read_text())
    (seed,) = result["seeds"]
    for arm in ("start", "rl", "sft_continued"):
        assert 0 <= seed[arm] <= 1 and arm in result["summary"]
    assert seed["rl_steps"] >= 1 and seed["sft_continued_steps"] >= 1
    assert (tmp_path / "rl.png").stat().st_size > 0


@pytest.mark.slow
def test_rl_ablations_runs_the_named_variants(tmp_path):
    proc = bench("rl_ablations.py", "--steps", "2", "--only", "default,k=2")
    assert proc.returncode == 0, proc.stderr
    variants = last_json(proc.stdout)["variants"]
    assert list(variants) == ["default", "k=2"]
    assert all(0 <= v["eval_pass1"] <= 1 for v in variants.values())


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("rl_vs_sft.py", ["--seeds", "one"], "--seeds must be comma-separated integers"),
        ("rl_ablations.py", ["--only", "nope"], "--only names variants of default"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(script, args, message):
    proc = bench(script, *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
