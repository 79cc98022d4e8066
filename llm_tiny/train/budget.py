"""What a time budget (`train.max_seconds`) keeps back for the end of a run.

The budget covers the training loop: the steps, the evaluations on the way and the final
evaluation with its checkpoints. So the loop stops stepping while there is still time for
the end: `Reserve.seconds` is what the final evaluation and the last save are expected to take,
and the schedule decays over the budget minus that (`Trainer.schedule_position`).

Evaluations during training score `train.eval_iters` batches spread over the validation split,
the same ones each time (`data.batches.spread`), so their losses compare across steps and
`best.pt` is chosen on them. The final evaluation also scores the rest of the split (one pass,
`eval.loss.evaluate_split(full=True)`), reported as the run's result, when that is expected to
take at most `FULL_SHARE` of the budget (always without a budget). Otherwise the end of the
run says so, with the command that scores the whole split.

The expected times come from the evaluations' measured rate (tokens scored per second); before
the first one, evaluation is taken to run at twice the training rate (a forward pass is about a
third of a training step's work; twice leaves room for a busy machine). The reserve only grows,
so the schedule's position never moves back, and it is at most half the budget, so a budget too
small for its evaluations still trains.
"""

from __future__ import annotations

import dataclasses

FULL_SHARE = 0.25  # the largest share of the budget a final full-split evaluation may take
MAX_SHARE = 0.5  # the largest share of the budget kept back for the end


@dataclasses.dataclass
class Reserve:
    """The time kept back for the end of a run, in seconds (`seconds`), from the measured
    rates. `subset` and `full` are the targets an evaluation during training and the whole
    validation split score."""

    max_seconds: float | None
    subset: int
    full: int
    eval_rate: float | None = None  # validation tokens per second, as measured
    save_s: float = 0.0  # the last checkpoint save's time
    seconds: float = 0.0

    def measured_eval(self, targets: int, seconds: float) -> None:
        if targets > 0 and seconds > 0:
            self.eval_rate = targets / seconds

    def measured_save(self, seconds: float) -> None:
        self.save_s = max(self.save_s, seconds)

    def expected_eval_s(self, targets: int, train_rate: float) -> float:
        """Seconds to score `targets` validation tokens at the measured (or assumed) rate."""
        rate = self.eval_rate or 2.0 * train_rate
        return targets / rate if rate > 0 else 0.0

    def final_full(self, train_rate: float = 0.0) -> bool:
        """Whether the final evaluation scores the whole split (see the module docstring)."""
        if self.full <= self.subset:
            return False  # the subset is the split: nothing more to score
        if self.max_seconds is None:
            return True
        return self.expected_eval_s(self.full, train_rate) <= FULL_SHARE * self.max_seconds

    def update(self, train_rate: float) -> float:
        """The reserve for the end as now expected (never less than before); returns it."""
        if self.max_seconds is None:
            return 0.0
        targets = self.full if self.final_full(train_rate) else self.subset
        wanted = self.expected_eval_s(targets, train_rate) + 2 * self.save_s
        self.seconds = min(max(self.seconds, wanted), MAX_SHARE * self.max_seconds)
        return self.seconds


def final_eval_note(val: dict[str, float], reserve: Reserve, out_dir: str) -> str | None:
    """The line after the final evaluation: the whole split's numbers, or why they are missing
    and how to get them; None when the evaluation scored the whole split anyway."""
    if "full_loss" in val:
        return (
            f"the whole validation split ({val['full_tokens']:,} tokens): val loss "
            f"{val['full_loss']:.4f} | ppl {val['full_ppl']:.2f} | bpb {val['full_bpb']:.4f}"
        )
    if reserve.full <= reserve.subset:
        return None
    return (
        f"validated on {val['tokens']:,} of the split's {reserve.full:,} tokens "
        f"(train.eval_iters batches spread over it): the whole split would take about "
        f"{reserve.expected_eval_s(reserve.full, 0.0):.0f}s, over a quarter of "
        f"train.max_seconds; score it with: python -m llm_tiny eval --ckpt {out_dir}"
    )
