"""Weight histograms: the distribution of the entries of every weight matrix of a checkpoint,
one small panel per matrix in model order. At initialisation each is a narrow bell (std 0.02,
the output projections smaller); training widens some, grows tails in others, and a matrix
that stays a bell at its initial width has barely learned."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from llm_tiny.plots import pyplot, save_figure
from llm_tiny.viz.names import run_name

BINS = 60


def weight_histograms(model: nn.Module, bins: int = BINS) -> list[dict[str, Any]]:
    """For each weight matrix (a tied one once): its name, std, the fraction of entries more
    than 3 std from the mean, and the histogram (counts, edges) of its entries."""
    out = []
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        w = p.detach().float().cpu().numpy().ravel()
        mean, std = float(w.mean()), float(w.std())
        counts, edges = np.histogram(w, bins=bins)
        out.append(
            {
                "name": name.removesuffix(".weight"),
                "std": std,
                "tails": float(np.mean(np.abs(w - mean) > 3 * std)) if std > 0 else 0.0,
                "counts": counts,
                "edges": edges,
            }
        )
    return out


def plot_weight_histograms(hists: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    plt = pyplot()
    cols = min(4, len(hists))
    rows = math.ceil(len(hists) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.3 * rows + 0.6), layout="constrained", squeeze=False
    )
    for ax in axes.flat[len(hists) :]:
        ax.axis("off")
    for ax, h in zip(axes.flat, hists):
        edges = h["edges"]
        ax.stairs(h["counts"], edges, fill=True, color="#60a5fa")
        ax.set_yscale("log")
        ax.set_title(f"{h['name']}\nstd {h['std']:.3g}, >3σ {100 * h['tails']:.2f}%", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


def weights_command(args: Any) -> Path:
    from llm_tiny.train.checkpoint import load_model

    model, _, _, ckpt = load_model(args.ckpt, "cpu")
    hists = weight_histograms(model)
    width = max(len(h["name"]) for h in hists)
    print(f"{'matrix':<{width}}  {'std':>9}  {'>3 std':>7}")
    for h in hists:
        print(f"{h['name']:<{width}}  {h['std']:9.4f}  {100 * h['tails']:6.2f}%")
    title = f"Weight histograms, {run_name(args.ckpt)} (step {ckpt['step']}), log counts"
    return plot_weight_histograms(hists, args.out, title)
