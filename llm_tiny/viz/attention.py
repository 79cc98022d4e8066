"""Attention maps: the softmax weights of every head for a text, as heatmaps with the tokens
on both axes (row = the query token, column = the key token it reads). The weights come from
`TinyGPT.attention_maps`, which always takes the manual path softmax(q k^T / sqrt(hs)) even
when the model trains with the fused kernel, because the fused kernel never forms them.
`attention_layout` keeps the labels readable within a bounded figure size."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from llm_tiny.errors import UserError
from llm_tiny.plots import pyplot, save_figure
from llm_tiny.viz.names import run_name, token_label

MAX_ATTENTION_TOKENS = 64  # longer texts are cut: the tick labels would not be readable


def attention_for_text(model: nn.Module, ids: list[int], device: torch.device) -> list[Tensor]:
    """The attention weights of every layer for one sequence of token ids: each (nh, T, T),
    on the CPU. Row i holds the weights query i gives to keys 0..i; rows sum to 1."""
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    model.eval()
    return [m[0].float().cpu() for m in model.attention_maps(idx)]


MAX_FIGURE_INCHES = 16.0  # an attention figure stays within this each way when it can
_PANEL_W, _PANEL_H, _COLORBAR_W, _TITLE_H = 1.0, 1.2, 1.2, 0.6  # inches around the heatmaps
_PITCH = 1.3 / 72  # inches of axis per point of tick font: a label plus a little gap


@dataclasses.dataclass(frozen=True)
class AttentionLayout:
    """An attention figure: `rows` x `cols` heatmaps, each `side` inches square (a layer's
    heads wrap onto `rows // n_layers` rows), tick labels of `fontsize` points on every
    `every`-th token, and the whole `figsize` (width, height) in inches."""

    rows: int
    cols: int
    side: float
    fontsize: float
    every: int
    figsize: tuple[float, float]


def attention_layout(n_layers: int, n_heads: int, n_tokens: int) -> AttentionLayout:
    """Lay out `n_layers` x `n_heads` heatmaps of `n_tokens` tokens. Tick labels never go below
    a readable size (8 points, 10 for one large heatmap); the heatmaps grow to label every
    token, heads wrap onto more rows when that makes them larger, and the figure stays within
    `MAX_FIGURE_INCHES` each way; when the tokens still do not fit, every k-th is labelled.

    >>> layout = attention_layout(1, 4, 64)  # a long text: 2 x 2 heads, every 2nd token
    >>> (layout.rows, layout.cols, layout.every, layout.fontsize)
    (2, 2, 2, 8.0)
    """
    single = n_layers * n_heads == 1
    font_min, font_max = (10.0, 12.0) if single else (8.0, 10.0)
    side_min, side_max = (4.5, 10.0) if single else (2.2, 6.0)
    want = min(side_max, max(side_min, n_tokens * font_min * _PITCH))
    side, rows, cols = 0.0, n_layers, n_heads
    for per_layer in range(1, n_heads + 1):  # rows each layer's heads wrap onto
        c, r = math.ceil(n_heads / per_layer), n_layers * per_layer
        room_w, room_h = MAX_FIGURE_INCHES - _COLORBAR_W, MAX_FIGURE_INCHES - _TITLE_H
        fits = min(want, room_w / c - _PANEL_W, room_h / r - _PANEL_H)
        if fits > side + 1e-9:
            side, rows, cols = fits, r, c
    # NOTE: with many layers the figure outgrows the cap rather than the heatmaps shrinking.
    side = max(side, side_min)
    fontsize = min(font_max, max(font_min, side / (max(n_tokens, 1) * _PITCH)))
    every = max(1, math.ceil(round(n_tokens * fontsize * _PITCH / side, 6)))
    width, height = cols * (side + _PANEL_W) + _COLORBAR_W, rows * (side + _PANEL_H) + _TITLE_H
    figsize = (round(width, 2), round(height, 2))  # whole pixels at DPI 100
    return AttentionLayout(rows, cols, side, fontsize, every, figsize)


def attention_figure(
    maps: list[Tensor],
    labels: list[str],
    *,
    layers: list[int],
    heads: list[int] | None = None,
    title: str = "",
) -> Any:
    """The figure of heatmaps of `maps[layer][head]` (T, T), laid out by `attention_layout`:
    each layer in `layers` gets a block of rows, holding each head in `heads` (default all).
    Tokens label both axes; a colour bar gives the scale (0 to 1)."""
    plt = pyplot()
    heads = list(range(maps[0].size(0))) if heads is None else heads
    T = len(labels)
    layout = attention_layout(len(layers), len(heads), T)
    single = layout.rows * layout.cols == 1
    fig, axes = plt.subplots(
        layout.rows, layout.cols, figsize=layout.figsize, squeeze=False, layout="constrained"
    )
    per_layer = layout.rows // len(layers)
    ticks = list(range(0, T, layout.every))
    tick_labels = [labels[i] for i in ticks]
    axis_font = 11 if single else 9
    every = "" if layout.every == 1 else f"; 1 in {layout.every} labelled"
    for ax in axes.flat:
        ax.set_axis_off()  # the cells a wrapped layer leaves empty stay blank
    for li, layer in enumerate(layers):
        for hi, head in enumerate(heads):
            ax = axes[li * per_layer + hi // layout.cols][hi % layout.cols]
            ax.set_axis_on()
            w = maps[layer][head].numpy()
            # Masked (future) positions are exactly 0; show them blank rather than dark.
            shown = np.ma.masked_where(np.triu(np.ones_like(w, dtype=bool), k=1), w)
            image = ax.imshow(shown, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {layer}, head {head}", fontsize=axis_font)
            ax.set_xticks(ticks, tick_labels, rotation=90, fontsize=layout.fontsize)
            ax.set_yticks(ticks, tick_labels, fontsize=layout.fontsize)
            ax.tick_params(length=2 if layout.every > 1 else 0)
            ax.set_xlabel(f"key token (attended to{every})", fontsize=axis_font)
            ax.set_ylabel("query token (attending)", fontsize=axis_font)
    fig.colorbar(image, ax=axes, shrink=0.8 if single else 0.6, label="attention weight (0-1)")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _index(value: int | None, n: int, what: str) -> int | None:
    """Check a layer/head index (negative counts from the end, as in Python)."""
    if value is None:
        return None
    if not -n <= value < n:
        raise UserError(f"--{what} {value} is out of range: this model has {n} {what}s (0-{n - 1})")
    return value % n


def attention_command(args: Any) -> Path:
    from llm_tiny.train.checkpoint import load_model

    if not args.text:
        raise UserError("--text is empty; give the text whose attention to draw")
    model, tokenizer, cfg, ckpt = load_model(args.ckpt, args.device)
    m = cfg.model
    layer = _index(args.layer, m.n_layer, "layer")
    head = _index(args.head, m.n_head, "head")
    ids = tokenizer.encode(args.text, allowed_special="all")
    limit = min(m.block_size, MAX_ATTENTION_TOKENS)
    if len(ids) > limit:
        why = "the model's block_size" if limit == m.block_size else "what fits on a picture"
        print(
            f"note: the text is {len(ids)} tokens; drawing the first {limit} ({why})",
            file=sys.stderr,
        )
        ids = ids[:limit]
    maps = attention_for_text(model, ids, next(model.parameters()).device)
    labels = [token_label(tokenizer.token_bytes(i)) for i in ids]
    if head is not None:  # one big heatmap; the last layer unless --layer says otherwise
        layers, heads = [m.n_layer - 1 if layer is None else layer], [head]
    else:
        layers, heads = (list(range(m.n_layer)) if layer is None else [layer]), None
    title = f"Attention weights, {run_name(args.ckpt)} (step {ckpt['step']})"
    return save_figure(
        attention_figure(maps, labels, layers=layers, heads=heads, title=title), args.out
    )
