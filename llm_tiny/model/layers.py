"""The model's leaf pieces that need no config: a `Linear` that can decode from a transposed
copy of its weight, the ReLU² activation and logit soft-capping.

They live apart from `llm_tiny.model` only to keep that file within its size budget; the
model imports them, and `Linear` / `decode_layout` stay importable from `llm_tiny.model`.
"""

from __future__ import annotations

import contextlib
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
