"""Architecture experiments: which choices matter, measured on two tasks with several seeds.

    python benchmarks/experiments.py --input data/tinyshakespeare.txt           (about 20 min)
    python benchmarks/experiments.py --input data/tiny.txt --seeds 2 --digits-steps 100 \
        --text-steps 100 --doc /tmp/experiments.md --img-dir /tmp                 (a quick look)

One change at a time from a baseline (RoPE positions, RMSNorm before each sublayer, SwiGLU),
each answering a question a learner asks:

- positions: learned absolute embeddings (GPT-2), RoPE (Llama), ALiBi (a per-head distance
  penalty, no position parameters at all) or T5's bias (a learned number per head and
  log-spaced distance bucket);
- where the norm goes: before each sublayer (pre-LN, GPT-2 onward) or after the residual sum
  (post-LN, the original Transformer);
- which norm: LayerNorm, RMSNorm, or none at all (does it still train?);
- the MLP: ReLU (the original Transformer), GELU (GPT-2), SwiGLU (Llama) or Mish, all about
  equal in weights;
- the attention span: every earlier position, or a sliding window of the last 8 (local
  attention);
- the architecture (digits only): decoder-only (GPT), encoder-only (BERT: the answer is a class
  read from a bidirectional encoding) or encoder-decoder (T5: the answer written by a decoder
  that cross-attends to the encoded question), `model.arch`, with the same layers per stack.

Two tasks, both trained with AdamW: the digit operations (`configs/digits.yaml` cut to
`--digits-steps`, scored by test exact match on data drawn with each seed) and character-level
Tiny Shakespeare
(`configs/speedrun_cpu.yaml` cut to `--text-steps`, scored by validation loss). Every variant
runs with each seed (`--seeds`; the seed draws the initial weights, the batches and, for the
digits, the data), in round-robin order so that a busy spell on a shared machine is spread over
all variants. Training runs in this process on `--threads` threads.

Writes the raw runs as JSON (`--json`), two figures per task into `--img-dir`, and the results
section of `--doc` (between its `results` markers; the text around them is kept, so the
written conclusions stay while the numbers are regenerated); `--section NAME` writes between
the markers of that name instead, so that a run of some variants (`--variants`) adds a table
beside an earlier one.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llm_tiny.errors import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
BASELINE = {
    "pos_emb": "rope", "norm_position": "pre", "norm": "rmsnorm", "mlp": "swiglu",
    "attn_window": "null",  # every earlier position
    "arch": "decoder",
}  # fmt: skip
# The questions, each with its choices; the baseline's own choice is one row of every question.
QUESTIONS = {
    "positions": ("pos_emb", ["learned", "rope", "alibi", "t5"]),
    "norm position": ("norm_position", ["pre", "post"]),
    "norm": ("norm", ["none", "layernorm", "rmsnorm"]),
    "MLP": ("mlp", ["relu", "gelu", "swiglu", "mish"]),
    "attention span": ("attn_window", ["null", "8"]),
    "architecture": ("arch", ["decoder", "encoder", "encoder_decoder"]),
}
DIGITS_ONLY = {"arch"}  # fields whose other choices need examples (an encoder has no text LM)
TASKS = ("digits", "text")


def markers(section: str = "results") -> tuple[str, str]:
    """The start and end markers of a generated section of the doc."""
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


START, END = markers()  # the default section's


def variant_names() -> list[str]:
    """`baseline` and one `field=value` per choice that differs from it, in question order."""
    names = ["baseline"]
    for field, choices in QUESTIONS.values():
        names += [f"{field}={c}" for c in choices if c != BASELINE[field]]
    return names


def runs_on(task: str, variant: str) -> bool:
    """Whether `variant` runs on `task`: the architecture's choices on the digits only."""
    return task == "digits" or variant == "baseline" or variant.split("=")[0] not in DIGITS_ONLY


def model_of(variant: str) -> dict[str, str]:
    """The model fields of a variant: the baseline with at most one field changed."""
    if variant == "baseline":
        return dict(BASELINE)
    field, value = variant.split("=")
    return {**BASELINE, field: value}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# ----------------------------------------------------------------------------- running


