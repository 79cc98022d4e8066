"""Gradient flow: mean and max |gradient| of every weight matrix for one real training batch,
on a log scale: vanishing gradients show up as bars falling by orders of magnitude towards the
input, exploding ones as bars climbing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm_tiny.errors import UserError
from llm_tiny.plots import pyplot, save_figure
from llm_tiny.viz.names import run_name


@dataclasses.dataclass(frozen=True)
class GradStat:
    """Gradient statistics of one parameter tensor."""

    name: str
    mean_abs: float  # mean |g| over the entries
    max_abs: float  # max |g|
    norm: float  # L2 norm of g


def gradient_stats(model: nn.Module, weights_only: bool = True) -> list[GradStat]:
    """Per-parameter gradient statistics after a backward pass, in model order.

    With `weights_only`, biases and norm gains (1-D) are left out: the classic gradient-flow
    picture is about the weight matrices. A tied matrix appears once, under its first name.
    Parameters without a gradient are skipped.
    """
    stats = []
    for name, p in model.named_parameters():  # named_parameters yields a shared tensor once
        if p.grad is None or (weights_only and p.dim() < 2):
            continue
        g = p.grad.detach().float().abs()
        stats.append(GradStat(name, float(g.mean()), float(g.max()), float(g.pow(2).sum().sqrt())))
    return stats


def _short_name(name: str) -> str:
    """`blocks.0.attn.qkv.weight` -> `0.attn.qkv`; `wte.weight` -> `wte`."""
    name = name.removesuffix(".weight")
    return name.removeprefix("blocks.")


def grad_flow_figsize(n_params: int) -> tuple[float, float]:
    return (max(8.0, 0.45 * n_params + 2.0), 6.0)


def plot_grad_flow(stats: list[GradStat], out: str | Path, title: str = "") -> Path:
    """Bars of max |g| (light) and mean |g| (dark) per parameter, log scale, input to output."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=grad_flow_figsize(len(stats)), layout="constrained")
    x = np.arange(len(stats))
    tiny = 1e-30  # log scale: a zero gradient is drawn as a bar to the bottom
    ax.bar(x, [max(s.max_abs, tiny) for s in stats], color="#93c5fd", label="max |grad|")
    ax.bar(x, [max(s.mean_abs, tiny) for s in stats], color="#1d4ed8", label="mean |grad|")
    ax.set_yscale("log")
    positive = [v for s in stats for v in (s.mean_abs, s.max_abs) if v > 0]
    if positive:
        ax.set_ylim(min(positive) / 3, max(positive) * 3)
    ax.set_xticks(x, [_short_name(s.name) for s in stats], rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(stats) - 0.4)
    ax.set_ylabel("|gradient| (log scale)")
    ax.set_xlabel("parameter (input → output)")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend()
    if title:
        ax.set_title(title, fontsize=11)
    return save_figure(fig, out)


def training_batch(cfg: Any, ckpt: dict[str, Any], data_dir: Path, device: torch.device):
    """The first training batch of the run's data (`data.open_split`, step 0, micro-batch 0):
    the same kind of batch the loop trains on."""
    from llm_tiny.data import load_prepared, open_split
    from tok.bpe import Tokenizer

    if not (data_dir / "meta.json").is_file():
        raise UserError(
            f"{data_dir}: the run's prepared data is missing (a gradient needs a real training "
            "batch); run from the directory you trained in, or pass --data-dir"
        )
    data = load_prepared(data_dir, Tokenizer.from_json(ckpt["tokenizer"]))
    return open_split(data, "train", cfg, device).get_batch(0, 0)


def grad_flow_command(args: Any) -> Path:
    from llm_tiny.train.checkpoint import load_model, run_data_dir

    model, _, cfg, ckpt = load_model(args.ckpt, args.device)
    device = next(model.parameters()).device
    x, y = training_batch(cfg, ckpt, Path(args.data_dir or run_data_dir(args.ckpt, cfg)), device)
    model.train()  # dropout as in training
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    stats = gradient_stats(model)
    if model.lm_head.weight is model.wte.weight:  # one matrix, two roles: say so on the axis
        stats = [
            dataclasses.replace(s, name="wte = lm_head") if s.name == "wte.weight" else s
            for s in stats
        ]
    width = max(len(_short_name(s.name)) for s in stats)
    print(f"{'parameter':<{width}}  {'mean |g|':>10}  {'max |g|':>10}  {'norm':>10}")
    for s in stats:
        print(
            f"{_short_name(s.name):<{width}}  {s.mean_abs:10.3e}  {s.max_abs:10.3e}  {s.norm:10.3e}"
        )
    title = (
        f"Gradient flow, {run_name(args.ckpt)} (step {ckpt['step']}): one training batch of "
        f"{x.size(0)}, loss {float(loss.detach()):.4f}"
    )
    return plot_grad_flow(stats, args.out, title)
