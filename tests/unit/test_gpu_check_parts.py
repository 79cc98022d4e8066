"""benchmarks/gpu_check.py: its pure parts (the dry run itself is tests/e2e/test_gpu_check.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load_script

from llm_tiny.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


gpu_check = load_script("gpu_check")
bench_train = load_script("bench_train")


def test_pure_parts():
    assert gpu_check.remaining_timeout(60, deadline=100.0, now=70.0) == 30.0
    assert gpu_check.remaining_timeout(60, deadline=100.0, now=120.0) == 0.0
    assert gpu_check.normalise({"status": "failed: OOM", "x": 1}) == {
        "x": 1,
        "status": "failed",
        "error": "OOM",
    }
    xml = '<testsuites><testsuite tests="5" failures="1" errors="1" skipped="1"/></testsuites>'
    assert gpu_check.junit_counts(xml) == {
        "tests": 5, "passed": 2, "failed": 1, "errors": 1, "skipped": 1,
    }  # fmt: skip
    mfu, loss = gpu_check.targets(
        [
            {"name": "train/bf16+compile", "status": "ok", "mfu": 0.47},
            {"name": "shakespeare_char", "status": "ok", "time_to_target_s": 200.0},
        ],
        dry_run=False,
    )
    assert (mfu["met"], mfu["measured"], loss["met"]) == (True, "47.0%", False)
    assert bench_train.variant_features("bf16+compile") == {"bf16", "compile"}
    assert bench_train.variant_features("sdpa") == set()
    with pytest.raises(UserError, match="unknown variant 'fp8'"):
        bench_train.variant_features("bf16+fp8")
