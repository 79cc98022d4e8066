"""Loss curves from `metrics.csv`: `python -m llm_tiny plot RUN [RUN ...]`.

One figure, four panels: training and validation loss against optimizer step and against
tokens seen, the learning rate, and validation bits per byte; two more when the run scored
tasks (`train.eval_tasks`): each task's accuracy beside its chance level, and the headline. Several runs share the figure
(one colour per run) so they compare at a glance. When the losses span more than two orders of
magnitude (a task learnt to a near-zero loss) their y axes are logarithmic (`log_scale`;
`--log-y on|off` overrides). The CSV written by training is the source of truth; this module
only reads it, through `metrics.read_metrics`.

`pyplot()` and `save_figure()` are the project's one matplotlib setup; the sweep and viz draw
through them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from llm_tiny.errors import ArgumentParser, UserError, run_cli
from llm_tiny.train import metrics
from llm_tiny.train.rundir import LOSS_PLOT


def pyplot() -> ModuleType:
    """`matplotlib.pyplot` on the file-only Agg backend (no display, never a window): the one
    matplotlib setup, for plots, sweep and viz. Imported on first call: importing plots is free."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


DPI = 100


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write `fig` to `path` (folders created) at `DPI`, then close it. No tight cropping, so an
    image is exactly figsize x DPI pixels; a temp file, then a rename, so no reader ever sees
    half an image. A path that cannot be written is a UserError."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # same suffix: it picks the format
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=DPI)
        tmp.replace(path)
    except OSError as e:
        raise UserError(f"{path}: cannot write the image ({e.strerror or e})") from None
    finally:
        pyplot().close(fig)
    return path


