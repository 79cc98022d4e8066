"""Where and how a run executes: device, precision, distributed rank, seeds and RNG states.

Everything here is resolved once at the start of a command and passed down as a `Runtime`;
nothing is read from the environment at import time.

- Device `auto` picks CUDA, then MPS, then CPU. Asking for a device that is not there is a
  `UserError`.
- Precision `auto` is bfloat16 autocast on a CUDA GPU that supports it, else float16 autocast
  with a `GradScaler` (Micikevicius et al. 2018, mixed precision training); float32 on CPU and
  MPS. bfloat16 autocast on CPU works but only when asked for explicitly.
- Distributed: `torchrun` sets `RANK`, `LOCAL_RANK` and `WORLD_SIZE`; `setup_runtime` then joins
  the process group (NCCL on CUDA, gloo on CPU) and gives each rank its own CUDA device.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from llm_tiny.config import TrainConfig
from llm_tiny.errors import UserError
from tok.errors import first_line

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """The resolved device, precision and process-group position of one process."""

    device: torch.device
    dtype: torch.dtype  # the autocast dtype; float32 means no autocast
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    @property
    def use_scaler(self) -> bool:
        """float16 needs loss scaling so that small gradients do not flush to zero."""
        return self.dtype == torch.float16

    @property
    def dtype_name(self) -> str:
        return next(k for k, v in DTYPES.items() if v == self.dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the forward pass, or a no-op in float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def main_first(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on rank 0, then on the other ranks (which find what rank 0 made, e.g. the
        prepared data, instead of making it at the same time)."""
        result = fn() if self.is_main else None
        self.barrier()
        return result if self.is_main else fn()

    def mfu_text(self, flops_per_token: float, tokens_per_s: float, peak: float | None) -> str:
        """The text ' | mfu X%' for a log line on a CUDA device of known peak, else ''."""
        if self.device_type != "cuda":
            return ""
        name = torch.cuda.get_device_name(self.device)
        u = mfu(flops_per_token, tokens_per_s / self.world_size, name, peak)
        return "" if u is None else f" | mfu {100 * u:.1f}%"


def resolve_device(name: str) -> torch.device:
    """`auto | cpu | cuda | cuda:N | mps` -> a torch.device that exists on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but CUDA is not available here")
        return torch.device(name)
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"device {name!r} asked for, but MPS is not available here")
        return torch.device("mps")
    raise UserError(f"unknown device {name!r}; expected auto, cpu, cuda or mps")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for `train.dtype` on `device`; see the module docstring for `auto`."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; expected float32, bfloat16, float16 or auto")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type != "cuda":
        raise UserError(
            f"dtype float16 needs a CUDA device (loss scaling), not {device.type}; "
            "use bfloat16 or float32"
        )
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("dtype bfloat16 is not supported by this GPU; use float16 or auto")
    return dtype


def distributed_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as set by torchrun, or (0, 0, 1) for a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, local, world


def setup_runtime(train: TrainConfig) -> Runtime:
    """Resolve device and dtype, set the thread count and join the process group if launched
    by torchrun."""
    if train.threads is not None:
        torch.set_num_threads(train.threads)
    rank, local_rank, world = distributed_env()
    device = resolve_device(train.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        elif device.type == "mps":
            raise UserError("distributed training on MPS is not supported; use cpu or cuda")
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
    dtype = resolve_dtype(train.dtype, device)
    if device.type == "cuda":
        # TF32 matmuls: ~3x faster float32 on Ampere+ at ~1e-3 relative precision.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device=device, dtype=dtype, rank=rank, local_rank=local_rank, world_size=world)


def shutdown(runtime: Runtime) -> None:
    """Leave the process group (if this process joined one)."""
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- RNG states
# Checkpoints are loaded with `weights_only=True`, so every state is stored as tensors, ints,
# strings, lists, tuples and dicts only (NumPy's state array becomes a list of ints).


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """The RNG states of this process: Python, NumPy, torch CPU and (if used) CUDA."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": [int(k) for k in np_state[1]],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of `capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            np.array(n["keys"], dtype=np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda":
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)
        else:
            warnings.warn("checkpoint holds no CUDA RNG state; CUDA RNG not restored", stacklevel=2)


def gather_rng(rt: Runtime) -> list[dict[str, Any]]:
    """Every rank's `capture_rng()`, in rank order (an all-gather: all ranks must call it)."""
    rng = capture_rng(rt.device)
    if not rt.distributed:
        return [rng]
    states: list[Any] = [None] * rt.world_size
    dist.all_gather_object(states, rng)
    return states


@contextlib.contextmanager
def preserved_rng(device: torch.device | None = None) -> Iterator[None]:
    """Run a block (evaluation, sampling) without disturbing the training RNG streams."""
    state = capture_rng(device)
    try:
        yield
    finally:
        restore_rng(state, device)


# ----------------------------------------------------------------------------- compile, signals


def try_compile(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], rt: Runtime, log):
    """`torch.compile(model)`, checked with one forward and backward pass on `batch`; the plain
    model (and a warning) if compilation fails. Gradients are cleared afterwards."""
    try:
        compiled = torch.compile(model)
        with preserved_rng(rt.device):
            with rt.autocast():
                _, loss = compiled(*batch)
            loss.backward()
    except Exception as e:
        log(f"warning: torch.compile failed, training without it: {first_line(e, 200)}")
        compiled = model
    model.zero_grad(set_to_none=True)
    return compiled


class StopSignal:
    """SIGINT / SIGTERM set a flag; the loop finishes the step, saves last.pt and returns.
    A second Ctrl-C aborts at once."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.signum: int | None = None
        self._log = log
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self._log(f"{signal.Signals(signum).name}: stopping after this step and saving last.pt")

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


# ----------------------------------------------------------------------------- hardware peaks and MFU

# Dense bf16 tensor-core peaks in FLOP/s (no sparsity), from the vendors' data sheets. Matched
# in order against the device name as a whole word, so "H100 PCIe" comes before "H100".
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("H20", 148e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX A6000", 155e12),
    ("4090", 165e12),
    ("3090", 71e12),
    ("V100", 125e12),  # no bf16 on Volta: its fp16 tensor-core peak
    ("T4", 65e12),  # likewise fp16
)


def peak_flops_for(device_name: str | None) -> float | None:
    """Peak FLOP/s of a device by name, e.g. "NVIDIA H100 80GB HBM3" -> 989e12; None if unknown."""
    if not device_name:
        return None
    for pattern, flops in PEAK_FLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(pattern)}(?![A-Za-z0-9])", device_name, re.I):
            return flops
    return None


def mfu(
    flops_per_token: float,
    tokens_per_second: float,
    device_name: str | None = None,
    peak_flops: float | None = None,
) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak.

    `flops_per_token` is `TinyGPT.flops_per_token()`. The peak is `peak_flops` if given, else
    looked up from `device_name` (e.g. `torch.cuda.get_device_name()`) in `PEAK_FLOPS`; None
    when neither is known.
    """
    peak = peak_flops if peak_flops is not None else peak_flops_for(device_name)
    if peak is None:
        return None
    return flops_per_token * tokens_per_second / peak