def run_config(task: str, variant: str, seed: int, args, work: Path):
    """The run config of one (task, variant, seed)."""
    from llm_tiny.config import load_config

    out_dir = work / task / variant / f"seed{seed}"
    common = [f"model.{k}={v}" for k, v in model_of(variant).items()] + [
        f"train.out_dir={out_dir}",
        f"train.seed={seed}",
        f"train.threads={args.threads}",
        "train.max_seconds=null",
        "train.sample_at_end=false",
        "train.overwrite=true",
        # AdamW whatever the recipe says: the grid compares architectures under one optimizer.
        "optim.name=adamw",
    ]
    if task == "digits":
        data = work / "data" / f"digits{seed}"
        steps = args.digits_steps
        classes = ["model.n_classes=10"] if model_of(variant)["arch"] == "encoder" else []
        return load_config(
            ROOT / "configs/digits.yaml",
            [
                *common,
                *classes,  # the encoder's classifier: the answers 0-9
                f"data.input=[{data / 'train.txt'},{data / 'val.txt'}]",
                f"train.max_iters={steps}",
                f"train.eval_interval={max(1, steps // 6)}",
                f"train.ckpt_interval={steps}",
                f"optim.warmup_iters={min(100, steps // 4)}",
            ],
        )
    steps = args.text_steps
    return load_config(
        ROOT / "configs/speedrun_cpu.yaml",
        [
            *common,
            f"data.input=[{Path(args.input).resolve()}]",
            f"data.data_dir={work / 'cache'}",
            f"train.max_iters={steps}",
            f"optim.lr_decay_iters={steps}",
            f"optim.warmup_iters={min(50, steps // 4)}",
            f"train.eval_interval={max(1, steps // 6)}",
            f"train.ckpt_interval={steps}",
        ],
    )


def run_one(task: str, variant: str, seed: int, args, work: Path) -> dict[str, Any]:
    """Train one (task, variant, seed) and score it; returns one row of the results."""
    from llm_tiny.model import MODELS
    from llm_tiny.tasks import DEFAULT_N, predict, read_examples, score, write_dataset
    from llm_tiny.train.checkpoint import load_model
    from llm_tiny.train.loop import train
    from llm_tiny.train.metrics import read_metrics

    if task == "digits":
        data = work / "data" / f"digits{seed}"
        if not (data / "test.txt").exists():
            write_dataset(data, DEFAULT_N[9], 9, seed)  # the 0-9 task, as `tasks digits` makes it
    cfg = run_config(task, variant, seed, args, work)
    result = train(cfg, progress=False, log=lambda _line: None)
    rows = read_metrics(Path(cfg.train.out_dir) / "metrics.csv")
    row = {
        "task": task,
        "variant": variant,
        "seed": seed,
        "steps": result.step,
        "seconds": result.elapsed_s,
        "val_loss": result.val_loss,
        "curve": [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] is not None],
    }
    model, tokenizer, _, _ = load_model(cfg.train.out_dir, name="last.pt", archs=tuple(MODELS))
    row["params"] = model.num_params()
    if task == "digits":
        examples = read_examples(data / "test.txt")
        row["accuracy"] = score(examples, predict(model, tokenizer, examples))["accuracy"]
    return row


# ----------------------------------------------------------------------------- reporting


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per task and variant: mean and sd of each measure over the seeds."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task in TASKS:
        for variant in variant_names():
            rows = [r for r in runs if r["task"] == task and r["variant"] == variant]
            if not rows:
                continue
            entry: dict[str, Any] = {"seeds": len(rows), "params": rows[0]["params"]}
            for key in ("accuracy", "val_loss", "seconds"):
                if all(r.get(key) is not None for r in rows):
                    entry[key] = mean_sd([r[key] for r in rows])
            out.setdefault(task, {})[variant] = entry
    return out


def _pm(ms: tuple[float, float], fmt: str, scale: float = 1.0) -> str:
    return f"{ms[0] * scale:{fmt}} ± {ms[1] * scale:{fmt}}"


