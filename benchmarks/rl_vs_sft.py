"""Does RL with verifiable rewards improve a partly trained model, and how does it compare with
simply training on for the same wall time? (docs/rl.md; `make rl-demo`)

    python benchmarks/rl_vs_sft.py --seeds 1,2,3 --seconds 60 --json out/rl_demo.json
    python benchmarks/rl_vs_sft.py --depth 2 --seeds 1,2,3 --seconds 100   # nested

For each seed, in fresh processes as a user would run them:

    1. `tasks digits --depth D --seed S` writes the digit operations (train/val/test)
    2. SFT start: `train configs/digits.yaml` (depth 2: `digits_nested.yaml`) for only
       `--sft-steps` steps (seed S), so that it answers partly right
    3. RL: `rl configs/rl_digits.yaml` from that run, on the train split's prompts, for
       `--seconds` of loop time (`train.max_seconds`)
    4. SFT continued: the same supervised recipe from the same run (`train.init_from`,
       a fresh optimizer like RL's) on the same train split, for the same `--seconds`
    5. `tasks eval` scores the start and both results greedily on the whole test split

Both arms get the same time budget and run at the same time, one core each (so on a shared
machine both see the same load); their schedules follow the clock, their evaluations count
against their budget, and both are scored the same way (exact match, greedy). Prints a line per seed and a table, then one JSON line (also
written to `--json`): per seed the three accuracies, the steps each arm ran and the times;
the mean and standard deviation over seeds; and the load average before and after, since on a
shared machine every time here is inflated by the other work.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm_tiny.errors import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
SFT = {1: "configs/digits.yaml", 2: "configs/digits_nested.yaml"}  # by --depth
DEFAULTS = {1: {"sft_steps": 75, "n": 10000}, 2: {"sft_steps": 150, "n": 20000}}
WARMUP = {1: 20, 2: 30}  # the SFT start's warm-up steps
RL = "configs/rl_digits.yaml"
# The end-of-run lines: training's "done: step N in Ts" or "time budget reached (...): step N
# in Ts"; rl's "done: step N in Ts (why)".
DONE = re.compile(r"^(?:done|time budget reached \(.*\)): step (\d+) in ([\d.]+)s", re.MULTILINE)


class Job:
    """`python -m llm_tiny ARGS` in its own process, started now; `wait` for its stdout."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.name, self.started = args[0], time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llm_tiny", *args], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def wait(self) -> tuple[str, float]:
        """Its stdout and wall time, or a UserError with its stderr's last line."""
        out, err = self.proc.communicate()
        wall = time.perf_counter() - self.started
        if self.proc.returncode != 0:
            tail = (err.strip() or out.strip()).splitlines()[-1:]
            raise UserError(f"`llm_tiny {self.name}` failed: {' '.join(tail)}")
        return out, wall


