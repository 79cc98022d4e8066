"""The tutorial notebook runs top to bottom, as a learner would run it (few training steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_notebook_is_valid_and_carries_no_outputs():
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        assert nb["nbformat"] == 4
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_the_tutorial_runs_end_to_end(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LLM_TINY_TUTORIAL_DIR": str(tmp_path),
        "LLM_TINY_TUTORIAL_STEPS": "12",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "notebooks/run.py", "notebooks/tutorial.ipynb"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "vocabulary: 512 tokens = 256 bytes + 256 merges" in out
    assert "loss at initialisation" in out and "rows sum to" in out
    assert "validation loss by step:" in out and "ROMEO:" in out
    assert (tmp_path / "run" / "best.pt").is_file()
