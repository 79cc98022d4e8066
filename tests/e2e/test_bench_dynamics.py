"""benchmarks/bench_dynamics.py end to end: two short runs of the digits recipe, Muon and
AdamW, through the script: their layer-wise figures and the JSON of the phase medians."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import image_size

ROOT = Path(__file__).resolve().parents[2]


def test_two_short_runs_give_figures_and_phase_medians(tmp_path):
    args = ["--runs", "digits-muon,digits-adamw", "--steps", "20", "--img-dir", str(tmp_path),
            "--json", str(tmp_path / "d.json")]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_dynamics.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads((tmp_path / "d.json").read_text())["runs"]
    assert [r["optimizer"] for r in runs] == ["muon", "adamw"]
    for run in runs:
        assert run["steps"] == 20 and run["phases"] == [10, 10]  # warmup 5: at the peak by 10
        assert set(run["summary"]) == {"wte", "attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"}
        for per_phase in run["summary"].values():
            assert set(per_phase) <= {"warmup", "peak", "decay"}
            assert all(0 < ratio < 1 and grad > 0 for ratio, grad in per_phase.values())
        assert image_size(tmp_path / f"dynamics_{run['run']}.png")[0] > 0