def run(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    return Job(args, env).wait()


def steps_and_seconds(log: str, what: str) -> tuple[int, float]:
    done = DONE.search(log)
    if done is None:
        raise UserError(f"{what}: the log has no end-of-run line")
    return int(done.group(1)), float(done.group(2))


def accuracy(ckpt: Path, test: Path, env: dict[str, str]) -> float:
    out, _ = run(["tasks", "eval", "--ckpt", str(ckpt), "--data", str(test), "--json"], env)
    return json.loads(out)["accuracy"]


def one_seed(seed: int, args, work: Path, env: dict[str, str]) -> dict:
    data, sft, rl, more = (work / f"{name}{seed}" for name in ("data", "sft", "rl", "sft_more"))
    make = ["tasks", "digits", "--out", str(data), "--depth", str(args.depth), "--n", str(args.n)]
    run([*make, "--seed", str(seed)], env)
    train, test = data / "train.txt", data / "test.txt"
    common = ["--train.sample_at_end=false", "--train.overwrite=true", f"--train.seed={seed}"]
    inputs = f"--data.input=[{train},{data / 'val.txt'}]"
    log, start_wall = run(
        ["train", SFT[args.depth], inputs, f"--train.out_dir={sft}",
         f"--train.max_iters={args.sft_steps}", f"--optim.warmup_iters={min(WARMUP[args.depth], args.sft_steps)}",
         "--train.eval_interval=1000", *common],
        env,
    )  # fmt: skip
    start_steps, _ = steps_and_seconds(log, f"seed {seed} SFT start")
    budget = f"--train.max_seconds={args.seconds}"
    # The two arms run side by side, one core each: on a shared machine both see the same load.
    rl_job = Job(
        ["rl", RL, f"--rl.prompts={train}", f"--rl.eval_prompts={test}", budget,
         f"--train.init_from={sft / 'last.pt'}", f"--train.out_dir={rl}",
         "--train.max_iters=100000", "--train.eval_interval=100000", "--rl.eval_n=50", *common],
        env,
    )  # fmt: skip
    # The continued run: the same recipe from the start's weights, a short warm-up for its new
    # optimizer, as many steps as the clock allows (its schedule follows the clock).
    more_job = Job(
        ["train", SFT[args.depth], inputs, f"--train.out_dir={more}",
         f"--train.init_from={sft / 'last.pt'}",
         "--train.max_iters=100000", "--optim.warmup_iters=10", "--train.eval_interval=100000",
         budget, *common],
        env,
    )  # fmt: skip
    (log, rl_wall), (more_log, more_wall) = rl_job.wait(), more_job.wait()
    rl_steps, rl_s = steps_and_seconds(log, f"seed {seed} RL")
    log = more_log
    more_steps, more_s = steps_and_seconds(log, f"seed {seed} SFT continued")
    return {
        "seed": seed,
        "start": accuracy(sft / "last.pt", test, env),
        "rl": accuracy(rl / "last.pt", test, env),
        "sft_continued": accuracy(more / "last.pt", test, env),
        "start_steps": start_steps,
        "rl_steps": rl_steps,
        "sft_continued_steps": more_steps,
        "rl_loop_s": rl_s,
        "sft_continued_loop_s": more_s,
        "wall_s": {"start": start_wall, "rl": rl_wall, "sft_continued": more_wall},
        "rl_run": str(rl),
    }


def load() -> float:
    return os.getloadavg()[0]


def mean_sd(values: list[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (data and runs)")
    parser.add_argument("--seconds", type=float, default=60.0, help="each arm's loop time")
    parser.add_argument("--depth", type=int, choices=(1, 2), default=1, help="2: nested")
    parser.add_argument("--sft-steps", type=int, help="the SFT start's steps (75; depth 2: 150)")
    parser.add_argument("--n", type=int, help="examples in the splits (10000; depth 2: 20000)")
    parser.add_argument("--work", default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--plot", default=None, help="draw the first seed's RL run here (PNG)")
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)

    def main_run() -> int:
        for key, value in DEFAULTS[args.depth].items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(
                f"--seeds must be comma-separated integers, got {args.seeds!r}"
            ) from None
        if not seeds or args.seconds <= 0 or args.sft_steps < 1:
            raise UserError("--seeds needs a seed, --seconds must be > 0, --sft-steps >= 1")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        load_before, started = load(), time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.work or tmp)
            results = []
            for seed in seeds:
                r = one_seed(seed, args, work, env)
                results.append(r)
                print(
                    f"seed {seed}: start {100 * r['start']:.2f}% | RL {100 * r['rl']:.2f}% "
                    f"({r['rl_steps']} steps) | SFT continued {100 * r['sft_continued']:.2f}% "
                    f"({r['sft_continued_steps']} steps) | {sum(r['wall_s'].values()):.0f}s",
                    flush=True,
                )
            if args.plot:
                from llm_tiny.plots import save_figure
                from llm_tiny.rl.curves import rl_figure

                save_figure(rl_figure([results[0]["rl_run"]]), args.plot)
        summary = {k: mean_sd([r[k] for r in results]) for k in ("start", "rl", "sft_continued")}
        summary["rl_gain"] = mean_sd([r["rl"] - r["start"] for r in results])
        summary["sft_continued_gain"] = mean_sd([r["sft_continued"] - r["start"] for r in results])
        total = time.perf_counter() - started
        print(f"{'arm':<15} {'exact match (mean ± sd over ' + str(len(seeds)) + ' seeds)':>40}")
        for k in ("start", "rl", "sft_continued"):
            s = summary[k]
            print(f"{k:<15} {100 * s['mean']:>30.2f}% ± {100 * s['sd']:.2f}")
        print(f"total {total:.0f}s; load average {load_before:.2f} before, {load():.2f} after")
        result = {
            "benchmark": "rl_vs_sft", "seconds_per_arm": args.seconds, "depth": args.depth,
            "sft_steps": args.sft_steps, "n": args.n, "seeds": results, "summary": summary,
            "total_s": total, "load_before": load_before, "load_after": load(),
            "cpu_count": os.cpu_count(),
        }  # fmt: skip
        line = json.dumps(result)
        print(line)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(line + "\n", encoding="utf-8")
        return 0

    return run_cli(main_run, "rl_vs_sft")


if __name__ == "__main__":
    sys.exit(main())
