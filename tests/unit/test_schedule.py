"""The learning-rate schedules at hand-computed points."""

from __future__ import annotations

import math

import pytest

from llm_tiny.config import load_config
from llm_tiny.train.schedule import lr_at, lr_for


def cosine(step: int) -> float:
    return lr_at(step, lr=1.0, min_lr=0.1, warmup_iters=10, decay_iters=110)


def test_warmup_starts_above_zero_and_reaches_the_peak():
    # lr * (step + 1) / warmup: 0.1, 0.2, ..., 1.0 on steps 0..9.
    assert cosine(0) == pytest.approx(0.1)
    assert cosine(4) == pytest.approx(0.5)
    assert cosine(9) == pytest.approx(1.0)
    assert all(cosine(s) < cosine(s + 1) for s in range(9))


def test_cosine_points():
    # progress p = (step - 10) / 100; lr = 0.1 + 0.5 (1 + cos(pi p)) 0.9
    assert cosine(10) == pytest.approx(1.0)  # p = 0
    assert cosine(35) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)))  # p = 1/4
    assert cosine(60) == pytest.approx(0.55)  # p = 1/2: halfway between 1.0 and 0.1
    assert cosine(85) == pytest.approx(0.1 + 0.45 * (1 - math.sqrt(0.5)))  # p = 3/4
    assert cosine(110) == 0.1  # decay end
    assert cosine(10_000) == 0.1  # constant afterwards


def test_no_warmup_starts_at_the_peak():
    assert lr_at(0, lr=2.0, min_lr=0.0, warmup_iters=0, decay_iters=4) == 2.0
    assert lr_at(2, lr=2.0, min_lr=0.0, warmup_iters=0, decay_iters=4) == pytest.approx(1.0)


def test_constant_schedule():
    values = [
        lr_at(s, lr=3e-4, min_lr=0.0, warmup_iters=3, decay_iters=5, schedule="constant")
        for s in range(8)
    ]
    assert values == pytest.approx([1e-4, 2e-4, 3e-4, 3e-4, 3e-4, 3e-4, 3e-4, 3e-4])


def test_wsd_schedule():
    # decay_iters 100, decay_fraction 0.2: stable until step 80, then linear to min_lr at 100.
    def wsd(step: int) -> float:
        return lr_at(
            step,
            lr=1.0,
            min_lr=0.0,
            warmup_iters=10,
            decay_iters=100,
            schedule="wsd",
            decay_fraction=0.2,
        )

    assert wsd(0) == pytest.approx(0.1)
    assert wsd(10) == 1.0
    assert wsd(79) == 1.0
    assert wsd(80) == 1.0
    assert wsd(90) == pytest.approx(0.5)
    assert wsd(95) == pytest.approx(0.25)
    assert wsd(100) == 0.0
    assert wsd(500) == 0.0


def test_wsd_decay_never_starts_inside_the_warmup():
    # decay_fraction 1 would start decaying at 0; it starts after the warmup instead.
    values = [
        lr_at(
            s, lr=1.0, min_lr=0.0, warmup_iters=4, decay_iters=8, schedule="wsd", decay_fraction=1.0
        )
        for s in range(9)
    ]
    assert values == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])


def test_lr_for_reads_the_config_and_defaults_decay_to_max_iters(tmp_path):
    cfg = load_config(
        None,
        ["--optim.lr=1.0", "--optim.min_lr=0.0", "--optim.warmup_iters=0", "--train.max_iters=100"],
    )
    assert lr_for(cfg.optim, cfg.train.max_iters, 50) == pytest.approx(0.5)
    assert lr_for(cfg.optim, cfg.train.max_iters, 100) == 0.0
    cfg = load_config(
        None,
        [
            "--optim.lr=1.0",
            "--optim.min_lr=0.0",
            "--optim.warmup_iters=0",
            "--train.max_iters=100",
            "--optim.lr_decay_iters=200",
        ],
    )
    assert lr_for(cfg.optim, cfg.train.max_iters, 100) == pytest.approx(0.5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, lr=1.0, min_lr=0.0, warmup_iters=0, decay_iters=1)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, lr=1.0, min_lr=0.0, warmup_iters=0, decay_iters=1, schedule="linear")


def test_a_time_budget_moves_the_schedule_by_whichever_is_further_along():
    from llm_tiny.train.schedule import schedule_step

    assert schedule_step(10, 100) == 10  # no budget: steps only
    assert schedule_step(10, 100, elapsed_s=1.0, max_seconds=60.0) == 10  # steps ahead
    assert schedule_step(10, 100, elapsed_s=30.0, max_seconds=60.0) == 50  # time ahead
    assert schedule_step(0, 100, elapsed_s=0.3, max_seconds=60.0) == 0  # not a whole step ahead
    assert schedule_step(10, 100, elapsed_s=90.0, max_seconds=60.0) == 100  # capped at the end
    flags = ["--optim.lr=1.0", "--optim.min_lr=0.1", "--optim.warmup_iters=10"]
    cfg = load_config(None, [*flags, "--train.max_iters=100"])
    # At the budget the schedule is at its end whatever the step: the decay is complete.
    at_budget = schedule_step(40, 100, elapsed_s=60.0, max_seconds=60.0)
    assert lr_for(cfg.optim, 100, 40, at_budget) == pytest.approx(0.1)
    # The warmup counts optimizer updates, never time: it is there for the optimizer's sake.
    assert lr_for(cfg.optim, 100, 4, 80) == pytest.approx(0.5)
