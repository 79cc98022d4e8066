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
`FullyShardedParallel` is FSDP2 (`torch.distributed.fsdp.fully_shard`; Zhao et al. 2023): each
block and the root hold 1/N of every parameter (dim-0 shards, DTensors), gathered for their
forward and backward and freed after; gradients are reduce-scattered, so each rank keeps and
updates only its shard of the gradients and optimizer state. Its `prepare` shards the model
in place before the optimizer is built, its `eval_model` is the sharded model itself (every
rank must run each forward: evaluation keeps the ranks in step, `eval.loss`), its
`full_state_dict` is a collective, and its checkpoints are sharded (`train.dcp`).

`parallel_for(rt, how)` picks the one for this process's `Runtime` and `runtime.parallel`. The
process group itself is joined and left by `llm_tiny.runtime` (it is where a process runs, not
how a model is shared).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from llm_tiny.errors import UserError
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

    sharded = False  # whether the weights are spread over the ranks (checkpoints: `train.dcp`)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Before the optimizer sees the parameters: shard them in place (FSDP); else nothing."""
        return model

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


class FullyShardedParallel(DataParallel):
    """FSDP2: each block, then the root (the embeddings, the final norm and the head), sharded
    over the ranks. On a GPU in bfloat16 the gathered weights are bfloat16 and the gradients are
    reduced in float32 (`MixedPrecisionPolicy`); `offload` keeps the shards on the CPU."""

    sharded = True

    def __init__(self, rt: Runtime, offload: bool = False) -> None:
        super().__init__(rt)
        self.offload = offload

    def prepare(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            MixedPrecisionPolicy,
            OffloadPolicy,
            fully_shard,
        )

        check_shardable(model, self.rt.world_size)
        kw: dict[str, Any] = {
            "offload_policy": CPUOffloadPolicy() if self.offload else OffloadPolicy()
        }
        if self.rt.device_type == "cuda" and self.rt.dtype == torch.bfloat16:
            kw["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32
            )
        for block in getattr(model, "blocks", []):
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        self.eval_model = self._wrapped = model
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        self.eval_model = unwrap(model)  # the sharded model: its forward gathers the weights
        self._wrapped = model
        return model

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        # Between micro-batches the gradients stay whole and unreduced on each rank, and the
        # weights gathered for the backward pass stay gathered: one reduce-scatter per step.
        fsdp = unwrap(self._wrapped)
        fsdp.set_requires_gradient_sync(last)
        fsdp.set_reshard_after_backward(last)
        return contextlib.nullcontext()

    def full_state_dict(self) -> dict[str, Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0's, on the CPU
        return get_model_state_dict(unwrap(self._wrapped), options=options)


def check_shardable(model: nn.Module, world_size: int) -> None:
    """A `UserError` when some parameter has fewer rows than there are ranks (FSDP shards dim 0:
    some ranks would hold none of it)."""
    for name, p in model.named_parameters():
        if p.shape and p.shape[0] < world_size:
            raise UserError(
                f"runtime.parallel: fsdp cannot shard {name} ({p.shape[0]} rows) over "
                f"{world_size} processes; use fewer processes (at most {p.shape[0]}) or ddp"
            )


def parallel_for(rt: Runtime, how: str = "ddp", offload: bool = False) -> SingleProcess:
    """The parallelism of this process: `how` (`runtime.parallel`) when launched by torchrun
    with several processes, else one process (fsdp then is a `UserError`: it needs torchrun)."""
    if how == "fsdp":
        if not rt.distributed:
            raise UserError(
                "runtime.parallel: fsdp shards the model over several processes; launch with "
                "torchrun --nproc-per-node N (N >= 2), or use runtime.parallel: ddp"
            )
        if offload and rt.device_type != "cuda":
            raise UserError(
                "runtime.offload moves the shards from a GPU to CPU memory; on "
                f"{rt.device_type} there is nothing to move: leave it false"
            )
        return FullyShardedParallel(rt, offload)
    return DataParallel(rt) if rt.distributed else SingleProcess(rt)
