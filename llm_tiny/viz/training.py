"""Training dynamics over a run (`train.log_dynamics: true`), from `dynamics.csv`
(`llm_tiny.train.dynamics` says what is measured and why ~1e-3 is the ratio to expect):

- `viz training RUN`: the norm, the update-to-weight ratio and the gradient norm of every
  weight matrix over the steps, one line per matrix.
- `viz training RUN --layers`: the same ratios and gradient norms layer by layer, one panel per
  kind of matrix (attention's qkv and output projection, the MLP's two), the warmup and the
  decay of the learning rate (from `metrics.csv`) shaded, and the median ratio of each kind in
  each phase printed (`phase_summary`).
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

from llm_tiny.errors import UserError
from llm_tiny.plots import pyplot, save_figure
from llm_tiny.viz.names import run_dir

GOOD_RATIO = 1e-3
Series = dict[str, list[tuple[int, float, float, float]]]  # `metrics.read_dynamics`
PHASES = ("warmup", "peak", "decay")


def layer_and_group(name: str) -> tuple[int | None, str]:
    """The block index and the kind of a weight matrix, from its name; None for the matrices
    outside the blocks.

    >>> layer_and_group("blocks.3.attn.qkv.weight"), layer_and_group("wte.weight")
    ((3, 'attn.qkv'), (None, 'wte'))
    """
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.weight", name)
    if m:
        return int(m.group(1)), m.group(2)
    return None, name.removesuffix(".weight")


def lr_phases(lr: list[tuple[int, float]]) -> tuple[int, int]:
    """(end of warmup, start of decay) of a learning-rate curve [(step, lr)]: the first and the
    last step at its peak (within 0.1%). A cosine schedule decays at once: the two are equal.

    >>> lr_phases([(1, 0.1), (2, 0.5), (3, 1.0), (4, 1.0), (5, 0.5)])
    (3, 4)
    """
    peak = max(v for _, v in lr)
    at_peak = [s for s, v in lr if v >= 0.999 * peak]
    return at_peak[0], at_peak[-1]


def phase_of(step: int, warmup_end: int, decay_start: int) -> str:
    if step < warmup_end:
        return "warmup"
    return "peak" if step <= decay_start else "decay"


def phase_summary(
    series: Series, warmup_end: int, decay_start: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """kind of matrix -> phase -> (median update ratio, median gradient norm) over its layers
    and the logged steps of that phase (`phase_of`); phases without a logged step are left
    out."""
    pooled: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, points in series.items():
        _, group = layer_and_group(name)
        for step, _, ratio, grad in points:
            phase = phase_of(step, warmup_end, decay_start)
            pooled.setdefault(group, {}).setdefault(phase, []).append((ratio, grad))
    return {
        group: {
            phase: (
                statistics.median(r for r, _ in rows[phase]),
                statistics.median(g for _, g in rows[phase]),
            )
            for phase in PHASES
            if phase in rows
        }
        for group, rows in pooled.items()
    }


def plot_dynamics(series: Series, out: str | Path, title: str = "") -> Path:
    """One line per matrix over the steps: its norm, its update ratio, its gradient norm."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(10, 10), sharex=True, layout="constrained")
    top, middle, bottom = axes
    cmap = plt.get_cmap("viridis")
    for i, (name, points) in enumerate(series.items()):
        steps = [p[0] for p in points]
        color = cmap(i / max(1, len(series) - 1))
        label = name.removesuffix(".weight").removeprefix("blocks.")
        top.plot(steps, [p[1] for p in points], color=color, label=label, lw=1.2)
        middle.plot(steps, [p[2] for p in points], color=color, lw=1.2)
        bottom.plot(steps, [p[3] for p in points], color=color, lw=1.2)
    top.set_ylabel("weight norm ||W||")
    middle.set_ylabel("update / weight, one step")
    bottom.set_ylabel("gradient norm ||g||")
    for ax in (middle, bottom):
        ax.set_yscale("log")
    middle.axhline(GOOD_RATIO, color="#b91c1c", ls="--", lw=1, label="1e-3")
    middle.legend(loc="upper right", fontsize=8)
    bottom.set_xlabel("step")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    top.legend(fontsize=7, ncol=4, loc="best")
    if title:
        top.set_title(title, fontsize=11)
    return save_figure(fig, out)


