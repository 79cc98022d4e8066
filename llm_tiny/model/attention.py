"""Causal attention kernels: three ways to compute softmax(q k^T / sqrt(hs) + M) v, chosen by
`ModelConfig.attn_impl`; the causal (or sliding-window) mask; the ALiBi slopes.

Every kernel takes q (B, nh, T, hs), k and v (B, nh, S, hs) with S >= T (a KV cache may hold
S - T earlier positions), and a `mask` (T, S), or (nh, T, S) for ALiBi, in one of two forms:

- bool: True where query t may look at key s (the causal mask);
- float: an additive bias, 0 or a penalty where allowed and -inf where not (ALiBi's distance
  penalties, `llm_tiny.model.ALiBiPositions`; T5's learned bias, `layers.RelativeBias`).

- `manual` writes the formula out: the (T, S) score matrix, a softmax, a weighted sum.
- `sdpa` calls `F.scaled_dot_product_attention`, which on CUDA runs FlashAttention (Dao et al.
  2022) or the memory-efficient kernel (Rabe & Staats 2021) for a plain causal mask.
- `tiled` is FlashAttention's algorithm in plain PyTorch: queries and keys in tiles, a softmax
  computed online (a running max and sum per query), never the whole (T, S) matrix. Slow on
  purpose: it is there to be read (docs/theory.md, section 3) and tested against the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# Query and key tile sizes of `tiled_attention` (FlashAttention's B_r and B_c). Read at call
# time, so a test may shrink them to make a short sequence span several tiles.
TILE_Q = 64
TILE_K = 64


def apply_mask(scores: Tensor, mask: Tensor) -> Tensor:
    """Scores with a bool mask (False -> -inf) or an additive float bias applied."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask


def attention_weights(q: Tensor, k: Tensor, mask: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(hs)) with `mask` applied: (B, nh, T, S)."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
    return F.softmax(apply_mask(scores, mask), dim=-1)


def manual_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float) -> Tensor:
    """Attention written out: weights, dropout on the weights, weighted sum of values."""
    att = F.dropout(attention_weights(q, k, mask), p=dropout_p)  # (B, nh, T, S)
    return att @ v  # (B, nh, T, hs)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float) -> Tensor:
    """The same computation by PyTorch's fused kernel, for the plain causal mask: a 2-D bool
    `mask` is taken to be `causal_mask(block_size)`'s rows, which allows two shortcuts."""
    T, S = q.size(-2), k.size(-2)
    if mask.dim() == 2 and mask.dtype == torch.bool:
        if T == S:  # no cached prefix: `is_causal` lets PyTorch pick FlashAttention on CUDA
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        if T == 1:  # one new token after a cache: it may see every key, no mask needed
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    # NOTE: with fewer queries than keys `is_causal` would align the mask to the top left
    # (query 0 sees key 0 only), which is wrong after a cache; pass the offset mask instead.
    # A per-row mask (B, 1, T, S) (the rows of a batched cache end at different positions) and
    # a bias (ALiBi, T5) go the same way.
    return sdpa_masked_attention(q, k, v, mask, dropout_p)


def sdpa_masked_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float
) -> Tensor:
    """PyTorch's fused kernel with the mask always passed as it is (a bias in the queries'
    dtype): for masks that are not the plain causal one, such as a sliding window, where the
    shortcuts of `sdpa_attention` would attend too far back."""
    if mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float) -> Tensor:
    """Attention in tiles with an online softmax (FlashAttention, Dao et al. 2022, algorithm 1).

    For each tile of queries, walk the keys tile by tile, keeping per query the running max m
    of its scores, the running sum l of exp(score - m) and the running output o (unnormalised).
    When a new tile raises the max from m to m', the old sum and output were computed against
    m and are rescaled by exp(m - m'); at the end o / l is the softmax-weighted sum. Only a
    (TILE_Q, TILE_K) block of scores exists at a time, and a tile the mask hides completely (the
    future, under the causal mask) is skipped: half the work for a long causal sequence.
    """
    T, S = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(k.size(-1))
    out = []
    for t0 in range(0, T, TILE_Q):
        qt = q[..., t0 : t0 + TILE_Q, :] * scale  # (B, nh, tq, hs)
        row_max = qt.new_full((*qt.shape[:-1], 1), float("-inf"))  # m: (B, nh, tq, 1)
        row_sum = qt.new_zeros(row_max.shape)  # l: the sum of exp(score - m) so far
        acc = torch.zeros_like(qt)  # o: the output so far, not yet divided by l (B, nh, tq, hs)
        for s0 in range(0, S, TILE_K):
            tile = mask[..., t0 : t0 + TILE_Q, s0 : s0 + TILE_K]  # (tq, tk) or (nh, tq, tk)
            if not (tile.any() if tile.dtype == torch.bool else tile.isfinite().any()):
                continue  # nothing visible here (the causal future)
            scores = apply_mask(qt @ k[..., s0 : s0 + TILE_K, :].transpose(-2, -1), tile)
            new_max = torch.maximum(row_max, scores.amax(-1, keepdim=True))
            # NOTE: a query that has seen no visible key yet keeps m = -inf, and -inf - -inf is
            # nan; shifting by 0 instead gives exp(-inf) = 0 for it, which is right.
            shift = new_max.masked_fill(new_max == float("-inf"), 0.0)
            p = torch.exp(scores - shift)  # (B, nh, tq, tk), unnormalised weights
            rescale = torch.exp(row_max - shift)  # how much the old sum and output shrink
            row_sum = row_sum * rescale + p.sum(-1, keepdim=True)
            # Dropout drops normalised weights; dropping p before dividing by the full sum l
            # (which counts every weight) is the same thing.
            acc = acc * rescale + F.dropout(p, p=dropout_p) @ v[..., s0 : s0 + TILE_K, :]
            row_max = new_max
        out.append(acc / row_sum)
    return torch.cat(out, dim=-2)  # (B, nh, T, hs)


ATTENTION: dict[str, Callable[..., Tensor]] = {
    "sdpa": sdpa_attention,
    "manual": manual_attention,
    "tiled": tiled_attention,
}
# The kernels for any mask (a sliding window): `manual` and `tiled` already honour every mask.
ATTENTION_ANY_MASK = {**ATTENTION, "sdpa": sdpa_masked_attention}


def causal_mask(size: int, window: int | None = None) -> Tensor:
    """mask[i, j]: may position i look at position j? Causal: j <= i. With a sliding `window`
    (local attention: Child et al. 2019; Beltagy et al. 2020, Longformer; Mistral 7B) also
    i - j < window: each query sees itself and the window - 1 positions before it, and
    stacking L layers still reaches L (window - 1) positions back.

    >>> causal_mask(4, window=2).int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    """
    mask = torch.ones(size, size, dtype=torch.bool).tril()
    return mask if window is None else mask.triu(-(window - 1))


def alibi_slopes(n_head: int) -> Tensor:
    """ALiBi's per-head slopes (Press et al. 2022): for n heads, a power of 2, the geometric
    sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8). Otherwise the slopes of the largest power of 2
    below n, then every other slope of twice that many, as in the paper's code.

    >>> alibi_slopes(4).tolist(), alibi_slopes(6).tolist()[4:]
    ([0.25, 0.0625, 0.015625, 0.00390625], [0.5, 0.125])
    """
    p = 2 ** math.floor(math.log2(n_head))

    def geometric(n: int) -> list[float]:
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    slopes = geometric(p) + geometric(2 * p)[0::2][: n_head - p]
    return torch.tensor(slopes, dtype=torch.float32)  # (nh,)