def results_markdown(
    summary, meta: dict[str, Any], images: dict[str, list[str]], section: str = "results"
) -> str:
    """The generated section of docs/experiments.md: setup, one table per task, the figures."""
    start, end = markers(section)
    lines = [
        start,
        "<!-- Written by benchmarks/experiments.py; edit the text outside these markers. -->",
        "",
        f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}, "
        f"{meta['threads']} thread(s), {meta['seeds']} seeds ({', '.join(map(str, meta['seed_list']))}); "
        f"{meta['total_minutes']:.1f} minutes in all"
        + (f" ({meta['total_minutes_note']})" if "total_minutes_note" in meta else "")
        + (
            f", load average {meta['load_avg_after']} at the end"
            + (" (the highest of them)" if "total_minutes_note" in meta else "")
            if "load_avg_after" in meta
            else ""
        )
        + f". Command: `{meta['command']}`",
        "",
        "Mean ± sample standard deviation over the seeds. Each row changes one thing from the "
        "baseline (a decoder with RoPE, pre-LN, RMSNorm, SwiGLU, full causal attention), which "
        "is the row marked **baseline** in every question.",
    ]
    titles = {
        "digits": f"Digit operations, 0–9 ({meta['digits_steps']} steps of `configs/digits.yaml`)",
        "text": f"Tiny Shakespeare, characters ({meta['text_steps']} steps of "
        "`configs/speedrun_cpu.yaml`)",
    }
    for task, per_variant in summary.items():
        lines += ["", f"### {titles[task]}", ""]
        digits = task == "digits"
        head = "| question | choice | params |"
        head += " test exact match (%) |" if digits else ""
        head += " validation loss (nats/char) | training time (s) |"
        lines += [head, "|---" * (head.count("|") - 1) + "|"]
        for question, (field, choices) in QUESTIONS.items():
            others = [f"{field}={c}" for c in choices if c != BASELINE[field]]
            if not any(v in per_variant for v in others):
                continue  # a run of some variants: only the questions it asked
            for choice in choices:
                variant = "baseline" if choice == BASELINE[field] else f"{field}={choice}"
                e = per_variant.get(variant)
                if e is None:
                    continue
                name = f"**{choice}** (baseline)" if variant == "baseline" else choice
                row = f"| {question} | {name} | {e['params']:,} |"
                if digits:
                    row += f" {_pm(e['accuracy'], '.2f', 100)} |"
                row += f" {_pm(e['val_loss'], '.4f')} | {_pm(e['seconds'], '.1f')} |"
                lines.append(row)
        lines += [""] + [f"![{task}]({path})" for path in images.get(task, [])]
    lines += ["", end]
    return "\n".join(lines)


