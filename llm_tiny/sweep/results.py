"""What a sweep leaves behind: `results.csv` (one row per finished trial, ok or failed; a
resumed sweep trusts it and does not train a trial with an `ok` row again), the ranked table,
`best.yaml` and `sweep.png`."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from llm_tiny.config import dump_config, override
from llm_tiny.plots import pyplot, save_figure
from llm_tiny.sweep.space import Trial
from llm_tiny.sweep.spec import SweepSpec

# The measured columns of results.csv, each a `Trial` attribute of the same name.
MEASURES = ("val_loss", "val_bpb", "iters", "wall_s", "tokens_per_s")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.8g}"
    return str(value)


def write_results(path: Path, trials: list[Trial], keys: list[str]) -> None:
    """Write every finished trial as one CSV row under a header naming the varied `keys`
    (atomically: temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "status", "metric", *keys, *MEASURES, "out_dir", "error"])
        for t in trials:
            if t.status in ("ok", "failed"):
                row = [t.id, t.status, _fmt(t.metric), *(_fmt(t.values.get(k)) for k in keys)]
                row += [_fmt(getattr(t, m)) for m in MEASURES]
                out_dir = str(t.out_dir) if t.config is not None else ""  # never-run: none
                writer.writerow([*row, out_dir, t.error])
    tmp.replace(path)


def read_results(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing results.csv by trial id ({} when there is none)."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["trial"]: row for row in csv.DictReader(f) if row.get("trial")}


def _float(text: str | None) -> float:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.nan


def restore(trial: Trial, row: dict[str, str], metric: str) -> None:
    """Fill a planned trial from its row in a previous results.csv."""
    trial.status, trial.error = row.get("status", "failed"), row.get("error", "")
    for name in MEASURES:
        setattr(trial, name, _float(row.get(name)))
    trial.iters = None if math.isnan(trial.iters) else int(trial.iters)
    trial.metric = getattr(trial, metric)


def rank(trials: list[Trial], mode: str = "min") -> list[Trial]:
    """Successful trials best first (ties keep plan order), then the failed ones."""
    ok = [t for t in trials if t.status == "ok" and math.isfinite(t.metric)]
    ok.sort(key=lambda t: t.metric if mode == "min" else -t.metric)
    ranked = {t.id for t in ok}
    return ok + [t for t in trials if t.id not in ranked]


def format_table(trials: list[Trial], keys: list[str], metric: str) -> str:
    """The ranked table printed at the end of a sweep."""
    header = ["rank", "trial", metric, *keys, "wall_s", "tok/s", "status"]
    rows = []
    for i, t in enumerate(trials, 1):
        ok = t.status == "ok"
        rows.append(
            [
                str(i) if ok else "-",
                t.id,
                f"{t.metric:.4f}" if ok else "",
                *(_fmt(t.values.get(k)) for k in keys),
                f"{t.wall_s:.1f}" if math.isfinite(t.wall_s) else "",
                f"{t.tokens_per_s:,.0f}" if math.isfinite(t.tokens_per_s) else "",
                t.status if ok else f"failed: {t.error}",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:-1])]
    lines = []
    for r in [header, *rows]:
        cells = [c.rjust(w) if c[:1].isdigit() else c.ljust(w) for c, w in zip(r, widths)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines)


