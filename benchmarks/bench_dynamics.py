"""Layer-wise update analysis: the update-to-weight ratio and the gradient norm of every weight
matrix, layer by layer, over the warmup and the decay, for AdamW and Muon on the shipped
recipes.

    python benchmarks/bench_dynamics.py                                  (about 20 min, 1 thread)
    python benchmarks/bench_dynamics.py --runs digits-muon --steps 60 --img-dir /tmp  (a look)

Each run trains a recipe exactly as shipped (its steps, schedule and batch; only
`train.max_seconds` is lifted, so that a busy machine does not cut it short) with
`train.log_dynamics=true` every 10 steps, or with the one change its name says:

- `tiny-adamw`: `configs/tiny.yaml` (AdamW), and `tiny-muon` the same with `optim.name=muon`;
- `digits-muon`: `configs/digits.yaml` (Muon), and `digits-adamw` the same with AdamW;
- `digits-adamw-lr10x`, `digits-adamw-lr0.1x`: AdamW with ten times and a tenth of the
  recipe's learning rate, what too large and too small steps look like.

For each run it draws `viz training RUN --layers`'s figure into `--img-dir`
(`dynamics_<run>.png`), prints the median update ratio and gradient norm of each kind of
matrix in each phase of the schedule (`viz.training.phase_summary`) and the final validation
loss, and writes everything as JSON (`--json`, rewritten after every run).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llm_tiny.errors import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
# name -> (recipe, overrides)
RUNS: dict[str, tuple[str, list[str]]] = {
    "tiny-adamw": ("configs/tiny.yaml", []),
    "tiny-muon": ("configs/tiny.yaml", ["optim.name=muon"]),
    "digits-muon": ("configs/digits.yaml", []),
    "digits-adamw": ("configs/digits.yaml", ["optim.name=adamw"]),
    "digits-adamw-lr10x": (
        "configs/digits.yaml", ["optim.name=adamw", "optim.lr=3.0e-2", "optim.min_lr=3.0e-3"]
    ),
    "digits-adamw-lr0.1x": (
        "configs/digits.yaml", ["optim.name=adamw", "optim.lr=3.0e-4", "optim.min_lr=3.0e-5"]
    ),
}  # fmt: skip


def run_one(name: str, args, work: Path) -> dict[str, Any]:
    """Train one run with its dynamics logged; its figure, phase summary and final loss."""
    from llm_tiny.config import load_config
    from llm_tiny.tasks import DEFAULT_N, write_dataset
    from llm_tiny.train.loop import train
    from llm_tiny.train.metrics import read_dynamics, read_metrics
    from llm_tiny.viz.training import lr_phases, phase_summary, plot_layers

    recipe, changes = RUNS[name]
    out_dir = work / name
    overrides = [
        *changes,
        f"train.out_dir={out_dir}",
        "train.max_seconds=null",
        "train.log_dynamics=true",
        "train.log_interval=10",
        f"train.threads={args.threads}",
        "train.sample_at_end=false",
        "train.overwrite=true",
    ]
    if args.steps:  # a quick look: the warmup shortened with the run
        overrides += [f"train.max_iters={args.steps}", f"optim.warmup_iters={args.steps // 4}"]
    if recipe.endswith("digits.yaml"):
        data = work / "digits_data"
        if not (data / "train.txt").exists():
            write_dataset(data, DEFAULT_N[9], 9, 1)  # as `tasks digits --out data/digits` does
        overrides.append(f"data.input=[{data / 'train.txt'},{data / 'val.txt'}]")
    else:
        overrides.append(f"data.input=[{ROOT / 'data/tiny.txt'}]")
    cfg = load_config(ROOT / recipe, overrides)
    started = time.perf_counter()
    result = train(cfg, progress=False, log=lambda _line: None)
    seconds = time.perf_counter() - started
    series = read_dynamics(out_dir / "dynamics.csv")
    lr = [(int(r["step"]), r["lr"]) for r in read_metrics(out_dir / "metrics.csv") if r["lr"]]
    phases = lr_phases(lr)
    image = Path(args.img_dir) / f"dynamics_{name}.png"
    change = " ".join(f"--{c}" for c in changes)
    title = f"{name}: {recipe} {change}".strip() + " (benchmarks/bench_dynamics.py)"
    plot_layers(series, image, phases, title)
    return {
        "run": name,
        "recipe": recipe,
        "changes": changes,
        "optimizer": cfg.optim.name,
        "steps": result.step,
        "val_loss": result.val_loss,
        "seconds": seconds,
        "load_avg": round(os.getloadavg()[0], 1),
        "phases": phases,
        "summary": phase_summary(series, *phases),
        "image": str(image),
    }


def write_json(path: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="bench_dynamics.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated; default: all")
    parser.add_argument(
        "--steps", type=int, default=0, help="cut every run to N steps (0: as shipped)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--img-dir", default="docs/img")
    parser.add_argument("--json", default="out/bench_dynamics.json")
    args = parser.parse_args(argv)

    def run() -> int:
        names = args.runs.split(",")
        for bad in [n for n in names if n not in RUNS]:
            raise UserError(f"--runs: unknown run {bad!r}; choose from {', '.join(RUNS)}")
        if args.steps < 0 or args.threads < 1:
            raise UserError("--steps must be >= 0 and --threads >= 1")
        import torch

        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()} CPU with {os.cpu_count()} cores",
            "torch": torch.__version__,
            "threads": args.threads,
            "command": "python benchmarks/bench_dynamics.py " + " ".join(argv or sys.argv[1:]),
        }
        rows = []
        with tempfile.TemporaryDirectory(prefix="llm_tiny_dynamics_") as tmp:
            for name in names:
                row = run_one(name, args, Path(tmp))
                rows.append(row)
                print(
                    f"{name:<20} {row['optimizer']:<6} val {row['val_loss']:.4f} in "
                    f"{row['seconds']:.0f}s (load {row['load_avg']}); warmup to step "
                    f"{row['phases'][0]}, decay from {row['phases'][1]}",
                    flush=True,
                )
                # Written after every run: a long series stopped early keeps what it measured.
                write_json(args.json, meta, rows)
                for group, per_phase in row["summary"].items():
                    cells = "  ".join(f"{p} {r:.1e} |g| {g:.2g}" for p, (r, g) in per_phase.items())
                    print(f"    {group:<16} {cells}", flush=True)
        print(json.dumps({"meta": meta, "runs": [r["run"] for r in rows]}))
        return 0

    return run_cli(run, "bench_dynamics.py")


if __name__ == "__main__":
    sys.exit(main())
