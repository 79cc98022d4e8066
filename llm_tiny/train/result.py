"""How a run ends: `TrainResult` and `summary`, its end-of-run line (which
`benchmarks/digits_check.py` parses), or `TrainingDiverged`."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from llm_tiny.config import RunConfig
from llm_tiny.errors import UserError


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row; the last good checkpoint is kept."""

    @classmethod
    def at(cls, step: int, in_a_row: int, last: Path) -> TrainingDiverged:
        """The error for a run stopped at `step`; `last` is its last good checkpoint, if any."""
        keep = (
            f"the last good checkpoint {last} is kept"
            if last.exists()
            else "no checkpoint was written"
        )
        return cls(
            f"stopped after {in_a_row} non-finite losses in a row at step {step} ({keep}); "
            "lower optim.lr, keep optim.grad_clip on, or use train.dtype bfloat16/float32"
        )


@dataclasses.dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    out_dir: Path
    step: int
    tokens: int
    train_loss: float | None
    val_loss: float | None
    val_ppl: float | None
    val_bpb: float | None
    best_val_loss: float
    elapsed_s: float
    skipped_steps: int
    stopped: str  # "max_iters" | "max_seconds" | "signal"
    signum: int | None = None


def summary(r: TrainResult, cfg: RunConfig) -> str:
    """The end-of-run line; it says what ended the run."""
    t = cfg.train
    why = {
        "max_iters": "done",
        "max_seconds": f"time budget reached (train.max_seconds={t.max_seconds:g}; step "
        f"{r.step} of train.max_iters={t.max_iters}, the schedule completed by time)"
        if t.max_seconds
        else "",
        "signal": "interrupted",
    }[r.stopped]
    best = r.best_val_loss if math.isfinite(r.best_val_loss) else None
    return (
        f"{why}: step {r.step} in {r.elapsed_s:.1f}s | val loss {_fmt(r.val_loss)} | "
        f"ppl {_fmt(r.val_ppl, '.2f')} | bpb {_fmt(r.val_bpb)} | best val loss {_fmt(best)}"
        + (f" | {r.skipped_steps} steps skipped" if r.skipped_steps else "")
    )


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)
