"""Token embeddings in two dimensions: the embedding matrix projected on its first two
principal components (`pca_2d`) or laid out by t-SNE (`tsne_2d`) or UMAP (`umap_2d`), with
the tokens that occur most often in the run's training data labelled."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llm_tiny.errors import UserError
from llm_tiny.plots import pyplot, save_figure
from llm_tiny.viz.names import run_name, token_label


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


def tsne_2d(x: Tensor, seed: int = 0) -> Tensor:
    """Lay the rows of x (N, C) out in two dimensions with t-SNE (van der Maaten & Hinton
    2008, scikit-learn's implementation): neighbours stay neighbours, distances between far
    clusters mean little. Perplexity 30, or less for a few points; initialised from PCA and
    seeded, so the picture is the same from run to run."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise UserError(
            "--method tsne needs scikit-learn: pip install scikit-learn "
            "(or pip install 'llm_tiny[viz]')"
        ) from None
    n = x.size(0)
    if n < 3:
        raise UserError(f"t-SNE needs at least 3 tokens, got {n}; use --method pca")
    perplexity = min(30.0, (n - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto")
    return torch.from_numpy(tsne.fit_transform(x.detach().double().numpy())).float()


def umap_2d(x: Tensor, seed: int = 0) -> Tensor:
    """Lay the rows of x (N, C) out in two dimensions with UMAP (McInnes et al. 2018,
    umap-learn): a graph of each row's 15 nearest neighbours (fewer for a few points), laid out
    so that neighbours stay close. Like t-SNE it shows clusters; it tends to keep more of how
    the clusters sit relative to each other. Seeded, so the same checkpoint gives the same
    picture (umap-learn then runs on one thread)."""
    try:
        import umap
    except ImportError:
        raise UserError(
            "--method umap needs umap-learn: pip install umap-learn "
            "(or pip install 'llm_tiny[umap]')"
        ) from None
    n = x.size(0)
    if n < 4:
        raise UserError(f"UMAP needs at least 4 tokens, got {n}; use --method pca")
    import warnings

    # NOTE: with a seed umap-learn warns that it runs on one thread; that is the point.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random_state.*", category=UserWarning)
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed)
        coords = reducer.fit_transform(x.detach().double().numpy())
    return torch.from_numpy(np.asarray(coords)).float()


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
    axes: tuple[str, str],
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
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=11)
    return save_figure(fig, out)


def embeddings_command(args: Any) -> Path:
    from llm_tiny.train.checkpoint import load_model, run_data_dir

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
    if args.method == "tsne":
        coords, axes, method = tsne_2d(weight[ids]), ("t-SNE 1", "t-SNE 2"), "t-SNE"
    elif args.method == "umap":
        coords, axes, method = umap_2d(weight[ids]), ("UMAP 1", "UMAP 2"), "UMAP"
    else:
        coords, explained = pca_2d(weight[ids])
        axes = tuple(f"PC {k + 1} ({100 * float(explained[k]):.1f}% of variance)" for k in (0, 1))
        method = "PCA"
    labels = {i: token_label(token_bytes[i]) for i in order[: args.top] if i < len(token_bytes)}
    title = f"Token embeddings, {run_name(args.ckpt)} (step {ckpt['step']}): {method} of {len(ids)} tokens\n{how}"
    return plot_embeddings(coords, axes, labels, args.out, ids=ids, counts=counts, title=title)
