"""The picture of RL runs (`rl.png`) from their `metrics.csv` (`rl.loop.COLUMNS`).

Six panels against the step: the held-out scores (greedy exact match solid, pass@1 dashed,
pass@k dotted), the training reward, the response length, the entropy, the KL to the starting
model and the share of clipped tokens. Several runs share the figure, one colour each (the
benchmark's and docs/rl.md's comparisons). Drawn through the project's one matplotlib setup
(`plots.pyplot`, `plots.save_figure`); read through the one reader of the file
(`metrics.read_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_tiny.plots import pyplot, save_figure
from llm_tiny.train.metrics import METRICS_FILE, read_metrics

PLOT = "rl.png"  # in the run directory, beside metrics.csv
PANELS = (  # (title, y label, [(column, line style)])
    ("Held-out", "exact match", [("eval_greedy", "-"), ("eval_pass1", "--"), ("eval_passk", ":")]),
    ("Training reward", "mean reward", [("reward", "-")]),
    ("Response length", "tokens", [("response_len", "-")]),
    ("Entropy", "nats / token", [("entropy", "-")]),
    ("KL to the start", "nats / token (k3)", [("kl", "-")]),
    ("Clipped tokens", "share", [("clip_frac", "-")]),
)


def rl_figure(run_dirs: list[str | Path], labels: list[str] | None = None) -> Any:
    """The figure of one or more RL runs (see the module docstring)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run_dir in enumerate(run_dirs):
        rows = read_metrics(Path(run_dir) / METRICS_FILE)
        label = labels[i] if labels else (Path(run_dir).name if len(run_dirs) > 1 else "")
        for ax, (_, _, columns) in zip(axes.flat, PANELS):
            for column, style in columns:
                points = [
                    (r["step"], r[column])
                    for r in rows
                    if r.get(column) is not None and not math.isnan(r[column])
                ]
                if points:
                    xs, ys = zip(*points)
                    name = f"{label} {column}".strip() if len(columns) > 1 else label or column
                    marker = "o" if column.startswith("eval") else None
                    ax.plot(xs, ys, color=colours[i % len(colours)], ls=style, marker=marker,
                            ms=3, lw=1.5, label=name)  # fmt: skip
    for ax, (title, ylabel, _) in zip(axes.flat, PANELS):
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_rl(run_dir: str | Path, log: Callable[[str], None]) -> None:
    """A finished RL run's `rl.png`; a note instead when matplotlib is missing."""
    try:
        save_figure(rl_figure([run_dir]), Path(run_dir) / PLOT)
    except ImportError:
        log("note: matplotlib is not installed; no rl.png (pip install matplotlib)")
