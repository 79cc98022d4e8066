"""Training dynamics: how big each weight matrix is and how fast one step moves it.

With `train.log_dynamics: true` the loop measures, every `log_interval` steps, for each weight
matrix W (biases and norm gains left out, a tied matrix once):

    weight_norm  = ||W||                       (Frobenius)
    update_ratio = ||W_after - W_before|| / ||W_before||   over that one optimizer step

and writes them to `dynamics.csv` (`metrics.RunLog.dynamics`); `viz training RUN` draws them.
A healthy ratio sits around 1e-3 (a rule of thumb from Karpathy's "Building makemore" lectures):
far below, the layer barely learns; far above, training is unstable. The norms show weight
decay and growth: a layer whose norm climbs without bound is one to watch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def weight_matrices(model: nn.Module) -> list[tuple[str, Tensor]]:
    """The (name, parameter) of every matrix, in model order; a shared one once."""
    return [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]


@torch.no_grad()
def snapshot(model: nn.Module) -> list[Tensor]:
    """Copies of the weight matrices, to compare with after a step."""
    return [p.detach().clone() for _, p in weight_matrices(model)]


def whole(t: Tensor) -> Tensor:
    """A plain tensor: a sharded weight's norm (FSDP: a DTensor, every rank's shards summed by a
    collective) as the one number it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def measure(model: nn.Module, before: list[Tensor]) -> list[tuple[str, float, float]]:
    """(name, ||W||, ||W - W_before|| / ||W_before||) of each weight matrix, read from the
    device in one transfer.

    >>> m = nn.Linear(2, 2, bias=False); _ = m.weight.data.copy_(torch.eye(2))
    >>> b = snapshot(m); _ = m.weight.data.mul_(1.5)
    >>> [(n, round(w, 4), round(r, 4)) for n, w, r in measure(m, b)]
    [('weight', 2.1213, 0.5)]
    """
    named = weight_matrices(model)
    stats = torch.stack(
        [
            torch.stack(
                [whole(p.float().norm()), whole((p.float() - w.float()).norm() / w.float().norm())]
            )
            for (_, p), w in zip(named, before, strict=True)
        ]
    ).tolist()
    return [(name, norm, ratio) for (name, _), (norm, ratio) in zip(named, stats, strict=True)]
