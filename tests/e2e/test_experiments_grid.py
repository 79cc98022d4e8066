"""benchmarks/experiments.py end to end: a small grid of real training runs through the script
(its grid, summary and doc are tests/unit/test_experiments.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import experiments  # noqa: E402


def test_a_small_grid_runs_end_to_end(tmp_path):
    args = [
        "--input", "data/tiny.txt", "--seeds", "2", "--digits-steps", "4", "--text-steps", "4",
        "--variants", "baseline,mlp=relu", "--json", str(tmp_path / "e.json"),
        "--doc", str(tmp_path / "docs" / "e.md"), "--img-dir", str(tmp_path / "docs" / "img"),
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "benchmarks/experiments.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "e.json").read_text())
    assert len(data["runs"]) == 2 * 2 * 2  # tasks x seeds x variants
    for run in data["runs"]:
        assert run["steps"] == 4 and run["val_loss"] > 0 and run["curve"][-1][0] == 4
        assert (run["task"] == "digits") == ("accuracy" in run)
        assert run.get("accuracy", 0) >= 0 <= run.get("accuracy", 1) <= 1
    doc = (tmp_path / "docs" / "e.md").read_text()
    assert "| MLP | relu |" in doc and "| MLP | **swiglu** (baseline) |" in doc
    assert "![digits](img/experiments_digits.png)" in doc
    for task in ("digits", "text"):
        assert (tmp_path / "docs" / "img" / f"experiments_{task}.png").stat().st_size > 10_000
    # The two seeds trained different models: the spread is real, not a copy.
    assert data["summary"]["text"]["baseline"]["val_loss"][1] > 0
    # Redrawing from the JSON (no training) gives the same section back.
    (tmp_path / "docs" / "e.md").write_text("# Mine\n\n" + doc + "\nkept\n")
    redraw = ["--from-json", str(tmp_path / "e.json"), *args[-4:]]
    assert experiments.main(redraw) == 0
    assert (tmp_path / "docs" / "e.md").read_text() == "# Mine\n\n" + doc + "\nkept\n"
