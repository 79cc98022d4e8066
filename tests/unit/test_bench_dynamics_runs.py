"""benchmarks/bench_dynamics.py: its runs are the shipped recipes with the change each name
says, and bad flags are one line (the runs themselves: tests/e2e/test_bench_dynamics.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_dynamics  # noqa: E402

from llm_tiny.config import load_config  # noqa: E402


def test_each_run_is_a_shipped_recipe_with_its_one_change():
    for name, (recipe, changes) in bench_dynamics.RUNS.items():
        shipped = load_config(ROOT / recipe)
        cfg = load_config(ROOT / recipe, changes)
        optimizer = name.split("-")[1]
        assert cfg.optim.name == optimizer, name
        if "lr" in name.split("-")[-1]:
            factor = float(name.split("-")[-1].removeprefix("lr").removesuffix("x"))
            assert cfg.optim.lr == pytest.approx(shipped.optim.lr * factor)
        else:
            assert cfg.optim.lr == shipped.optim.lr
        assert cfg.model == shipped.model and cfg.train.max_iters == shipped.train.max_iters
    assert {n.split("-")[1] for n in bench_dynamics.RUNS} == {"adamw", "muon"}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--runs", "tiny-sgd"], "--runs: unknown run 'tiny-sgd'"),
        (["--steps", "-1"], "--steps must be >= 0"),
    ],
)
def test_bad_flags_get_one_line_and_status_2(flags, message, capsys):
    assert bench_dynamics.main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