def run_columns(run_dir: str | Path) -> dict[str, list[float]]:
    """Columns of `run_dir/metrics.csv` as lists of floats, `nan` where a cell is empty."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / metrics.METRICS_FILE
    if not path.is_file():
        raise UserError(
            f"{path}: no {metrics.METRICS_FILE} here; is this a training run directory?"
        )
    try:
        rows = metrics.read_metrics(path)
    except ValueError as e:
        raise UserError(f"{path}: not a metrics file ({e})") from None
    if not rows:
        raise UserError(f"{path}: no rows yet; train for a few steps first")
    if "reward" in rows[0] and "train_loss" not in rows[0]:
        raise UserError(
            f"{path}: an RL run's metrics; `llm_tiny rl` draws them in rl.png beside it"
        )
    if not {"step", "train_loss"} <= set(rows[0]):
        raise UserError(f"{path}: not a metrics file (needs step and train_loss columns)")
    return {c: [math.nan if r.get(c) is None else r[c] for r in rows] for c in rows[0]}


def _points(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """Keep the (x, y) pairs where both are measured."""
    pairs = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# A log axis once the plotted values span more than this factor (two orders of magnitude):
# a loss that falls from 5 to 0.01 is a flat line at zero on a linear axis.
LOG_SPAN = 100.0
LOG_Y_CHOICES = ("auto", "on", "off")


def log_scale(values: list[float], log_y: str = "auto") -> bool:
    """Whether to draw `values` on a log axis: `on` / `off` as told; `auto` when the positive
    finite values span more than `LOG_SPAN` (max / min). Zeros and nan are left out of the span
    (a log axis cannot show them).

    >>> log_scale([5.5, 0.3, 0.01]), log_scale([6.0, 1.6]), log_scale([6.0, 1.6], "on")
    (True, False, True)
    """
    if log_y not in LOG_Y_CHOICES:
        raise ValueError(f"log_y must be one of {LOG_Y_CHOICES}, got {log_y!r}")
    if log_y != "auto":
        return log_y == "on"
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return bool(positive) and max(positive) / min(positive) > LOG_SPAN


def loss_figure(run_dirs: list[str | Path], log_y: str = "auto") -> Any:
    """The figure of the runs' loss curves (see the module docstring). The loss panels, and the
    bits-per-byte panel on its own, get a log y axis as `log_scale` decides, said on the axis."""
    runs = [(Path(d), run_columns(d)) for d in run_dirs]
    plt = pyplot()
    tasks = any(not all(map(math.isnan, m.get("task_score", [math.nan]))) for _, m in runs)
    fig, axes = plt.subplots(2, 3 if tasks else 2, figsize=(18 if tasks else 12, 8))
    (ax_step, ax_tok, *ax_task), (ax_lr, ax_bpb, *ax_score) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    losses: list[float] = []
    bpbs: list[float] = []
    for i, (run_dir, m) in enumerate(runs):
        colour = colours[i % len(colours)]
        name = run_dir.name if len(runs) > 1 else ""
        prefix = f"{name} " if name else ""
        for ax, x in ((ax_step, "step"), (ax_tok, "tokens")):
            if x not in m:
                continue
            xs, ys = _points(m[x], m["train_loss"])
            ax.plot(xs, ys, color=colour, alpha=0.6, lw=1, label=f"{prefix}train")
            losses += ys
            if "val_loss" in m:
                xs, ys = _points(m[x], m["val_loss"])
                ax.plot(xs, ys, color=colour, marker="o", ms=4, lw=2, ls="--", label=f"{prefix}val")
                losses += ys
        if "lr" in m:
            xs, ys = _points(m["step"], m["lr"])
            ax_lr.plot(xs, ys, color=colour, label=name or "lr")
        if "val_bpb" in m:
            xs, ys = _points(m["step"], m["val_bpb"])
            ax_bpb.plot(xs, ys, color=colour, marker="o", ms=4, label=name or "val")
            bpbs += ys

    if tasks:
        task_panels(ax_task[0], ax_score[0], runs, colours)
    loss_label, bpb_label = "loss (nats / token)", "bits per byte"
    if log_scale(losses, log_y):
        loss_label += ", log scale"
        ax_step.set_yscale("log")
        ax_tok.set_yscale("log")
    if log_scale(bpbs, log_y):
        bpb_label += " (log scale)"
        ax_bpb.set_yscale("log")
    ax_step.set(xlabel="optimizer step", ylabel=loss_label, title="Loss vs step")
    ax_tok.set(xlabel="tokens seen", ylabel=loss_label, title="Loss vs tokens")
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    ax_bpb.set(xlabel="optimizer step", ylabel=bpb_label, title="Validation bits per byte")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_yscale() == "log":
            ax.grid(which="minor", axis="y", alpha=0.1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    title = ", ".join(str(d) for d, _ in runs)
    fig.suptitle(f"llm_tiny: {title}", fontsize=11)
    fig.tight_layout()
    return fig


def task_panels(ax_tasks: Any, ax_score: Any, runs: list, colours: list[str]) -> None:
    """The task scores (`train.eval_tasks`): each task's accuracy against step with its chance
    level dotted (from `tasks.csv`), and the headline, mean centered accuracy (`task_score`)."""
    styles = ["-", "--", "-.", ":"]
    for i, (run_dir, m) in enumerate(runs):
        name = f"{run_dir.name} " if len(runs) > 1 else ""
        path = run_dir / metrics.TASKS_FILE
        per_task = metrics.read_task_scores(path) if path.is_file() else {}
        for j, (task, points) in enumerate(per_task.items()):
            colour = colours[(j if len(runs) == 1 else i) % len(colours)]
            steps, acc, chance = zip(*points)
            ls = styles[i % len(styles)] if len(runs) > 1 else "-"
            ax_tasks.plot(steps, acc, color=colour, ls=ls, marker="o", ms=3, label=name + task)
            ax_tasks.plot(steps, chance, color=colour, ls=":", lw=1, alpha=0.6)
        xs, ys = _points(m["step"], m.get("task_score", []))
        colour = colours[i % len(colours)]
        ax_score.plot(xs, ys, color=colour, marker="o", ms=4, label=run_dir.name or "score")
    ax_score.axhline(0.0, color="grey", lw=1, ls=":")
    ax_tasks.set(xlabel="optimizer step", ylabel="accuracy (dotted: chance)", title="Tasks")
    ax_score.set(
        xlabel="optimizer step", ylabel="mean centered accuracy", title="Task score (0 = chance)"
    )


def plot_runs(run_dirs: list[str | Path], out_path: str | Path, log_y: str = "auto") -> Path:
    """Plot the runs' loss curves into one PNG at `out_path`; returns the path. `log_y`:
    `auto` (a log y axis when the losses span more than two orders of magnitude), `on`, `off`."""
    return save_figure(loss_figure(run_dirs, log_y), out_path)


def plot_run(run_dir: str | Path, log: Callable[[str], None]) -> None:
    """A finished run's `loss.png`, drawn at the end of training; a note instead when
    matplotlib is missing."""
    try:
        plot_runs([run_dir], Path(run_dir) / LOSS_PLOT)
    except ModuleNotFoundError as e:
        # NOTE: matplotlib is a dependency, but a GPU machine's Python may have only torch and
        # the core libraries; the trained run is worth keeping without its picture.
        if e.name != "matplotlib":
            raise
        log("loss.png not drawn: matplotlib is not installed (pip install matplotlib)")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="llm_tiny plot",
        description="Plot training/validation loss, learning rate and bits per byte of runs.",
    )
    parser.add_argument("runs", nargs="+", help="run directories (each holds metrics.csv)")
    parser.add_argument(
        "--out",
        help="output PNG (default: RUN/loss.png for one run, loss_compare.png for several)",
    )
    parser.add_argument(
        "--log-y",
        choices=LOG_Y_CHOICES,
        default="auto",
        help="log y axis for the losses: auto (default; when they span more than two orders of "
        "magnitude), on, off",
    )
    args = parser.parse_args(argv)

    def run() -> int:
        default = Path(args.runs[0]) / LOSS_PLOT if len(args.runs) == 1 else "loss_compare.png"
        path = plot_runs(args.runs, args.out or default, args.log_y)
        print(f"wrote {path}")
        return 0

    return run_cli(run, "llm_tiny plot")
