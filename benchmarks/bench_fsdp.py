"""FSDP against DDP at N processes: what each rank holds for the parameters, gradients and
optimizer state, and the time of a training step.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_fsdp.py --out out/bench_fsdp.json
    PYTHONPATH=. python benchmarks/bench_fsdp.py --device cuda --nproc 2 --out out/fsdp.json

Each variant (`ddp`, the reference, then `fsdp`) is one `torchrun --standalone` launch of this
script as a worker: a TinyGPT of the given shape, wrapped by `llm_tiny.distributed`'s
`DataParallel` or `FullyShardedParallel` exactly as training wraps it, AdamW, and `--warmup`
then `--steps` optimizer steps (forward, backward, gradient clipping, update) on random tokens.
Every rank counts the bytes of the tensors it holds itself, right after the update, while the
gradients are still there: parameters (an FSDP rank: its shards), gradients, and the optimizer
state. DDP's gradient buckets (a second copy of the gradients for the all-reduce) and the
activations are not counted; on a GPU, `peak_mib` is `torch.cuda.max_memory_allocated`, which
counts everything. Step time: the median over the timed steps. The JSON holds both variants,
per rank, and the FSDP / DDP ratios; the load of the machine is recorded beside the timings.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llm_tiny.errors import ArgumentParser, UserError, run_cli  # noqa: E402

VARIANTS = ("ddp", "fsdp")  # the reference first
# About 5M parameters: large enough that the shards, not the rounding of small tensors, show.
SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 64, "vocab_size": 8192}


def tensor_bytes(t: Any) -> int:
    """The bytes this rank holds for `t`: a DTensor's local shard, or the whole tensor."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def held(model: Any, optimizer: Any) -> dict[str, int]:
    """Bytes of this rank's parameters, gradients and optimizer state."""
    import torch

    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "params": sum(tensor_bytes(p) for p in params),
        "grads": sum(tensor_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(tensor_bytes(v) for v in state),
    }


def worker(variant: str, args: Any) -> None:
    """One rank of one variant; rank 0 writes every rank's figures to `args.result`."""
    import torch
    import torch.distributed as dist

    from llm_tiny.config import ModelConfig, OptimConfig, TrainConfig
    from llm_tiny.distributed import parallel_for
    from llm_tiny.model import TinyGPT
    from llm_tiny.runtime import setup_runtime, shutdown
    from llm_tiny.train.optim import build_optimizer, clip_grad_norm

    rt = setup_runtime(TrainConfig(device=args.device, dtype="auto"))
    par = parallel_for(rt, variant)
    torch.manual_seed(0)
    shape = {**SHAPE, "n_layer": args.layers, "n_embd": args.width}
    model = TinyGPT(ModelConfig(**shape)).to(rt.device)
    par.prepare(model)
    optimizer = build_optimizer(model, OptimConfig(), rt.device_type)
    runner = par.wrap(model)
    g = torch.Generator().manual_seed(rt.rank)
    times, memory = [], {}
    for i in range(args.warmup + args.steps):
        x = torch.randint(0, shape["vocab_size"], (args.batch, shape["block_size"]), generator=g)
        x = x.to(rt.device)
        if rt.device_type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with par.sync(True), rt.autocast():
            _, loss = runner(x, x)
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        memory = held(model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        if rt.device_type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    mine = {**memory, "total": sum(memory.values()), "step_ms": 1e3 * statistics.median(times)}
    if rt.device_type == "cuda":
        mine["peak_mib"] = torch.cuda.max_memory_allocated(rt.device) / 2**20
    ranks: list[Any] = [None] * rt.world_size
    dist.all_gather_object(ranks, mine)
    if rt.is_main:
        n_params = sum(p.numel() for p in model.parameters())  # global sizes, DTensors too
        Path(args.result).write_text(json.dumps({"params": n_params, "ranks": ranks}))
    shutdown(rt)


def launch(variant: str, args: Any, result: Path) -> dict[str, Any]:
    """One variant as a `torchrun` launch of this script; its rank 0's JSON."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={args.nproc}", str(HERE), "--worker", variant, "--result", str(result),
        "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--batch", str(args.batch), "--layers", str(args.layers), "--width", str(args.width),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        raise UserError(f"{variant}: timed out after {args.timeout} s") from None
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
        raise UserError(f"{variant}: torchrun exited {proc.returncode}: {' / '.join(tail)}")
    return json.loads(result.read_text())


def compare(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """FSDP / DDP: the largest rank's bytes, each part and in total, and the step time."""
    ratio = {}
    for key in ("params", "grads", "optimizer", "total", "step_ms"):
        ddp, fsdp = (max(r[key] for r in runs[v]["ranks"]) for v in VARIANTS)
        ratio[key] = fsdp / ddp if ddp else float("nan")
    return ratio


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bench_fsdp.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the JSON here too")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL)")
    p.add_argument("--nproc", type=int, default=2, help="processes (GPUs with cuda)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=4, help="sequences per rank per step")
    p.add_argument("--layers", type=int, default=SHAPE["n_layer"])
    p.add_argument("--width", type=int, default=SHAPE["n_embd"], help="n_embd")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per variant")
    p.add_argument("--worker", choices=VARIANTS, help=argparse_hidden())
    p.add_argument("--result", help=argparse_hidden())
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        worker(args.worker, args)
        return 0

    def run() -> int:
        if args.nproc < 2:
            raise UserError(
                f"--nproc must be >= 2 (sharding over one process shows nothing), got {args.nproc}"
            )
        if args.steps < 1 or args.warmup < 0:
            raise UserError("--steps must be >= 1 and --warmup >= 0")
        with tempfile.TemporaryDirectory(prefix="bench_fsdp_") as tmp:
            runs = {v: launch(v, args, Path(tmp) / f"{v}.json") for v in VARIANTS}
        report = {
            "command": "python benchmarks/bench_fsdp.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "device": args.device,
            "processes": args.nproc,
            "shape": {**SHAPE, "n_layer": args.layers, "n_embd": args.width, "batch": args.batch},
            "load_avg_1m": os.getloadavg()[0],
            "runs": runs,
            "fsdp_over_ddp": compare(runs),
        }
        for v in VARIANTS:
            top = max(runs[v]["ranks"], key=lambda r: r["total"])
            print(
                f"{v:>4}: {top['params'] / 2**20:7.1f} MiB params + {top['grads'] / 2**20:7.1f} "
                f"grads + {top['optimizer'] / 2**20:7.1f} optimizer = {top['total'] / 2**20:7.1f} "
                f"MiB a rank | {top['step_ms']:.1f} ms a step"
            )
        ratio = report["fsdp_over_ddp"]
        print(f"fsdp / ddp: memory {ratio['total']:.3f}, step time {ratio['step_ms']:.2f}")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(json.dumps(report))
        return 0

    return run_cli(run, "bench_fsdp.py")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