def write_best(path: Path, best: Trial, spec: SweepSpec) -> None:
    """The best trial's full config, ready to train again (into sweep_dir/best)."""
    assert best.config is not None
    retrain = {"train.out_dir": str(spec.sweep_dir / "best"), "train.threads": None}
    header = (
        f"# Best trial of {spec.source}: {best.id} {values_text(best)}, "
        f"{spec.metric} = {best.metric:.4f}\n"
        f"# trained in {best.out_dir}; retrain with: python -m llm_tiny train {path}\n"
    )
    path.write_text(header + dump_config(override(best.config, **retrain)), "utf-8")


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def trial_styles(n: int, colours: list[str]) -> list[tuple[str, str]]:
    """A (colour, marker) for each of `n` trials: the colours in turn, then the same colours
    with the next marker, so that `len(colours) * len(MARKERS)` trials all look different.

    >>> trial_styles(3, ["red", "blue"])
    [('red', 'o'), ('blue', 'o'), ('red', 's')]
    """
    k = len(colours)
    return [(colours[i % k], MARKERS[(i // k) % len(MARKERS)]) for i in range(n)]


def sweep_figure(trials: list[Trial], keys: list[str], metric: str, mode: str) -> Any:
    """One panel per varied key: the metric of every successful trial against that key's value.

    Each trial has its own colour and marker in every panel, and the legend names it (id, values
    and metric, best first), so a dot in one panel can be found in the others. Numeric keys get a
    numeric axis (logarithmic for learning rates and for values spanning more than a decade);
    other values (strings, booleans) are placed as categories. Failed trials have no metric to
    plot: the title counts them.
    """
    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    ok = rank([t for t in trials if t.status == "ok" and math.isfinite(t.metric)], mode)
    failed = sum(1 for t in trials if t.status == "failed")
    styles = trial_styles(len(ok), plt.rcParams["axes.prop_cycle"].by_key()["color"])
    labels = [
        f"{t.id} ({short_values(t)}): {t.metric:.4f}" + (" best" if i == 0 else "")
        for i, t in enumerate(ok)
    ]
    per_column = 20
    ncol = max(1, math.ceil(len(ok) / per_column))
    legend_w = ncol * (0.4 + 0.065 * max((len(s) for s in labels), default=0))
    height = max(3.4, 0.22 * min(len(ok), per_column) + 1.2)
    fig, axes = plt.subplots(
        1,
        len(keys),
        figsize=(4 * len(keys) + legend_w, height),
        squeeze=False,
        layout="constrained",
    )
    for ax, key in zip(axes[0], keys):
        values = [t.values[key] for t in ok]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            xs = [float(v) for v in values]
            positive = bool(xs) and min(xs) > 0
            # Learning rates are searched on a log scale; so is anything spanning a decade.
            if positive and (key.endswith("lr") or max(xs) / min(xs) > 10):
                ax.set_xscale("log")
            tried = sorted(set(xs))
            if len(tried) <= 8:  # label exactly the values that were tried
                ax.set_xticks(tried, [_fmt(v) for v in tried])
                ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            names = sorted({str(v) for v in values})
            xs = [float(names.index(str(v))) for v in values]
            ax.set_xticks(range(len(names)), names)
        for i, (t, x, (colour, marker)) in enumerate(zip(ok, xs, styles)):
            best = i == 0  # the best is drawn larger, ringed in black, and on top
            ax.scatter(
                [x],
                [t.metric],
                color=colour,
                marker=marker,
                s=90 if best else 45,
                edgecolors="black" if best else "none",
                zorder=3 if best else 2,
                label=labels[i],
            )
        ax.margins(x=0.15)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if ok:
        handles = axes[0][0].get_legend_handles_labels()[0]
        fig.legend(
            handles,
            labels,
            loc="outside right center",
            fontsize=8,
            ncols=ncol,
            title="trial (values): " + metric,
            title_fontsize=8,
        )
    note = f"; {failed} failed, not shown" if failed else ""
    fig.suptitle(f"{len(ok)} trials, {metric} ({mode}imised){note}")
    return fig


def plot_sweep(path: Path, trials: list[Trial], keys: list[str], metric: str, mode: str) -> None:
    """Save `sweep_figure(...)` as a PNG at `path`."""
    save_figure(sweep_figure(trials, keys, metric, mode), path)


def short_values(t: Trial) -> str:
    """A trial's varied values to 3 significant digits, for a legend: `optim.lr=0.000278, ...`."""
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.values.items()
    )


def values_text(t: Trial) -> str:
    """A trial's varied values for a log line: `(optim.lr=0.001, model.n_embd=64)`."""
    return "(" + ", ".join(f"{k}={_fmt(v)}" for k, v in t.values.items()) + ")"
