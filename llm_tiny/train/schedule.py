"""Learning-rate schedules as pure functions of the step.

Every schedule starts with a linear warmup that begins *above* zero: step 0 (the first optimizer
update) gets `lr / warmup_iters`, step `warmup_iters - 1` gets the full `lr`. (A warmup that
starts at exactly 0 wastes the first update: AdamW multiplies it by zero.) After the warmup:

- `cosine` (Loshchilov & Hutter 2017, SGDR, without restarts): half a cosine from `lr` at step
  `warmup_iters` down to `min_lr` at step `decay_iters`, then `min_lr` for ever after.
- `constant`: `lr` until the end.
- `wsd`, warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024): `lr` until the last
  `decay_fraction` of `decay_iters`, then a straight line down to `min_lr` at `decay_iters`.
  A stable phase lets a run be extended without restarting its schedule.

Steps are 0-based optimizer updates: the loop calls `lr_at(it, ...)` for `it = 0 .. max_iters - 1`.
A run with a time budget (`train.max_seconds`) decays by whichever of its steps and its time is
further along (`schedule_step`), so that the decay completes within the budget even on a
machine slower than the one the config was sized on; the warmup always counts steps.
"""

from __future__ import annotations

import math

from llm_tiny.config import OptimConfig, Schedule, choices

SCHEDULES = choices(Schedule)


def lr_at(
    step: int,
    *,
    lr: float,
    min_lr: float,
    warmup_iters: int,
    decay_iters: int,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """The learning rate of optimizer update number `step` (0-based).

    >>> [round(lr_at(s, lr=1.0, min_lr=0.0, warmup_iters=4, decay_iters=8), 4) for s in range(10)]
    [0.25, 0.5, 0.75, 1.0, 1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    if schedule == "constant":
        return lr
    if step >= decay_iters:
        return min_lr
    if schedule == "cosine":
        progress = (step - warmup_iters) / (decay_iters - warmup_iters)  # in [0, 1)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    # wsd: the decay phase is the last `decay_fraction` of the run, never inside the warmup.
    decay_start = max(warmup_iters, decay_iters - round(decay_fraction * decay_iters))
    if step < decay_start:
        return lr
    progress = (step - decay_start) / (decay_iters - decay_start)  # in [0, 1)
    return lr + progress * (min_lr - lr)


def schedule_step(
    step: int, max_iters: int, elapsed_s: float = 0.0, max_seconds: float | None = None
) -> int:
    """The step the schedule is at: `step`, or, with a time budget, the whole step that the
    time spent corresponds to if that is further along (`max_iters * elapsed_s / max_seconds`).

    Whole steps keep a budget that does not bind exact: the schedule then depends on the step
    alone, so a resumed run still repeats an uninterrupted one bit for bit.

    >>> schedule_step(10, 100), schedule_step(10, 100, elapsed_s=30.0, max_seconds=60.0)
    (10, 50)
    """
    if max_seconds is None:
        return step
    return max(step, math.floor(max_iters * min(elapsed_s / max_seconds, 1.0)))


def lr_for(optim: OptimConfig, max_iters: int, step: int, position: int | None = None) -> float:
    """`lr_at` with the values of the optim section (`lr_decay_iters` defaults to `max_iters`).

    `position` is where a time budget puts the schedule (`schedule_step`). The warmup counts
    optimizer updates whatever the clock says (it is there for the optimizer's sake); the
    decay after it follows the position.
    """
    if position is not None and step >= optim.warmup_iters:
        step = position
    return lr_at(
        step,
        lr=optim.lr,
        min_lr=optim.min_lr,
        warmup_iters=optim.warmup_iters,
        decay_iters=optim.decay_iters(max_iters),
        schedule=optim.schedule,
        decay_fraction=optim.decay_fraction,
    )
