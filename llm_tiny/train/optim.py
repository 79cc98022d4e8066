"""The optimizer: AdamW over the model's decay / no-decay parameter groups, or Muon on the
hidden matrices with AdamW on the rest (`optim.name`).

AdamW (Loshchilov & Hutter 2019) decouples weight decay from the gradient step:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p = p - lr wd p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
The model decides which parameters decay (`TinyGPT.param_groups`); this module only supplies
the hyperparameters and picks the fastest implementation for the device. The learning rate is
set before every step from `schedule.lr_for`, so the value given at construction is a
placeholder; groups that carry an `lr_scale` (Muon's) get that multiple of it.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers"; docs/theory.md) replaces
each 2-D weight's momentum update by the nearest semi-orthogonal matrix, found by a few
Newton-Schulz iterations: every direction of the update moves by the same amount. It is only
meant for the matrices inside the blocks; embeddings, the LM head, gains and biases stay
with AdamW.

Sharded (FSDP) matrices are DTensors, each rank holding a block of rows, and Muon runs on them
unchanged: DTensor carries out each operation of the Newton-Schulz iteration on the whole
matrix, communicating what it needs. Where the rows are the contracted side (a tall matrix,
iterated transposed) each rank's partial Gram matrix is summed, one all-reduce of the small
side's square per iteration; a wide matrix is all-gathered for its products. The result is the
whole matrix's orthogonalisation, each rank keeping its rows (tests/e2e/test_fsdp.py).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from llm_tiny.config import OptimConfig
from llm_tiny.errors import UserError


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device_type: str = "cpu"
) -> torch.optim.Optimizer | Optimizers:
    """The optimizer `cfg.name` asks for: AdamW with `model.param_groups(cfg.weight_decay)`, or
    Muon on `hidden_matrices(model)` and AdamW on the remaining parameters."""
    groups = model.param_groups(cfg.weight_decay)
    if cfg.name == "adamw":
        return build_adamw(groups, cfg, device_type)
    if not hasattr(torch.optim, "Muon"):
        raise UserError(
            f"optim.name: muon needs torch.optim.Muon (torch >= 2.9); this is torch "
            f"{torch.__version__}: upgrade torch or use optim.name: adamw"
        )
    hidden = hidden_matrices(model)
    if not hidden:  # a LoRA run: every trainable matrix is an adapter, AdamW's
        return build_adamw(groups, cfg, device_type)
    ids = {id(p) for p in hidden}
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
    # NOTE: torch's Muon iterates in bfloat16, which this project's CPUs run about 20x slower
    # than float32 (docs/speedrun.md); `auto` keeps it for accelerators only.
    dtype = cfg.muon_dtype
    if dtype == "auto":
        dtype = "float32" if device_type == "cpu" else "bfloat16"
    muon_class = Float32Muon if dtype == "float32" else torch.optim.Muon
    muon = muon_class(
        hidden, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay
    )
    # The schedule sets one learning rate; Muon's follows it at its own scale.
    for group in muon.param_groups:
        group["lr_scale"] = cfg.muon_lr / cfg.lr
    return Optimizers(muon, build_adamw([g for g in rest if g["params"]], cfg, device_type))


def build_adamw(groups: list[dict], cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW over `groups`; fused kernels on CUDA, or wherever `cfg.fused` asks for them (torch
    supports them on the CPU too)."""
    extra = {}
    # One fused kernel for all parameters instead of a handful per tensor: fewer launches.
    fused = device_type == "cuda" if cfg.fused is None else cfg.fused
    if fused and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        extra["fused"] = True
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **extra)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside the transformer blocks (attention and MLP matrices): Muon's.
    Embeddings and the LM head sit outside the blocks; gains and biases are 1-D. The encoder's
    and the encoder-decoder's blocks (`encoder.blocks.`, `decoder_blocks.`) count too.

    NOTE: LoRA adapters (`.lora.` in the name) stay with AdamW, as in PEFT and litgpt: A is
    r x in and B out x r, and orthogonalising their updates would move all r directions by
    the same amount, which B's start at zero does not call for."""
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and p.dim() == 2 and "blocks." in name and ".lora." not in name
    ]


def newton_schulz(
    g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> torch.Tensor:
    """About the nearest semi-orthogonal matrix to `g` (U V^T for g = U S V^T), in g's dtype.

    X = g / ||g||_F (spectral norm <= 1), then `steps` times X <- a X + (b A + c A^2) X with
    A = X X^T, on the wide orientation (the smaller Gram matrix). With Muon's coefficients the
    singular values end in about [0.5, 1.5] after 5 steps (docs/theory.md, section 9).
    """
    a, b, c = coefficients
    tall = g.size(0) > g.size(1)
    x = g.T if tall else g
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


# (On a torch without Muon the class still defines, and `build_optimizer` refuses to use it.)
class Float32Muon(torch.optim.Muon if hasattr(torch.optim, "Muon") else torch.optim.Optimizer):
    """torch's Muon with the Newton-Schulz iteration in the parameters' dtype (float32) instead
    of bfloat16. The constructor, the parameter groups and the state (`momentum_buffer`) are
    torch's, so checkpoints of either load into the other; `adjust_lr_fn` is torch's default
    (the update scaled by sqrt(max(1, rows / cols)))."""

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - mu)  # buf = mu buf + (1 - mu) g
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                update = newton_schulz(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"]
                )
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.size(0) / p.size(1))))


class Optimizers:
    """Several torch optimizers that step, zero and save as one (Muon and AdamW).

    Exposes what the training loop, the checkpoint and `torch.amp.GradScaler` use: the
    concatenated `param_groups`, `step`, `zero_grad`, `state_dict` and `load_state_dict`.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self, closure: None = None) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError("the checkpoint's optimizer state is not this optimizer's")
        for opt, sd in zip(self.optimizers, saved):
            opt.load_state_dict(sd)


def set_lr(optimizer: torch.optim.Optimizer | Optimizers, lr: float) -> None:
    """Set the learning rate of every parameter group (times its `lr_scale`, if it has one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip gradients to a global L2 norm of `max_norm` (0: no clipping) and return the norm
    before clipping, as a tensor on the gradients' device (reading it would synchronise).

    Sharded gradients (FSDP's DTensors) work as they are: torch sums the squares of each
    rank's shards and all-reduces the sum, so the norm is the whole model's, the same on
    every rank; it comes back as a replicated DTensor, returned here as a plain tensor."""
    limit = max_norm if max_norm > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), limit)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
