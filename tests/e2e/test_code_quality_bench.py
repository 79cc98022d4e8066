"""benchmarks/code_quality.py as a user runs it: the untrained reference beside the runs, the
JSON it prints and writes, and one line with exit status 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "code_quality.py"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip


def test_the_benchmark_scores_the_untrained_reference_and_each_run(tiny_run, tmp_path):
    out = tmp_path / "q.json"
    proc = bench("--runs", str(tiny_run), "--n", "6", "--max-new-tokens", "12", "--threads",
                 "1", "--json-out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    result = json.loads(line)
    assert json.loads(out.read_text()) == result
    assert [r["run"] for r in result["rows"]] == ["untrained", str(tiny_run)]
    for r in result["rows"]:
        assert r["samples"] == 6 and 0 <= r["parsed"] <= r["finished"] <= 6
        assert r["parse_share"] == r["parsed"] / 6
    assert result["n"] == 6 and result["threads"] == 1 and len(result["load_avg"]) == 2


def test_bad_input_is_one_line_and_exit_2(tiny_run):
    for args, message in [
        (["--runs", "nope"], "nope"),
        (["--runs", str(tiny_run), "--n", "0"], "--n and --max-new-tokens must be >= 1"),
    ]:
        proc = bench(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
