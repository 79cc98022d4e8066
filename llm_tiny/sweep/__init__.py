"""Hyperparameter sweeps: `python -m llm_tiny sweep SPEC.yaml [--jobs N] [--retry-failed]`.

One module per step, each importing only those before it: `spec` (the YAML spec), `space` (its
points, and the trials planned from them), `results` (what a sweep leaves behind) and `runner`
(each trial a training subprocess). Running the same spec again skips the trials that already
finished and re-runs only the missing ones (and the failed ones with `--retry-failed`).
"""

from __future__ import annotations

import sys

from llm_tiny.config import parse_overrides, split_overrides
from llm_tiny.errors import ArgumentParser, run_cli
from llm_tiny.sweep.results import values_text
from llm_tiny.sweep.runner import run_sweep, threads_per_job
from llm_tiny.sweep.space import plan_trials
from llm_tiny.sweep.spec import load_spec


def main(argv: list[str] | None = None) -> int:
    """`python -m llm_tiny sweep SPEC.yaml [--jobs N] [--retry-failed] [--section.key=value]`."""
    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = ArgumentParser(
        prog="llm_tiny sweep",
        description="Search hyperparameters: train one run per point of a spec's space, "
        "rank them by the validation metric. Extra --section.key=value flags apply to every trial.",
    )
    parser.add_argument("spec", help="sweep spec YAML (see configs/sweep_tiny.yaml)")
    parser.add_argument("--jobs", type=int, default=1, help="trials run in parallel (default 1)")
    parser.add_argument(
        "--retry-failed", action="store_true", help="re-run trials that failed in an earlier run"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the planned trials and exit")
    args = parser.parse_args(rest)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")

    def run() -> int:
        spec = load_spec(args.spec)
        nested, _ = parse_overrides(overrides)
        extra = {f"{s}.{k}": v for s, values in nested.items() for k, v in values.items()}
        if args.dry_run:
            for t in plan_trials(spec, threads_per_job(args.jobs), extra):
                state = "valid" if t.config is not None else f"invalid: {t.error}"
                print(f"{t.id}  {values_text(t)}  {state}")
            return 0
        ranked = run_sweep(spec, args.jobs, args.retry_failed, extra)
        return 0 if any(t.status == "ok" for t in ranked) else 1

    return run_cli(run, "llm_tiny sweep")
