"""Does a digit recipe hold on data it was not tuned on? Data drawn with several seeds, the
recipe trained on each as a user would run it, the test split scored.

    python benchmarks/digits_check.py --config configs/digits99.yaml --range 99 --seeds 1,2,3
    python benchmarks/digits_check.py --config configs/digits.yaml --range 9 --seeds 1,2,3
    python benchmarks/digits_check.py --config configs/digits_nested.yaml --depth 2 --n 60000

For each seed: `tasks digits --seed S` writes the data, `train CONFIG` trains on it (a fresh
process, timed whole: start-up, data, training, the final evaluation and checkpoint), and
`tasks eval` scores the last checkpoint on the test split. The training seed is the config's:
only the data changes. The recipe's own `train.max_seconds` guard stays on, so a machine too
slow for it shows up as a lower accuracy, as it would for a user. Prints one line per seed,
then one JSON line (also written to `--json`): per seed the accuracy overall, per operation
and per depth, the steps run, what stopped the run and the times; then the minimum accuracy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm_tiny.errors import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
# The end-of-run line (`llm_tiny.train.loop.summary`): "done: step N in Ts | ..." or, when the
# time budget ended the run, "time budget reached (...): step N in Ts | ...".
DONE = re.compile(r"^(done|time budget reached \(.*\)): step (\d+) in ([\d.]+)s", re.MULTILINE)


def run(args: list[str], env: dict[str, str]) -> str:
    """Run `python -m llm_tiny ARGS`; its stdout, or a UserError with the tail of its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "llm_tiny", *args], cwd=ROOT, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    if result.returncode != 0:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
        raise UserError(f"`llm_tiny {args[0]}` failed: {' '.join(tail)}")
    return result.stdout


def check_seed(seed: int, args, work: Path, env: dict[str, str]) -> dict:
    """Data with `seed`, the recipe trained on it, its test split scored."""
    data, out = work / f"data{seed}", work / f"run{seed}"
    make = ["tasks", "digits", "--out", str(data), "--range", str(args.range)]
    make += ["--seed", str(seed), "--depth", str(args.depth)]
    run(make + (["--n", str(args.n)] if args.n else []), env)
    overrides = [
        f"--data.input=[{data / 'train.txt'},{data / 'val.txt'}]",
        f"--train.out_dir={out}",
        "--train.overwrite=true",
        "--train.sample_at_end=false",
    ]
    started = time.perf_counter()
    log = run(["train", args.config, *overrides, *(f"--{o}" for o in args.set)], env)
    wall = time.perf_counter() - started
    done = DONE.search(log)
    if done is None:
        raise UserError(f"seed {seed}: the training log has no end-of-run line")
    test = str(data / "test.txt")
    scored = json.loads(
        run(["tasks", "eval", "--ckpt", str(out / "last.pt"), "--data", test, "--json"], env)
    )
    return {
        "seed": seed,
        "accuracy": scored["accuracy"],
        "per_operation": {k: v["accuracy"] for k, v in scored["per_operation"].items()},
        "per_depth": {k: v["accuracy"] for k, v in scored.get("per_depth", {}).items()},
        "n_test": scored["n"],
        "steps": int(done.group(2)),
        "train_s": float(done.group(3)),
        "wall_s": wall,
        "stopped_by_time": done.group(1) != "done",
    }


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="digits_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits99.yaml")
    parser.add_argument("--range", type=int, default=99, choices=(9, 99))
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--n", type=int, default=None, help="examples (default: the task's)")
    parser.add_argument("--seeds", default="1,2,3", help="data seeds, comma-separated")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override for every run (repeatable)")  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)

    def main_run() -> int:
        if not Path(args.config).is_file():
            raise UserError(f"--config {args.config}: not found")
        args.config = str(Path(args.config).resolve())
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise UserError(
                f"--seeds must be integers separated by commas, got {args.seeds!r}"
            ) from None
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        rows = []
        with tempfile.TemporaryDirectory(prefix="llm_tiny_digits_check_") as tmp:
            for seed in seeds:
                row = check_seed(seed, args, Path(tmp), env)
                rows.append(row)
                ops = " ".join(
                    f"{k} {100 * v:.2f}" for k, v in sorted(row["per_operation"].items())
                )
                print(
                    f"seed {seed}: {100 * row['accuracy']:.2f}% ({ops}) after {row['steps']} steps,"
                    f" {row['train_s']:.1f}s training, {row['wall_s']:.1f}s in all"
                    + (" (stopped by the time budget)" if row["stopped_by_time"] else ""),
                    flush=True,
                )
        result = {
            "config": args.config,
            "overrides": args.set,
            "load_avg": os.getloadavg(),
            "seeds": rows,
            "min_accuracy": min(r["accuracy"] for r in rows),
            "max_train_s": max(r["train_s"] for r in rows),
        }
        line = json.dumps(result)
        print(line)
        if args.json:
            Path(args.json).write_text(line + "\n", encoding="utf-8")
        return 0

    return run_cli(main_run, "digits_check.py")


if __name__ == "__main__":
    sys.exit(main())
