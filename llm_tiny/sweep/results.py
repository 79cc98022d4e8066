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


def plot_sweep(path: Path, trials: list[Trial], keys: list[str], metric: str, mode: str) -> None:
    """One panel per varied key: the metric of every successful trial against that key's value.

    Numeric keys get a numeric axis (logarithmic for learning rates and for values spanning more
    than a decade); other values (strings, booleans) are placed as categories.
    """
    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    ok = [t for t in trials if t.status == "ok" and math.isfinite(t.metric)]
    best = rank(ok, mode)[0] if ok else None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
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
            labels = sorted({str(v) for v in values})
            xs = [float(labels.index(str(v))) for v in values]
            ax.set_xticks(range(len(labels)), labels)
        ax.scatter(xs, [t.metric for t in ok], color="tab:blue", zorder=2)
        if best is not None:
            i = ok.index(best)
            ax.scatter([xs[i]], [best.metric], color="tab:red", zorder=3, label="best")
            ax.legend(loc="best", fontsize=8)
        ax.margins(x=0.15)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(ok)} trials, {metric} ({mode}imised)")
    fig.tight_layout()
    save_figure(fig, path)


def values_text(t: Trial) -> str:
    """A trial's varied values for a log line: `(optim.lr=0.001, model.n_embd=64)`."""
    return "(" + ", ".join(f"{k}={_fmt(v)}" for k, v in t.values.items()) + ")"
