"""What each part of `llm_tiny rl` does, measured on a toy task (docs/rl.md, "What fails").

    python benchmarks/rl_ablations.py --steps 30 --json out/rl_ablations.json

The start: the flat digit operations trained 90 steps by supervision (it answers about half of
them right, greedily). The toy task: 16 held-out prompts, trained on and scored on, every one
of them every step (`rl.prompts_per_step: 16`), so a variant's numbers differ by the method
alone, not by which prompts came up. Each variant changes one thing of the default (group
baseline, k = 8, lr 1e-3, one update per batch, no KL, no format reward) and runs `--steps`
steps in-process. Prints a table and one JSON line: per variant the held-out scores at the
start and the end, the last step's entropy, KL, share of well-formed answers and clipped
tokens, and the step time.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from llm_tiny.config import load_config
from llm_tiny.errors import ArgumentParser, UserError, run_cli
from llm_tiny.rl.loop import rl
from llm_tiny.tasks import write_dataset
from llm_tiny.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> overrides of the default
    "default": {},
    "k=2": {"rl.k": 2},
    "k=2, 4x prompts": {"rl.k": 2, "rl.prompts_per_step": 64},
    "no baseline": {"rl.baseline": "none"},
    "std_norm": {"rl.std_norm": True},
    "lr 1e-2": {"optim.lr": 1e-2, "optim.min_lr": 1e-3},
    "lr 1e-2, kl 0.5": {"optim.lr": 1e-2, "optim.min_lr": 1e-3, "rl.kl_coef": 0.5},
    "4 updates, clip": {"rl.updates_per_batch": 4},
    "format reward 1": {"rl.format_reward": 1.0},
}


def quiet(_: str) -> None:
    """Drop the runs' lines."""


def start_run(work: Path) -> tuple[str, str]:
    """The supervised start and the toy prompts file."""
    paths = write_dataset(work / "digits", n=2000, max_value=9, seed=1)
    flags = [
        f"--data.input=[{paths['train']},{paths['val']}]", f"--train.out_dir={work / 'sft'}",
        "--train.max_iters=90", "--optim.warmup_iters=20", "--train.eval_interval=1000",
        "--train.sample_at_end=false", "--train.batch_size=64",
    ]  # fmt: skip
    train(load_config(ROOT / "configs" / "digits.yaml", flags), progress=False, log=quiet)
    few = work / "few.txt"
    few.write_text("".join(paths["test"].read_text().splitlines(keepends=True)[:16]))
    return str(work / "sft"), str(few)


def last_values(run: Path) -> dict[str, float]:
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    scored = [r for r in rows if r["eval_greedy"]]
    out = {f"start_{k}": float(scored[0][k]) for k in ("eval_greedy", "eval_pass1", "eval_passk")}
    out |= {k: float(scored[-1][k]) for k in ("eval_greedy", "eval_pass1", "eval_passk")}
    out |= {k: float(rows[-1][k]) for k in ("entropy", "kl", "well_formed", "clip_frac")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)

    def main_run() -> int:
        names = args.only.split(",") if args.only else list(VARIANTS)
        unknown = [n for n in names if n not in VARIANTS]
        if unknown or args.steps < 1:
            raise UserError(
                f"--only names variants of {', '.join(VARIANTS)} (got {', '.join(unknown)}); "
                "--steps must be >= 1"
            )
        load_before = os.getloadavg()[0]
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            init, few = start_run(Path(tmp))
            for name in names:
                out = Path(tmp) / f"rl{len(results)}"
                flags = {
                    "train.init_from": init, "train.out_dir": str(out), "rl.prompts": few,
                    "rl.eval_prompts": few, "rl.max_new_tokens": 3, "optim.lr": 1e-3,
                    "train.max_iters": args.steps, "train.eval_interval": args.steps,
                    "train.log_interval": args.steps, "train.max_seconds": "null",
                } | VARIANTS[name]  # fmt: skip
                cfg = load_config(ROOT / "configs" / "rl_digits.yaml",
                                  [f"--{k}={v}" for k, v in flags.items()])  # fmt: skip
                started = time.perf_counter()
                rl(cfg, progress=False, log=quiet)
                seconds = time.perf_counter() - started
                results[name] = last_values(out) | {"seconds": seconds}
                r = results[name]
                print(
                    f"{name:<17} greedy {r['start_eval_greedy']:.3f} -> {r['eval_greedy']:.3f} | "
                    f"pass@1 {r['start_eval_pass1']:.3f} -> {r['eval_pass1']:.3f} | pass@k "
                    f"{r['eval_passk']:.3f} | entropy {r['entropy']:.3f} | kl {r['kl']:.3f} | "
                    f"well formed {r['well_formed']:.3f} | clipped {r['clip_frac']:.3f} | "
                    f"{seconds:.1f}s",
                    flush=True,
                )
        result = {"benchmark": "rl_ablations", "steps": args.steps, "variants": results,
                  "load_before": load_before, "load_after": os.getloadavg()[0]}  # fmt: skip
        line = json.dumps(result)
        print(line)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(line + "\n", encoding="utf-8")
        return 0

    return run_cli(main_run, "rl_ablations")


if __name__ == "__main__":
    sys.exit(main())
