"""The model's leaf pieces that need no config: a `Linear` that can decode from a transposed
copy of its weight, the ReLU² activation, logit soft-capping and T5's relative position bias.

They live apart from `llm_tiny.model` only to keep that file within its size budget; the
model imports them, and `Linear` / `decode_layout` stay importable from `llm_tiny.model`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------- linear layers


class Linear(nn.Linear):
    """`nn.Linear` that can multiply by a transposed copy of its weight (`decode_layout`).

    The parameters, the initialisation and the checkpoint keys are `nn.Linear`'s own.
    """

    weight_t: Tensor | None = None  # (in, out), contiguous; set only inside `decode_layout`

    def forward(self, x: Tensor) -> Tensor:
        if self.weight_t is None:
            return F.linear(x, self.weight, self.bias)
        y = x @ self.weight_t  # (..., in) @ (in, out)
        return y if self.bias is None else y + self.bias


@contextlib.contextmanager
def decode_layout(model: nn.Module) -> Iterator[None]:
    """While generating on CPU, let every `Linear` multiply by an `(in, out)` copy of its weight.

    With a KV cache each new token makes every layer a matrix-vector product. On CPU, MKL's
    product with `nn.Linear`'s `(out, in)` weight reads it at about 10 GB/s, with the same
    weight stored `(in, out)` at about 23 GB/s (docs/model.md), so decoding runs about twice as
    fast. The price is a second copy of the weights while the context is open. Off the CPU this
    does nothing. Only for inference: the copies do not follow later changes to the weights.
    """
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    if not linears or linears[0].weight.device.type != "cpu":
        yield
        return
    with torch.no_grad():
        for m in linears:
            m.weight_t = m.weight.detach().t().contiguous()
    try:
        yield
    finally:
        for m in linears:
            m.weight_t = None


# ----------------------------------------------------------------------------- recipe pieces


class ReluSquared(nn.Module):
    """relu(x)^2 (So et al. 2021, "Primer"): sparse like ReLU, smooth at 0 like GELU, and
    cheaper than either's tanh or erf."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x).square()


def soft_cap(logits: Tensor, cap: float) -> Tensor:
    """cap * tanh(logits / cap): the identity near 0, never beyond +-cap (Gemma 2, modded-nanogpt).

    Keeps a few logits from running away early in training without clipping gradients.

    >>> soft_cap(torch.tensor([0.0, 1.0, 100.0]), 15.0).round(decimals=3).tolist()
    [0.0, 0.998, 15.0]
    """
    return cap * torch.tanh(logits / cap)


# ----------------------------------------------------------------------------- positions


def query_key_distance(mask: Tensor, start: int | Tensor) -> Tensor:
    """i - j for each query i (at its position, after `start` cached ones: an int, or one per
    row (B,)) and key j, in the shape of `mask`: (T, S), or (B, 1, T, S) for per-row starts.
    Positive looking back: the distance ALiBi and T5 bias a score by."""
    T, S = mask.shape[-2:]
    if isinstance(start, Tensor):
        i = (start[:, None] + torch.arange(T, device=mask.device))[:, None, :, None]  # (B, 1, T, 1)
    else:
        i = torch.arange(start, start + T, device=mask.device)[:, None]  # (T, 1)
    return i - torch.arange(S, device=mask.device)


def t5_buckets(distance: Tensor, n_buckets: int, max_distance: int) -> Tensor:
    """The bucket of each query-key distance i - j (keys behind the query; the future, which
    the causal mask hides anyway, counts as 0): T5's scheme for a causal model (Raffel et al.
    2020, section 2.1). Distances below n_buckets / 2 get a bucket each; from there to
    `max_distance` the buckets widen geometrically (equal steps of log distance), and every
    farther distance shares the last bucket. Near tokens are told apart exactly, far ones
    roughly.

    >>> t5_buckets(torch.tensor([0, 1, 15, 16, 20, 64, 127, 128, 1000]), 32, 128).tolist()
    [0, 1, 15, 16, 17, 26, 31, 31, 31]
    """
    exact = n_buckets // 2
    d = distance.clamp(min=0)
    # d = exact * (max_distance / exact)^f lands f of the way through the log-spaced buckets.
    f = torch.log(d.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    far = (exact + (f * (n_buckets - exact)).long()).clamp(max=n_buckets - 1)
    return torch.where(d < exact, d, far)


# T5's defaults (Raffel et al. 2020): 32 buckets, the last one from 128 positions back on.
T5_BUCKETS = 32
T5_MAX_DISTANCE = 128


class RelativeBias(nn.Module):
    """T5's relative position bias (`model.pos_emb: t5`): nothing is added to the input; each
    attention score gets a learned number for its head and the bucket of its query-key
    distance (`t5_buckets`). One table serves every layer, as in T5.

    A position module (`model.Positions`): `embed` and `rotate` leave their input alone,
    `bias` turns the causal mask into the bias, -inf where the mask hides a key.
    """

    def __init__(self, n_head: int) -> None:
        super().__init__()
        self.table = nn.Embedding(T5_BUCKETS, n_head)  # (buckets, nh)

    def embed(self, x: Tensor, start: int | Tensor) -> Tensor:
        return x

    def rotate(self, t: Tensor, start: int | Tensor) -> Tensor:
        return t

    def bias(self, mask: Tensor, start: int | Tensor) -> Tensor:
        """(nh, T, S) for a mask (T, S); (B, nh, T, S) for per-row starts (B, 1, T, S)."""
        distance = query_key_distance(mask, start)  # (T, S) or (B, 1, T, S)
        if distance.dim() == 4:
            distance = distance[:, 0]  # (B, T, S)
        bias = self.table(t5_buckets(distance, T5_BUCKETS, T5_MAX_DISTANCE))  # (..., T, S, nh)
        return bias.movedim(-1, -3).masked_fill(~mask, float("-inf"))  # (..., nh, T, S)
