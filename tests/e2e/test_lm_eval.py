"""Parity with lm-evaluation-harness: `eval --lm-eval` runs the real `lm-eval` package on the
run's HF export over our tasks (local JSONL through task YAMLs, offline, on the CPU); its
accuracy equals ours and every per-example log-likelihood is within 1e-4. The run is trained
on one plain text file, whose export needs the stand-in BOS/EOS to work in lm-eval at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("lm_eval")


def test_lm_eval_scores_our_tasks_as_we_do(tiny_run, tmp_path):
    generation = tmp_path / "echo.jsonl"
    rows = [{"task": {"shots": 2, "max_new_tokens": 6}}] + [
        {"context": f"Say {w}:", "target": w} for w in ("yes", "no", "maybe", "so", "then")
    ]
    generation.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "lm"
    proc = subprocess.run(
        [sys.executable, "-m", "llm_tiny", "eval", "--ckpt", str(tiny_run), "--tasks",
         "brackets", "reverse", "reverse_choice", "cloze", "copy", str(generation), "--n", "24",
         "--lm-eval", str(out), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    parity = report["lm_eval"]
    assert set(parity) == {"brackets", "reverse", "reverse_choice", "cloze", "copy", "echo"}
    for name, row in parity.items():
        assert row["lm_eval"] == pytest.approx(row["ours"], abs=1e-9), name
        if name != "echo":
            assert row["max_logprob_diff"] < 1e-4, name
    assert (out / "tasks" / "cloze.yaml").is_file() and (out / "hf" / "tokenizer.json").is_file()
