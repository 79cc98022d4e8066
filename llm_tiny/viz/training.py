"""Training dynamics over a run (`train.log_dynamics: true`): the norm of every weight matrix
and the update-to-weight ratio of its steps, one line per matrix, from `dynamics.csv`
(`llm_tiny.train.dynamics` says what is measured and why ~1e-3 is the ratio to expect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_tiny.errors import UserError
from llm_tiny.plots import pyplot, save_figure
from llm_tiny.viz.names import run_dir

GOOD_RATIO = 1e-3


def plot_dynamics(
    series: dict[str, list[tuple[int, float, float]]], out: str | Path, title: str = ""
) -> Path:
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), sharex=True, layout="constrained")
    cmap = plt.get_cmap("viridis")
    for i, (name, points) in enumerate(series.items()):
        steps = [p[0] for p in points]
        color = cmap(i / max(1, len(series) - 1))
        label = name.removesuffix(".weight").removeprefix("blocks.")
        top.plot(steps, [p[1] for p in points], color=color, label=label, lw=1.2)
        bottom.plot(steps, [p[2] for p in points], color=color, lw=1.2)
    top.set_ylabel("weight norm ||W||")
    bottom.set_ylabel("update / weight, one step")
    bottom.set_yscale("log")
    bottom.axhline(GOOD_RATIO, color="#b91c1c", ls="--", lw=1, label="1e-3")
    bottom.legend(loc="upper right", fontsize=8)
    bottom.set_xlabel("step")
    for ax in (top, bottom):
        ax.grid(alpha=0.3, which="both")
    top.legend(fontsize=7, ncol=4, loc="best")
    if title:
        top.set_title(title, fontsize=11)
    return save_figure(fig, out)


def training_command(args: Any) -> Path:
    from llm_tiny.train.metrics import DYNAMICS_FILE, read_dynamics

    path = run_dir(args.ckpt) / DYNAMICS_FILE
    if not path.is_file():
        raise UserError(
            f"{path} not found: train with --train.log_dynamics=true to record the dynamics"
        )
    try:
        series = read_dynamics(path)
    except (ValueError, KeyError) as e:
        raise UserError(f"{path}: not a dynamics log ({e})") from None
    if not series:
        raise UserError(f"{path} has no rows yet (the first is written at train.log_interval)")
    for name, points in series.items():
        step, norm, ratio = points[-1]
        print(f"{name:<32} step {step:>6}  ||W|| {norm:9.4f}  update/weight {ratio:.2e}")
    return plot_dynamics(series, args.out, f"Training dynamics, {path.parent}")
