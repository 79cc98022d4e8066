"""Training dynamics: how big each weight matrix is, how large its gradient, and how fast one
step moves it.

With `train.log_dynamics: true` the loop measures, every `log_interval` steps, for each weight
matrix W (biases and norm gains left out, a tied matrix once):

    weight_norm  = ||W||                       (Frobenius)
    update_ratio = ||W_after - W_before|| / ||W_before||   over that one optimizer step
    grad_norm    = ||g||, the gradient that step used (after `optim.grad_clip`; the loop clears
                   gradients when the next step starts, so they are still there to read)

and writes them to `dynamics.csv` (`metrics.RunLog.dynamics`); `viz training RUN` draws them.
A healthy ratio sits around 1e-3 (a rule of thumb from Karpathy's "Building makemore" lectures):
far below, the layer barely learns; far above, training is unstable. The norms show weight
decay and growth: a layer whose norm climbs without bound is one to watch. The gradient norm
says where the loss pulls hardest; AdamW and Muon both normalise it away (per entry, or per
direction), which is why the ratio follows the learning rate rather than the gradient.
(docs/visualisations.md has both optimizers measured, layer by layer.)
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
def measure(model: nn.Module, before: list[Tensor]) -> list[tuple[str, float, float, float]]:
    """(name, ||W||, ||W - W_before|| / ||W_before||, ||grad||) of each weight matrix, read
    from the device in one transfer; the gradient norm is nan for a matrix without one (frozen).

    >>> m = nn.Linear(2, 2, bias=False); _ = m.weight.data.copy_(torch.eye(2))
    >>> b = snapshot(m); _ = m.weight.data.mul_(1.5); m.weight.grad = torch.ones(2, 2)
    >>> [(n, round(w, 4), round(r, 4), g) for n, w, r, g in measure(m, b)]
    [('weight', 2.1213, 0.5, 2.0)]
    """
    named = weight_matrices(model)
    nan = torch.tensor(float("nan"))

    def stats(p: Tensor, w: Tensor) -> Tensor:
        grad = nan.to(p.device) if p.grad is None else whole(p.grad.float().norm())
        return torch.stack(
            [
                whole(p.float().norm()),
                whole((p.float() - w.float()).norm() / w.float().norm()),
                grad,
            ]
        )

    rows = torch.stack([stats(p, w) for (_, p), w in zip(named, before, strict=True)]).tolist()
    return [(name, *row) for (name, _), row in zip(named, rows, strict=True)]