def plot_layers(
    series: Series, out: str | Path, phases: tuple[int, int] | None = None, title: str = ""
) -> Path:
    """One column per kind of matrix (those outside the blocks together in the last): update
    ratio (top) and gradient norm (bottom) over the steps, one line per layer coloured from the
    first (dark) to the last (light); warmup (blue) and decay (orange) shaded when `phases`
    (`lr_phases`) is given."""
    plt = pyplot()
    groups: dict[str, list[tuple[int | None, str]]] = {}
    for name in series:
        layer, group = layer_and_group(name)
        groups.setdefault(group if layer is not None else "outside the blocks", []).append(
            (layer, name)
        )
    n_layers = 1 + max(
        (lay for ms in groups.values() for lay, _ in ms if lay is not None), default=0
    )
    cols = len(groups)
    fig, axes = plt.subplots(
        2, cols, figsize=(3.6 * cols, 6.4), sharex=True, sharey="row", layout="constrained",
        squeeze=False,
    )  # fmt: skip
    cmap = plt.get_cmap("viridis")
    last = max(p[0] for points in series.values() for p in points)
    for col, (group, members) in enumerate(groups.items()):
        top, bottom = axes[0, col], axes[1, col]
        for i, (layer, name) in enumerate(members):
            points = series[name]
            steps = [p[0] for p in points]
            if layer is None:  # outside the blocks: one colour each
                shade = i / max(1, len(members) - 1)
            else:
                shade = layer / max(1, n_layers - 1)
            label = f"layer {layer}" if layer is not None else name.removesuffix(".weight")
            top.plot(steps, [p[2] for p in points], color=cmap(0.9 * shade), lw=1.2, label=label)
            bottom.plot(steps, [p[3] for p in points], color=cmap(0.9 * shade), lw=1.2)
        top.set_title(group, fontsize=10)
        top.axhline(GOOD_RATIO, color="#b91c1c", ls="--", lw=1)
        for ax in (top, bottom):
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            if phases is not None:
                ax.axvspan(0, phases[0], color="#3b82f6", alpha=0.08, lw=0)
                if phases[1] < last:
                    ax.axvspan(phases[1], last, color="#f97316", alpha=0.08, lw=0)
        bottom.set_xlabel("step")
        if col in (0, cols - 1):
            top.legend(fontsize=7, loc="best")
    axes[0, 0].set_ylabel("update / weight, one step")
    axes[1, 0].set_ylabel("gradient norm ||g||")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


def _lr_curve(run: Path) -> list[tuple[int, float]]:
    from llm_tiny.train.metrics import METRICS_FILE, read_metrics

    path = run / METRICS_FILE
    if not path.is_file():
        return []
    rows = read_metrics(path)
    return [(int(r["step"]), r["lr"]) for r in rows if r.get("lr") is not None and r.get("step")]


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
    if getattr(args, "layers", False):
        lr = _lr_curve(path.parent)
        phases = lr_phases(lr) if lr else None
        if phases is not None:
            print(f"warmup until step {phases[0]}, decay from step {phases[1]}")
            for group, per_phase in phase_summary(series, *phases).items():
                cells = "  ".join(
                    f"{ph} {r:.1e} (|g| {g:.2g})" for ph, (r, g) in per_phase.items()
                    if not math.isnan(r)
                )  # fmt: skip
                print(f"{group:<20} median update/weight: {cells}")
        return plot_layers(series, args.out, phases, f"Layer-wise dynamics, {path.parent}")
    for name, points in series.items():
        step, norm, ratio, grad = points[-1]
        print(
            f"{name:<32} step {step:>6}  ||W|| {norm:9.4f}  update/weight {ratio:.2e}"
            f"  ||g|| {grad:.2e}"
        )
    return plot_dynamics(series, args.out, f"Training dynamics, {path.parent}")
