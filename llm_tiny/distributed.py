"""The parallelism seam: how N processes share the training of one model.

The model knows nothing of ranks, and the training loop never asks which wrapper it has; it asks
a `Parallel` (torchtitan's `parallelize` stage, at the size of this project):

    runner = par.wrap(model)            # what the training step calls
    with par.sync(last):                # gradients are exchanged on the last micro-batch only
        loss = runner(x, y); backward
    par.mean(t)                         # a tensor averaged over the processes
    par.eval_model                      # what evaluation calls (no gradients to exchange)
    par.full_state_dict()               # every weight, on rank 0, for checkpoints and export
    par.on_main(fn, ...)                # rank 0's work; nothing on the others

`SingleProcess` is one process: every method is the identity. `DataParallel` is DDP (Li et al.
2020): every process holds the whole model and the gradients are averaged across processes.
A sharded wrapper (FSDP2) is one more subclass: its `eval_model` is the wrapped model itself
(the weights are spread over the ranks) and its `full_state_dict` a collective that gathers them.

`parallel_for(rt)` picks the one for this process's `Runtime`. The process group itself is
joined and left by `llm_tiny.runtime` (it is where a process runs, not how a model is shared).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch.distributed as dist
from torch import Tensor, nn

from llm_tiny.runtime import Runtime

T = TypeVar("T")

# The attributes under which the wrappers a model can get keep the module they wrap, and so the
# prefixes they add to its state dict: torch.compile's `_orig_mod`; DDP's (and DataParallel's)
# `module`.
WRAPPED_ATTRS = ("_orig_mod", "module")
WRAPPER_PREFIXES = tuple(f"{a}." for a in WRAPPED_ATTRS)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside every `torch.compile` and parallel wrapper around `model`."""
    while True:
        inner = [getattr(model, a, None) for a in WRAPPED_ATTRS]
        found = [m for m in inner if isinstance(m, nn.Module)]
        if not found:
            return model
        model = found[0]


def strip_wrapper_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict saved from a wrapped model, with its keys as the bare module's:
    ``module._orig_mod.wte.weight -> wte.weight``."""
    clean = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean


class SingleProcess:
    """One process: no wrapper, nothing to synchronise, rank 0 does everything."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.eval_model: nn.Module | None = None  # set by `wrap`

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rt.is_main

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls (`model` may already be compiled)."""
        self.eval_model = model
        self._wrapped = model
        return model

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward and backward: whether its gradients are exchanged
        now (`last`) or kept for the next one (gradient accumulation)."""
        return contextlib.nullcontext()

    def mean(self, t: Tensor) -> Tensor:
        """`t` averaged over the processes (in place where there are several)."""
        return t

    def full_state_dict(self) -> dict[str, Tensor]:
        """The bare model's whole state dict (no wrapper prefixes), on rank 0. Every rank must
        call it: a sharded wrapper gathers the weights with a collective."""
        return dict(unwrap(self._wrapped).state_dict())

    def on_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`fn(*args, **kwargs)` on rank 0 (its result); None on the other ranks."""
        return fn(*args, **kwargs) if self.is_main else None


class DataParallel(SingleProcess):
    """DDP: a whole model per process; gradients averaged by an all-reduce in the backward pass
    of the last micro-batch of each step."""

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.eval_model = model  # evaluation skips DDP: no gradients to synchronise
        ids = [self.rt.device.index] if self.rt.device_type == "cuda" else None
        self._wrapped = DDP(model, device_ids=ids)
        return self._wrapped

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        # NOTE: `no_sync` must cover the forward pass too; that is where DDP decides.
        return contextlib.nullcontext() if last else self._wrapped.no_sync()

    def mean(self, t: Tensor) -> Tensor:
        dist.all_reduce(t)
        return t.div_(self.rt.world_size)


def parallel_for(rt: Runtime) -> SingleProcess:
    """The parallelism of this process: DDP when launched by torchrun with several processes."""
    return DataParallel(rt) if rt.distributed else SingleProcess(rt)