def write_doc(path: Path, section: str, name: str = "results") -> None:
    """Put `section` between the markers `name` of the doc at `path` (a new doc if there is
    none; at the end of a doc without them)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start, end = markers(name)
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + section + after
    elif text:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = "# Architecture experiments\n\n" + section + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def draw(
    runs: list[dict[str, Any]], summary, img_dir: Path, rel: str, prefix: str = "experiments"
) -> dict[str, list[str]]:
    """Per task: the validation curves (mean over seeds) and the final measure with its sd."""
    from llm_tiny.plots import pyplot, save_figure

    plt = pyplot()
    images: dict[str, list[str]] = {}
    for task, per_variant in summary.items():
        fig, (curves, bars) = plt.subplots(1, 2, figsize=(13, 4.6), layout="constrained")
        for variant in per_variant:
            rows = [r for r in runs if r["task"] == task and r["variant"] == variant]
            steps = [s for s, _ in rows[0]["curve"]]
            losses = [statistics.fmean(r["curve"][i][1] for r in rows) for i in range(len(steps))]
            style = {"color": "black", "linewidth": 2.2} if variant == "baseline" else {}
            curves.plot(steps, losses, label=variant, **style)
        if task == "digits":  # losses fall by orders of magnitude there
            curves.set_yscale("log")
        curves.set(xlabel="step", ylabel="validation loss (mean over seeds)", title=task)
        curves.legend(fontsize=8)
        key, label = (
            ("accuracy", "test exact match")
            if task == "digits"
            else ("val_loss", "final validation loss")
        )
        names = list(per_variant)
        means = [per_variant[v][key][0] for v in names]
        sds = [per_variant[v][key][1] for v in names]
        for i, (m, sd, v) in enumerate(zip(means, sds, names)):
            colour = "black" if v == "baseline" else "tab:blue"
            bars.errorbar(m, i, xerr=sd, fmt="o", color=colour, capsize=4)
        bars.set_yticks(range(len(names)), names)
        bars.grid(axis="x", alpha=0.3)
        bars.invert_yaxis()
        bars.set(xlabel=f"{label} (mean ± sd over seeds)", title=task)
        name = f"{prefix}_{task}.png"
        save_figure(fig, img_dir / name)
        images[task] = [f"{rel}/{name}"]
    return images


def merge_results(saved: list[tuple[list[dict], dict[str, Any]]]) -> tuple[list[dict], dict]:
    """The runs of several `--json` files of one grid (made in parallel, say one per task and
    seed) as one result: the runs together, all their seeds, the minutes of the longest (they
    ran side by side), the first command and how many more."""
    runs = [r for rows, _ in saved for r in rows]
    metas = [m for _, m in saved]
    seeds = sorted({r["seed"] for r in runs})
    meta = {
        **metas[0],
        "seeds": len(seeds),
        "seed_list": seeds,
        "total_minutes": max(m["total_minutes"] for m in metas),
        "load_avg_after": max(m.get("load_avg_after", 0.0) for m in metas),
    }
    if len(metas) > 1:
        meta["total_minutes_note"] = f"the longest of {len(metas)} processes run side by side"
        meta["command"] = (
            f"{metas[0]['command']}` and {len(metas) - 1} more like it (each its own task, "
            "seeds and variants), merged by `python benchmarks/experiments.py --from-json "
            "A.json,B.json,..."
        )
    return runs, meta


def report(runs: list[dict[str, Any]], meta: dict[str, Any], args) -> None:
    """The figures and the doc's results section from the runs."""
    summary = summarise(runs)
    doc, img_dir = Path(args.doc), Path(args.img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(img_dir.resolve(), doc.resolve().parent)).as_posix()
    section = args.section
    prefix = "experiments" if section == "results" else f"experiments_{section}"
    images = draw(runs, summary, img_dir, rel, prefix)
    write_doc(doc, results_markdown(summary, meta, images, section), section)
    print(f"wrote {doc} and {len(images)} figure(s) in {img_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="experiments.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input", default="data/tinyshakespeare.txt", help="the text task's corpus"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--digits-steps", type=int, default=300)
    parser.add_argument("--text-steps", type=int, default=600)
    parser.add_argument("--tasks", default=",".join(TASKS), help="digits,text or one of them")
    parser.add_argument("--variants", default=None, help="comma-separated; default: all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="out/experiments.json", help="the raw runs")
    parser.add_argument("--doc", default="docs/experiments.md")
    parser.add_argument("--img-dir", default="docs/img")
    parser.add_argument("--section", default="results",
                        help="the doc's markers to write between (and the figures' names)")  # fmt: skip
    parser.add_argument("--from-json", default=None, metavar="PATH[,PATH...]",
                        help="no training: redraw the figures and the doc from earlier --json "
                        "files (several: runs of one grid made in parallel, e.g. one per seed)")  # fmt: skip
    args = parser.parse_args(argv)

    def run() -> int:
        if args.from_json:
            saved = []
            for path in args.from_json.split(","):
                try:
                    data = json.loads(Path(path).read_text(encoding="utf-8"))
                    saved.append((data["runs"], data["meta"]))
                except (OSError, ValueError, KeyError) as e:
                    msg = f"--from-json {path}: not a result of this script ({e})"
                    raise UserError(msg) from None
            report(*merge_results(saved), args)
            return 0
        tasks = args.tasks.split(",")
        variants = args.variants.split(",") if args.variants else variant_names()
        for bad in [t for t in tasks if t not in TASKS]:
            raise UserError(f"--tasks: unknown task {bad!r}; choose from {', '.join(TASKS)}")
        for bad in [v for v in variants if v not in variant_names()]:
            raise UserError(
                f"--variants: unknown {bad!r}; choose from {', '.join(variant_names())}"
            )
        if "text" in tasks and not Path(args.input).is_file():
            raise UserError(f"--input {args.input}: not found (the text task's corpus)")
        for name in ("seeds", "digits_steps", "text_steps", "threads"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        import torch

        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        started = time.perf_counter()
        runs = []
        with tempfile.TemporaryDirectory(prefix="llm_tiny_experiments_") as tmp:
            for task in tasks:
                for seed in seeds:  # round-robin: every variant once per seed
                    for variant in [v for v in variants if runs_on(task, v)]:
                        row = run_one(task, variant, seed, args, Path(tmp))
                        runs.append(row)
                        extra = f" acc {row['accuracy']:.4f}" if "accuracy" in row else ""
                        print(
                            f"{task:<6} {variant:<22} seed {seed}: val {row['val_loss']:.4f}"
                            f"{extra} in {row['seconds']:.1f}s",
                            flush=True,
                        )
        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "load_avg_after": round(os.getloadavg()[0], 1),
            "machine": f"{platform.machine()} CPU with {os.cpu_count()} cores",
            "torch": torch.__version__,
            "threads": args.threads,
            "seeds": args.seeds,
            "seed_list": seeds,
            "digits_steps": args.digits_steps,
            "text_steps": args.text_steps,
            "total_minutes": (time.perf_counter() - started) / 60,
            "command": "python benchmarks/experiments.py " + " ".join(argv or sys.argv[1:]),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"meta": meta, "summary": summarise(runs), "runs": runs})
        )
        print(f"wrote {args.json}")
        report(runs, meta, args)
        return 0

    return run_cli(run, "experiments.py")


if __name__ == "__main__":
    sys.exit(main())
