"""CPU speedrun: time to nanoGPT's Tiny Shakespeare validation loss, baseline against speedrun.

    python benchmarks/speedrun.py --input data/tinyshakespeare.txt
    python benchmarks/speedrun.py --input data/tinyshakespeare.txt --ablation --repeats 3
    python benchmarks/speedrun.py --input data/tinyshakespeare.txt --only speedrun --target 1.90
    python benchmarks/speedrun.py --input data/tinyshakespeare.txt --nanogpt ~/nanoGPT --repeats 3

Two recipes train on the same text, one after the other, each in a fresh Python process (so
that thread settings, compiled graphs and allocator state of one cannot help or hurt the
other):

- `configs/nanogpt_cpu.yaml`, nanoGPT's documented CPU recipe. Its final loss over the full
  validation split is the **target**.
- `configs/speedrun_cpu.yaml`, the fastest recipe found that reaches the target.

**Time to target** is the wall time from the start of `llm_tiny.train.loop.train` (the data are
prepared before it and not counted) to the end of the first evaluation whose full-split
validation loss is at or below the target. It therefore counts building the model, any
`torch.compile` work and every evaluation, the one at step 0 included; it leaves out what
happens after the loop (the loss plot). It is read from the run's `metrics.csv` (`elapsed_s`
of each evaluation row) plus the set-up time before the loop started, which this script
measures from the outside: the trainer prints its `training N parameters ...` line just
before its clock starts.

`--repeats N` trains every recipe N times, round-robin, and reports the median time to target
(and every repeat's): on a machine shared with other work, single timings move by 10-20%.
Training is deterministic on CPU, so the repeats reach the same losses.

`--ablation` also trains the rungs of `LADDER`, each adding one lever to the one before, from
the nanoGPT recipe up to the speedrun recipe (the last rung *is* `configs/speedrun_cpu.yaml`),
and reports each rung's time to target: what each lever contributed.

`--nanogpt DIR` compares with the real nanoGPT instead (`compare_with_nanogpt`; the details
are in benchmarks/nanogpt_ref.py and docs/speedrun.md).

Output: a table, then one JSON line (also written to `--json-out`):
`{"target_loss", "nanogpt_cpu": {"time_to_target_s", "final_val_loss", "wall_s", ...},
"speedrun_cpu": {...}, "ratio", "speedup", ...}` where `ratio` is the speedrun's time to
target over the baseline's (the goal is <= 1/3) and `speedup` its inverse.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llm_tiny.errors import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]

RECIPES: dict[str, Path] = {
    "nanogpt_cpu": ROOT / "configs" / "nanogpt_cpu.yaml",
    "speedrun_cpu": ROOT / "configs" / "speedrun_cpu.yaml",
}
ONLY = {"nanogpt": "nanogpt_cpu", "speedrun": "speedrun_cpu"}

# The ablation: each rung adds one lever to the previous rung, starting from nanogpt_cpu.yaml.
# A rung that shortens training also shortens its schedule (warmup, decay) to match, so that
# every rung is a complete recipe whose final evaluation is meant to reach the target. The
# last rung must equal configs/speedrun_cpu.yaml (tests/unit/test_speedrun.py checks it).


def steps(n: int) -> dict[str, int]:
    """A run of `n` steps whose schedule decays over those steps, evaluated at the end."""
    return {
        "train.max_iters": n,
        "optim.lr_decay_iters": n,
        "train.eval_interval": n,
        "train.ckpt_interval": n,
    }


LADDER: list[tuple[str, dict[str, Any]]] = [
    ("nanoGPT CPU recipe", {}),
    (
        "+ RoPE",
        {
            "model.pos_emb": "rope",
            **steps(1200),
        },
    ),
    (
        "+ RMSNorm, SwiGLU",
        {
            "model.norm": "rmsnorm",
            "model.mlp": "swiglu",
            **steps(750),
        },
    ),
    (
        "+ WSD schedule down to 0",
        {
            "optim.schedule": "wsd",
            "optim.decay_fraction": 0.3,
            "optim.min_lr": 0.0,
            **steps(650),
        },
    ),
    (
        "+ 2 layers x 96, lr 2e-3",
        {
            "model.n_layer": 2,
            "model.n_embd": 96,
            "optim.lr": 2e-3,
            "optim.warmup_iters": 50,
            **steps(900),
        },
    ),
    ("+ no evaluation at step 0", {"train.eval_at_start": False}),
]


# ----------------------------------------------------------------------------- pure parts


def scale_iters(raw: dict[str, dict[str, Any]], factor: float) -> dict[str, dict[str, Any]]:
    """Shrink (or stretch) a config's step counts by `factor`, keeping each at least 1 and the
    warmup no longer than the run: `max_iters`, `warmup_iters`, `lr_decay_iters`,
    `eval_interval` and `ckpt_interval`.

    >>> r = scale_iters({"train": {"max_iters": 2000, "eval_interval": 2000,
    ...     "ckpt_interval": 2000}, "optim": {"warmup_iters": 100, "lr_decay_iters": 2000}}, 0.01)
    >>> r["train"]["max_iters"], r["optim"]["warmup_iters"], r["optim"]["lr_decay_iters"]
    (20, 1, 20)
    """
    out = {k: dict(v) for k, v in raw.items()}

    def scaled(n: int) -> int:
        return max(1, round(n * factor))

    t, o = out.setdefault("train", {}), out.setdefault("optim", {})
    for key in ("max_iters", "eval_interval", "ckpt_interval"):
        if t.get(key) is not None:
            t[key] = scaled(t[key])
    if o.get("lr_decay_iters") is not None:
        o["lr_decay_iters"] = scaled(o["lr_decay_iters"])
    if o.get("warmup_iters"):
        o["warmup_iters"] = min(scaled(o["warmup_iters"]), t.get("max_iters", 1))
        if o.get("lr_decay_iters") is not None:
            o["lr_decay_iters"] = max(o["lr_decay_iters"], o["warmup_iters"])
    return out


def read_evals(metrics_csv: str | Path) -> list[tuple[int, float, float]]:
    """The evaluation rows of a run's `metrics.csv`: `(step, elapsed_s, val_loss)` in order."""
    evals = []
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("val_loss"):
                evals.append((int(row["step"]), float(row["elapsed_s"]), float(row["val_loss"])))
    return evals


