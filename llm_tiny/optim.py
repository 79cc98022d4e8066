"""The optimizer: AdamW over the model's decay / no-decay parameter groups.

AdamW (Loshchilov & Hutter 2019) decouples weight decay from the gradient step:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p = p - lr wd p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
The model decides which parameters decay (`TinyGPT.param_groups`); this module only supplies
the hyperparameters and picks the fastest implementation for the device. The learning rate is
set before every step from `schedule.lr_for`, so the value given at construction is a
placeholder.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable

import torch
from torch import nn

from llm_tiny.config import OptimConfig


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device_type: str = "cpu"
) -> torch.optim.AdamW:
    """AdamW with `model.param_groups(cfg.weight_decay)`; fused kernels on CUDA, or wherever
    `cfg.fused` asks for them (torch supports them on the CPU too)."""
    groups = model.param_groups(cfg.weight_decay)
    extra = {}
    # One fused kernel for all parameters instead of a handful per tensor: fewer launches.
    fused = device_type == "cuda" if cfg.fused is None else cfg.fused
    if fused and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        extra["fused"] = True
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **extra)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip gradients to a global L2 norm of `max_norm` (0: no clipping) and return the norm
    before clipping, as a tensor on the gradients' device (reading it would synchronise)."""
    limit = max_norm if max_norm > 0 else math.inf
    return torch.nn.utils.clip_grad_norm_(list(parameters), limit)
