"""Pictures of a trained model: `python -m llm_tiny viz attention|embeddings|grad-flow ...`.

Each picture is computed from a real checkpoint (a run directory means its `best.pt`) and saved
as a PNG, by default inside the run directory:

- `attention`: the softmax attention weights of every head for a text, as heatmaps with the
  tokens on both axes (row = the query token, column = the key token it reads). The weights
  come from `TinyGPT.attention_maps`, which always takes the manual path
  softmax(q k^T / sqrt(hs)) even when the model trains with the fused kernel, because the fused
  kernel never forms them.
- `embeddings`: the token embedding matrix projected on its first two principal components
  (`pca_2d`), with the tokens that occur most often in the run's training data labelled.
- `grad-flow`: mean and max |gradient| of every weight matrix for one real training batch, on
  a log scale: vanishing gradients show up as bars falling by orders of magnitude towards the
  input, exploding ones as bars climbing.

The numbers behind each picture come from pure functions (`token_label`, `pca_2d`,
`token_frequencies`, `gradient_stats`) that the tests check against references, and so does
its layout (`attention_layout`: readable labels within a bounded size); `attention_figure` and
the `plot_*` functions only draw, and save through `plots.save_figure` (an image is exactly
figsize x DPI).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from llm_tiny.errors import ArgumentParser, UserError, run_cli
from llm_tiny.plots import pyplot, save_figure

MAX_ATTENTION_TOKENS = 64  # longer texts are cut: the tick labels would not be readable


# ----------------------------------------------------------------------------- tokens


def token_label(token: bytes) -> str:
    """A token's bytes as a short axis label: spaces shown as `␣`, newlines and other control
    characters escaped (`\\n`), bytes that are not UTF-8 as `\\xNN`.

    >>> token_label(b" the"), token_label(b"\\n"), token_label(b"\\xe4")
    ('␣the', '\\\\n', '\\\\xe4')
    """
    from tok.serialize import render_token

    text = render_token(token)[1:-1]  # drop the quotes render_token adds
    return text.replace("\\'", "'").replace(" ", "␣")


# ----------------------------------------------------------------------------- attention


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
    from llm_tiny.checkpoint import load_model

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
    title = f"Attention weights, {_run_name(args.ckpt)} (step {ckpt['step']})"
    return save_figure(
        attention_figure(maps, labels, layers=layers, heads=heads, title=title), args.out
    )


# ----------------------------------------------------------------------------- embeddings


def pca_2d(x: Tensor) -> tuple[Tensor, Tensor]:
    """Project the rows of x (N, C) on their first two principal components.

    Returns (coords (N, 2), explained (2,)): the centred rows times the two leading right
    singular vectors, and the fraction of the total variance each component explains. The sign
    of each component is fixed so that its largest-magnitude loading is positive (SVD leaves it
    arbitrary), which keeps pictures stable from run to run.
    """
    x = x.detach().double()
    centred = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(N, C), C)
    k = min(2, vh.size(0))
    components = vh[:k]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = components * signs
    coords = centred @ components.T  # (N, k)
    var = s.pow(2)
    explained = var[:k] / var.sum().clamp_min(1e-300)
    if k < 2:  # a single point or a rank-1 matrix: pad the second axis with zeros
        coords = torch.cat([coords, coords.new_zeros(coords.size(0), 2 - k)], dim=1)
        explained = torch.cat([explained, explained.new_zeros(2 - k)])
    return coords.float(), explained.float()


def token_frequencies(
    data_dir: str | Path, vocab_size: int, fingerprint: str | None = None
) -> np.ndarray | None:
    """How often each token id occurs in the prepared training split of `data_dir` (a
    length-`vocab_size` array), or None if the data is missing or was prepared with another
    tokenizer than the one whose `fingerprint` is given."""
    from llm_tiny.data.shards import TokenStream

    data_dir = Path(data_dir)
    try:
        meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
        stream = TokenStream([data_dir / s["file"] for s in meta["splits"]["train"]["shards"]])
        tokens = stream[0 : len(stream)]
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None
    if fingerprint is not None and meta.get("tokenizer_fingerprint") != fingerprint:
        return None
    if tokens.size and int(tokens.max()) >= vocab_size:
        return None
    return np.bincount(tokens.astype(np.int64), minlength=vocab_size)


def fallback_ranking(token_bytes: list[bytes]) -> list[int]:
    """Which tokens to label when no frequencies are known: merged tokens in merge order (BPE
    merged the most frequent pair first), then the printable single bytes by id.

    >>> fallback_ranking([bytes([i]) for i in range(256)] + [b"th", b"the"])[:4]
    [256, 257, 33, 34]
    """
    merged = list(range(256, len(token_bytes)))
    printable = [i for i in range(min(256, len(token_bytes))) if 33 <= i < 127]
    return merged + printable


def embeddings_figsize() -> tuple[float, float]:
    return (9.0, 8.0)


def plot_embeddings(
    coords: Tensor,
    explained: Tensor,
    labels: dict[int, str],
    out: str | Path,
    *,
    ids: list[int],
    counts: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Scatter `coords` (N, 2) of the tokens `ids`; label those in `labels` (id -> text).
    With `counts`, the point size grows with the log of each token's frequency."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=embeddings_figsize(), layout="constrained")
    xy = coords.numpy()
    sizes = 12.0 if counts is None else 6.0 + 10.0 * np.log1p(counts[ids].astype(float))
    ax.scatter(xy[:, 0], xy[:, 1], s=sizes, c="#9db4d6", edgecolors="none", alpha=0.8)
    position = {t: i for i, t in enumerate(ids)}
    for token, text in labels.items():
        x, y = xy[position[token]]
        ax.scatter([x], [y], s=30, c="#c2410c")
        ax.annotate(text, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=9)
    ax.set_xlabel(f"PC 1 ({100 * float(explained[0]):.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * float(explained[1]):.1f}% of variance)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=11)
    return save_figure(fig, out)


def embeddings_command(args: Any) -> Path:
    from llm_tiny.checkpoint import load_model, run_data_dir

    if args.top < 0:
        raise UserError(f"--top must be >= 0, got {args.top}")
    model, tokenizer, cfg, ckpt = load_model(args.ckpt, "cpu")
    weight = model.wte.weight.detach()
    vocab = weight.size(0)
    token_bytes = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    data_dir = Path(args.data_dir or run_data_dir(args.ckpt, cfg))
    counts = token_frequencies(data_dir, vocab, ckpt.get("tokenizer_fingerprint"))
    if counts is not None:
        # Tokens that never occur in training only ever receive the push-down of the softmax;
        # they would crowd the picture without saying anything about what was learned.
        ids = [int(i) for i in np.flatnonzero(counts)]
        order = sorted(ids, key=lambda i: (-int(counts[i]), i))
        how = f"labelled: the {min(args.top, len(ids))} most frequent tokens in {data_dir}"
    else:
        print(
            f"note: no token counts ({data_dir} is missing or was made with another "
            "tokenizer); labelling merged tokens in merge order, then printable bytes",
            file=sys.stderr,
        )
        ids = list(range(vocab))
        order = fallback_ranking(token_bytes)
        how = "labelled by id (no training data to count)"
    coords, explained = pca_2d(weight[ids])
    labels = {i: token_label(token_bytes[i]) for i in order[: args.top] if i < len(token_bytes)}
    title = f"Token embeddings, {_run_name(args.ckpt)} (step {ckpt['step']}): PCA of {len(ids)} tokens\n{how}"
    return plot_embeddings(coords, explained, labels, args.out, ids=ids, counts=counts, title=title)


# ----------------------------------------------------------------------------- gradient flow


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
    from llm_tiny.checkpoint import load_model, run_data_dir

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
        f"Gradient flow, {_run_name(args.ckpt)} (step {ckpt['step']}): one training batch of "
        f"{x.size(0)}, loss {float(loss.detach()):.4f}"
    )
    return plot_grad_flow(stats, args.out, title)


# ----------------------------------------------------------------------------- command line


def _run_dir(ckpt: str) -> Path:
    p = Path(ckpt)
    return p if p.is_dir() else p.parent


def _run_name(ckpt: str) -> str:
    p = Path(ckpt)
    return str(p) if p.is_dir() else f"{p.parent.name}/{p.name}"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="llm_tiny viz",
        description="Pictures of a trained model (PNG): attention maps, token embeddings, "
        "gradient flow.",
    )
    sub = p.add_subparsers(dest="picture", required=True, metavar="PICTURE")

    def common(q: ArgumentParser, default_name: str) -> None:
        q.add_argument("--ckpt", required=True, help="run directory (uses best.pt) or a .pt file")
        q.add_argument("--out", help=f"output PNG (default: RUN/{default_name})")
        q.set_defaults(default_name=default_name)

    a = sub.add_parser("attention", help="heatmaps of the attention weights for a text")
    common(a, "attention.png")
    a.add_argument("--text", required=True, help="the text to read, e.g. 'Max(3,7,5)=7'")
    a.add_argument("--layer", type=int, help="only this layer (default: every layer)")
    a.add_argument(
        "--head", type=int, help="one large heatmap of this head (of --layer, default the last)"
    )
    a.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    a.set_defaults(command=attention_command)

    e = sub.add_parser("embeddings", help="2-D PCA of the token embeddings")
    common(e, "embeddings.png")
    e.add_argument("--top", type=int, default=30, help="label this many tokens (default 30)")
    e.add_argument("--data-dir", help="prepared data to count tokens in (default: the run's)")
    e.set_defaults(command=embeddings_command)

    g = sub.add_parser("grad-flow", help="gradient size per layer for one training batch")
    common(g, "grad_flow.png")
    g.add_argument("--data-dir", help="prepared data to take the batch from (default: the run's)")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    g.set_defaults(command=grad_flow_command)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        args.out = args.out or _run_dir(args.ckpt) / args.default_name
        path = args.command(args)
        print(f"wrote {path}")
        return 0

    return run_cli(run, "llm_tiny viz")


if __name__ == "__main__":
    sys.exit(main())