def time_to_target(
    evals: list[tuple[int, float, float]], target: float, setup_s: float = 0.0
) -> float | None:
    """Seconds until the first evaluation at or below `target`, counting `setup_s` before the
    loop; None if no evaluation got there.

    >>> time_to_target([(0, 1.0, 5.5), (500, 20.0, 2.1), (1000, 41.0, 1.89)], 1.9, setup_s=2.0)
    43.0
    >>> time_to_target([(0, 1.0, 5.5), (500, 20.0, 2.1)], 1.9) is None
    True
    """
    for _, elapsed, loss in evals:
        if loss <= target:
            return setup_s + elapsed
    return None


def ladder_overrides(upto: int) -> dict[str, Any]:
    """The dotted overrides of ablation rungs 0..`upto` applied in order (later rungs win)."""
    merged: dict[str, Any] = {}
    for _, changes in LADDER[: upto + 1]:
        merged.update(changes)
    return merged


def _fmt(x: float | None, spec: str) -> str:
    """`x` formatted by `spec`, or a dash as wide as `spec` says when there is no value.

    >>> _fmt(1.5, "6.2f"), _fmt(None, "6.2f")
    ('  1.50', '     -')
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-".rjust(int(spec.split(".")[0] or 0))
    return format(x, spec)


# ----------------------------------------------------------------------------- one run
# Runs in the child process: prepares the data (not timed), trains, prints one JSON line.


def recipe_raw(job: dict[str, Any]) -> dict[str, Any]:
    """The config of one recipe's run as a dict: the recipe, `job`'s overrides and step scale,
    and its paths and device."""
    from llm_tiny.config import read_yaml, with_dotted

    raw = read_yaml(job["config"]) or {}
    raw = with_dotted(raw, job.get("overrides", {}))
    if job.get("iters_scale", 1.0) != 1.0:
        raw = scale_iters(raw, job["iters_scale"])
    out = Path(job["out_dir"])
    io = {
        "data.input": [job["input"]],
        "data.tokenizer": str(out / "tok" / "bytes.json"),
        "data.data_dir": str(out / "data"),
        "train.out_dir": str(out / job.get("run_dir", "run")),
        "train.device": job["device"],
        "train.resume": "never",
        "train.overwrite": True,
        "train.sample_at_end": False,
    }
    if job.get("threads") is not None:
        io["train.threads"] = job["threads"]
    return with_dotted(raw, io)


def run_recipe(job: dict[str, Any]) -> dict[str, Any]:
    """Train one recipe as `job` says and return its figures (see the module docstring)."""
    import torch

    from llm_tiny.config import config_from_dict
    from llm_tiny.data import prepare_data
    from llm_tiny.train.loop import train

    cfg = config_from_dict(recipe_raw(job), f"{job['config']} (speedrun)")

    def log(message: str) -> None:
        print(f"[{job['name']}] {message}", file=sys.stderr, flush=True)

    prepare_data(cfg.data, log=log)  # cached after the first run; never timed
    loop_started: list[float] = []

    def timed_log(message: str) -> None:
        if not loop_started and message.startswith("training "):
            loop_started.append(time.perf_counter())  # the trainer's clock starts right after
        log(message)

    t0 = time.perf_counter()
    result = train(cfg, progress=False, log=timed_log)
    wall = time.perf_counter() - t0
    # Without the marker line, count everything outside the loop as set-up (an upper bound).
    setup_s = loop_started[0] - t0 if loop_started else wall - result.elapsed_s
    return {
        "name": job["name"],
        "final_val_loss": result.val_loss,
        "setup_s": setup_s,
        "loop_s": result.elapsed_s,
        "wall_s": setup_s + result.elapsed_s,
        "steps": result.step,
        "tokens": result.tokens,
        "evals": read_evals(Path(cfg.train.out_dir) / "metrics.csv"),
        "threads": torch.get_num_threads(),
        "dtype": cfg.train.dtype,
        "compile": cfg.train.compile,
        "out_dir": str(cfg.train.out_dir),
    }


def child_main(job_json: str) -> int:
    """Entry point of a training subprocess: logs on stderr, one JSON line on stdout."""

    def run() -> int:
        print(json.dumps(run_recipe(json.loads(job_json))), flush=True)
        return 0

    return run_cli(run, "speedrun.py")


# ----------------------------------------------------------------------------- the driver


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    """Run one recipe in a fresh Python process; its log lines pass through to stderr."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode == 2:  # a user error: the child has printed its one line on stderr
        raise SystemExit(2)
    if proc.returncode != 0:  # a crash: its traceback is on stderr above
        raise UserError(f"the {job['name']} run failed (exit status {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize_runs(runs: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    """The JSON figures of one recipe's repeats against the target: the median time to target
    (None unless every repeat got there) and each repeat's, with the first repeat's other
    figures (training is deterministic on CPU, so the repeats differ only in time)."""
    times = [
        None if target is None else time_to_target(r["evals"], target, r["setup_s"]) for r in runs
    ]
    first = runs[0]
    return {
        "time_to_target_s": None if None in times else statistics.median(times),
        "time_to_target_all_s": times,
        "final_val_loss": first["final_val_loss"],
        "final_val_loss_all": [r["final_val_loss"] for r in runs],
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "setup_s": statistics.median(r["setup_s"] for r in runs),
        "steps": first["steps"],
        "tokens": first["tokens"],
        "evals": len(first["evals"]),
        "threads": first["threads"],
        "dtype": first["dtype"],
        "compile": first["compile"],
    }


def table(rows: list[tuple[str, dict[str, Any]]], base_time: float | None) -> str:
    """A plain-text table of runs: time to target, final loss, wall time, steps, speedup."""
    head = (
        f"{'run':<34} {'to target s':>11} {'final loss':>10} {'wall s':>8} {'steps':>6} "
        f"{'tokens':>10} {'speedup':>8}"
    )
    lines = [head, "-" * len(head)]
    for name, r in rows:
        t = r["time_to_target_s"]
        speedup = base_time / t if base_time and t else None
        lines.append(
            f"{name:<34} {_fmt(t, '11.1f')} {_fmt(r['final_val_loss'], '10.4f')} "
            f"{r['wall_s']:8.1f} {r['steps']:6d} {r['tokens']:10,d} "
            + ("       -" if speedup is None else f"{speedup:7.2f}x")
        )
    return "\n".join(lines)


def check_input(path: str) -> Path:
    """The `--input` text file, or a UserError saying what is wrong with it."""
    p = Path(path)
    if not p.exists():
        raise UserError(
            f"--input {p}: not found (get tinyshakespeare.txt as docs/speedrun.md explains)"
        )
    if not p.is_file():
        raise UserError(f"--input {p}: not a file")
    if not os.access(p, os.R_OK):
        raise UserError(f"--input {p}: cannot read it (permission denied)")
    if p.stat().st_size == 0:
        raise UserError(f"--input {p}: is empty")
    return p


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="speedrun.py",
        description="Train configs/nanogpt_cpu.yaml and configs/speedrun_cpu.yaml and compare "
        "their wall time to the baseline's final full-split validation loss.",
    )
    p.add_argument("--input", required=True, help="the text, e.g. data/tinyshakespeare.txt")
    p.add_argument("--device", default="cpu", help="cpu (the point of the exercise) | cuda | auto")
    p.add_argument("--threads", type=int, help="torch threads for both runs (default: configs')")
    p.add_argument("--only", choices=sorted(ONLY), help="train one side only")
    p.add_argument(
        "--target", type=float, help="target loss (default: the nanogpt_cpu run's final loss)"
    )
    p.add_argument("--ablation", action="store_true", help="also train every rung of LADDER")
    p.add_argument("--out-dir", default="out/speedrun", help="runs and prepared data go here")
    p.add_argument(
        "--iters-scale",
        type=float,
        default=1.0,
        help="multiply every step count (max_iters, warmup, decay, eval) by this (smoke tests)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="train every recipe N times, round-robin, and report the median time (noisy machines)",
    )
    p.add_argument("--json-out", help="also write the JSON result here")
    p.add_argument(
        "--nanogpt",
        metavar="DIR",
        help="also run the real nanoGPT from this checkout and compare whole-process wall "
        "times to the final losses on its validation split (replaces configs/nanogpt_cpu.yaml)",
    )
    return p


def compare_with_nanogpt(args: Any, source: Path, ours_job: dict[str, Any]) -> dict[str, Any]:
    """The real nanoGPT (`--nanogpt DIR`) against our speedrun recipe, round-robin over the
    repeats: whole-process wall times and both final models scored on nanoGPT's validation
    split (benchmarks/nanogpt_ref.py says how)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import nanogpt_ref as ref

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    root = ref.check_checkout(args.nanogpt)
    text = ref.prepare(root, source, log)
    out = Path(args.out_dir).resolve()  # child processes run elsewhere (nanoGPT in its checkout)
    runs: dict[str, list[dict[str, Any]]] = {"nanogpt": [], "speedrun_cpu": []}
    for k in range(args.repeats):
        log(f"repeat {k + 1}/{args.repeats}: nanoGPT's train.py")
        theirs = ref.run_train(root, out / "nanogpt" / f"run{k}", args.iters_scale)
        runs["nanogpt"].append({**theirs, **ref.score_nanogpt(root, theirs["ckpt"], text)})
        log(f"repeat {k + 1}/{args.repeats}: python -m llm_tiny train (speedrun_cpu)")
        work = out / "speedrun_cpu" / f"whole{k}"
        raw = recipe_raw({**ours_job, "run_dir": f"whole{k}/run"})
        ours = ref.run_ours(raw, work)
        runs["speedrun_cpu"].append({**ours, **ref.score_ours(ours["run_dir"], text)})
    result: dict[str, Any] = {"mode": "nanogpt", "repeats": args.repeats, "window": ref.BLOCK_SIZE}
    for name, rs in runs.items():
        result[name] = {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "wall_all_s": [r["wall_s"] for r in rs],
            "val_loss": rs[0]["val_loss"],
            "val_loss_all": [r["val_loss"] for r in rs],
            "iter": rs[0]["iter"],
        }
    result["nanogpt"]["command"] = runs["nanogpt"][0]["command"]
    a, b = result["speedrun_cpu"], result["nanogpt"]
    result["ratio"] = a["wall_s"] / b["wall_s"]
    reached = max(a["val_loss_all"]) <= min(b["val_loss_all"])
    result["speedup"] = b["wall_s"] / a["wall_s"] if reached else None
    print(f"scored on nanoGPT's validation split, non-overlapping {ref.BLOCK_SIZE}-char windows")
    head = f"{'run':<14} {'wall s':>8} {'val loss':>9} {'steps':>6}"
    print(head + "\n" + "-" * len(head))
    for name, r in (("nanoGPT", b), ("speedrun_cpu", a)):
        print(f"{name:<14} {r['wall_s']:8.1f} {r['val_loss']:9.4f} {r['iter']:6d}")
    print(ref.ratio_line(a["wall_s"], b["wall_s"], max(a["val_loss_all"]), min(b["val_loss_all"])))
    return result


def finish(result: dict[str, Any], json_out: str | None) -> int:
    """Print the result's JSON line (and write it to `json_out`)."""
    result.setdefault("load_avg_after", [round(x, 2) for x in os.getloadavg()])
    line = json.dumps(result)
    print(line)
    if json_out:
        try:
            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(json_out).write_text(line + "\n", encoding="utf-8")
        except OSError as e:
            raise UserError(f"--json-out {json_out}: {e.strerror or e}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"] and len(argv) == 2:
        return child_main(argv[1])
    args = build_parser().parse_args(argv)

    def run() -> int:
        source = check_input(args.input)
        if args.threads is not None and args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        if not args.iters_scale > 0:
            raise UserError(f"--iters-scale must be > 0, got {args.iters_scale}")
        if args.only == "speedrun" and args.target is None:
            raise UserError("--only speedrun needs --target LOSS (the baseline's final loss)")
        if args.repeats < 1:
            raise UserError(f"--repeats must be >= 1, got {args.repeats}")
        if args.only and args.ablation:
            raise UserError("--ablation trains every rung; leave out --only")
        if args.nanogpt and (args.only or args.ablation or args.target is not None):
            raise UserError(
                "--nanogpt compares with the real nanoGPT: leave out --only, "
                "--ablation and --target"
            )
        out = Path(args.out_dir).resolve()

        def job(name: str, config: Path, overrides: dict | None = None) -> dict[str, Any]:
            return {
                "name": name,
                "config": str(config),
                "input": str(source.resolve()),
                "out_dir": str(out / name),
                "device": args.device,
                "threads": args.threads,
                "iters_scale": args.iters_scale,
                "overrides": overrides or {},
            }

        if args.nanogpt:
            result = compare_with_nanogpt(
                args, source, job("speedrun_cpu", RECIPES["speedrun_cpu"])
            )
            return finish(result, args.json_out)
        names = [ONLY[args.only]] if args.only else list(RECIPES)
        jobs = {name: job(name, RECIPES[name]) for name in names}
        last = len(LADDER) - 1
        if args.ablation:  # the first rung is the baseline and the last the speedrun
            for i in range(1, last):
                jobs[f"ablation/{i:02d}"] = job(
                    f"ablation/{i:02d}", RECIPES["nanogpt_cpu"], ladder_overrides(i)
                )
        load_before = os.getloadavg()
        # Round-robin over the repeats, so that a noisy spell on the machine spreads over all
        # recipes instead of landing on one of them.
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}
        for k in range(args.repeats):
            for name, j in jobs.items():
                run_dir = "run" if args.repeats == 1 else f"run{k}"
                runs[name].append(run_child({**j, "run_dir": run_dir}))
        target = args.target
        if target is None:
            target = runs["nanogpt_cpu"][0]["final_val_loss"]
        result: dict[str, Any] = {"target_loss": target, "repeats": args.repeats}
        for name in names:
            result[name] = summarize_runs(runs[name], target)
        rows = [(name, result[name]) for name in names]
        if args.ablation:
            keys = ["nanogpt_cpu", *[f"ablation/{i:02d}" for i in range(1, last)], "speedrun_cpu"]
            rungs = [
                {"rung": label, **summarize_runs(runs[key], target)}
                for (label, _), key in zip(LADDER, keys)
            ]
            result["ablation"] = rungs
            rows += [(f"  {r['rung']}", r) for r in rungs]
        base = result.get("nanogpt_cpu", {}).get("time_to_target_s")
        fast = result.get("speedrun_cpu", {}).get("time_to_target_s")
        result["ratio"] = fast / base if base and fast else None
        result["speedup"] = base / fast if base and fast else None
        result["load_avg_before"] = [round(x, 2) for x in load_before]
        result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        result["machine"] = {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        }
        print(f"target: full-split validation loss <= {target:.4f}")
        print(table(rows, base))
        if result["ratio"] is not None:
            print(f"ratio {result['ratio']:.3f} (speedup {result['speedup']:.2f}x)")
        return finish(result, args.json_out)

    return run_cli(run, "speedrun.py")


if __name__ == "__main__":
    sys.exit(main())
