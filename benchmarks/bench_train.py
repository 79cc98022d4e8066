"""Training throughput: tokens/s, ms per iteration, peak memory and (on GPU) MFU.

    python benchmarks/bench_train.py                          # tiny and small, every variant
    python benchmarks/bench_train.py --device cuda --sizes small,medium --variants sdpa,bf16,compile
    python benchmarks/bench_train.py --n-layer 8 --n-embd 512 --block-size 256 --batch-size 8

One training iteration is what `llm_tiny train` does per step: a batch from the text, forward
(under autocast when the variant asks for it), backward, gradient clipping, an AdamW step over
the model's own parameter groups. The text is encoded byte by byte (vocabulary 256), so the
benchmark needs no tokenizer; the architecture (norm, MLP, positions, ...) comes from
`--config`, the sizes from `--sizes` or the size flags.

Variants, compared side by side at each size (the speedup column is relative to `sdpa`):

- `sdpa`:    float32, eager, `F.scaled_dot_product_attention` (the default)
- `manual`:  float32, eager, attention written out (`model.attn_impl=manual`)
- `compile`: `sdpa` under `torch.compile` (the first call compiles; warm-up absorbs it)
- `bf16`:    `sdpa` with the forward pass under bfloat16 autocast

Variants combine with `+`: `bf16+compile` is the compiled model under bfloat16 autocast,
`bf16+manual` the written-out attention under it (benchmarks/gpu_check.py measures those).

`--nanogpt DIR` adds the variant `nanogpt`: the same loop over nanoGPT's own `GPT` (imported
from the checkout's `model.py`) of the same shape and vocabulary, with nanoGPT's own
`configure_optimizers`, in the same run, so that the speedup column compares the two
frameworks on the identical model:

    python benchmarks/bench_train.py --nanogpt ~/nanoGPT --config configs/nanogpt_cpu.yaml \
        --n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --batch-size 12 \
        --variants sdpa,nanogpt --repeats 3

Our variants use the config's optimizer section (`build_optimizer`: `optim.name`,
`optim.fused`, betas); without an optim section, AdamW with betas (0.9, 0.95).

Each variant runs in a fresh subprocess so that its peak memory (peak RSS on CPU,
`torch.cuda.max_memory_allocated` on CUDA) is its own, and a variant that crashes or hangs
(torch.compile on a CPU without a compiler) is reported as failed while the others go on.
ms/iteration is the median over the timed iterations; with `--repeats N` every variant runs N
times, round-robin, and the fastest run is kept, which is what makes numbers from a machine
shared with other work usable. Output: a table, then one JSON line per result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llm_tiny.errors import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]

# (n_layer, n_head, n_embd, block_size, batch_size). tiny is configs/tiny.yaml; small is
# nanoGPT's Shakespeare-char model at a CPU-sized batch; medium is GPT-2 small (124M), a GPU size.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (4, 4, 128, 128, 16),
    "small": (6, 6, 384, 256, 8),
    "medium": (12, 12, 768, 1024, 8),
}
VARIANTS = ("sdpa", "manual", "compile", "bf16")
NANOGPT = "nanogpt"  # only with --nanogpt DIR: nanoGPT's model and optimizer (see above)
BASELINE = "sdpa"


def variant_features(variant: str) -> set[str]:
    """The parts of a variant name: `"bf16+compile"` -> {"bf16", "compile"}; `sdpa` is the
    plain baseline and adds nothing. A UserError for an unknown part or an empty name."""
    parts = [p.strip() for p in variant.split("+")]
    for part in parts:
        if part not in (*VARIANTS, NANOGPT):
            raise UserError(f"unknown variant {part!r}; choose from {', '.join(VARIANTS)}")
    return set(parts) - {BASELINE}


# ----------------------------------------------------------------------------- one measurement
# Runs in the child process: imports torch, builds the model, trains, prints one JSON line.


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Train `job["iters"]` timed iterations after `job["warmup"]` untimed ones; return figures."""
    import numpy as np
    import torch

    from llm_tiny.config import ModelConfig, OptimConfig, load_config
    from llm_tiny.model import TinyGPT
    from llm_tiny.runtime import resolve_device
    from llm_tiny.train.optim import build_optimizer

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    device = resolve_device(job["device"])
    loaded = load_config(job["config"]) if job["config"] else None
    base = loaded.model if loaded else ModelConfig()
    optim = loaded.optim if loaded else OptimConfig(beta2=0.95)
    L, H, C, T, B = job["shape"]
    features = variant_features(job["variant"])
    cfg = dataclasses.replace(
        base,
        # Bytes are ids < 256; a larger vocabulary (GPT-2's 50,304) only widens the embedding
        # and the LM head, which is what a run with that tokenizer computes.
        vocab_size=job.get("vocab_size", 256),
        n_layer=L,
        n_head=H,
        n_kv_head=None,
        n_embd=C,
        block_size=T,
        dropout=0.0,
        attn_impl="manual" if "manual" in features else "sdpa",
    )
    model = TinyGPT(cfg).to(device)
    raw_model = model  # also the accounting (parameters, FLOPs) of the nanogpt variant
    optimizer = build_optimizer(raw_model, optim, device.type)
    if NANOGPT in features:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import nanogpt_ref

        module = nanogpt_ref.nanogpt_module(Path(job["nanogpt"]))
        shape = {"n_layer": L, "n_head": H, "n_embd": C, "block_size": T, "bias": cfg.bias}
        with contextlib.redirect_stdout(sys.stderr):  # it prints its parameter count
            model = module.GPT(
                module.GPTConfig(**shape, vocab_size=cfg.vocab_size, dropout=0.0)
            ).to(device)
            optimizer = model.configure_optimizers(
                optim.weight_decay, optim.lr, (optim.beta1, optim.beta2), device.type
            )
    if "compile" in features:
        # `compile_backend: eager` traces the graph without generating code: a quick check of
        # the compile path on a CPU (benchmarks/gpu_check.py --dry-run).
        model = torch.compile(model, backend=job.get("compile_backend", "inductor"))
    autocast_dtype = torch.bfloat16 if "bf16" in features else None

    data = np.frombuffer(Path(job["input"]).read_bytes(), dtype=np.uint8)
    if len(data) <= T + 1:
        raise UserError(f"{job['input']}: {len(data)} bytes is too short for block size {T}")
    rng = np.random.default_rng(0)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        starts = rng.integers(0, len(data) - T - 1, size=B)
        xy = np.stack([data[s : s + T + 1] for s in starts]).astype(np.int64)  # (B, T + 1)
        xy = torch.from_numpy(xy).to(device, non_blocking=True)
        # Contiguous, as nanoGPT's get_batch makes them (its loss calls `targets.view(-1)`).
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()

    def step() -> float:
        x, y = batch()
        if autocast_dtype is None:
            _, loss = model(x, y)
        else:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(job["warmup"]):
        loss = step()
    sync()
    warmup_s = time.perf_counter() - t0
    # Each iteration timed on its own (a training loop synchronises once per step anyway) and
    # the median kept: a few iterations slowed by another process on the machine do not count.
    times = []
    for _ in range(job["iters"]):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    final_loss = float(loss)
    median = sorted(times)[len(times) // 2]

    tokens_per_s = B * T / median
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        memory = "cuda_max_allocated"
        device_name = torch.cuda.get_device_name(device)
    else:
        import resource

        # ru_maxrss is KiB on Linux, bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
        memory = "peak_rss"
        device_name = platform.processor() or platform.machine()
    from llm_tiny.runtime import mfu as model_flops_utilisation

    mfu = model_flops_utilisation(
        raw_model.flops_per_token(), tokens_per_s, device_name, job["peak_flops"]
    )
    return {
        "status": "ok",
        "device": device.type,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "n_params": raw_model.num_params(non_embedding=False),
        "tokens_per_s": tokens_per_s,
        "ms_per_iter": 1000 * median,
        "ms_per_iter_min": 1000 * min(times),
        "warmup_s": warmup_s,
        "tflops": raw_model.flops_per_token() * tokens_per_s / 1e12,
        "mfu": mfu,
        "peak_mem_mib": peak_mib,
        "memory": memory,
        "final_loss": final_loss,
    }


def child_main(job_json: str) -> int:
    """Entry point of the measuring subprocess: one JSON line on stdout, whatever happens."""
    job = json.loads(job_json)
    try:
        result = measure(job)
    except Exception as e:  # a variant that fails (compile on CPU, OOM) is a result, not a crash
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        result = {"status": f"failed: {reason}"}
    print(json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- the driver


def run_job(job: dict[str, Any], timeout: float, script: Path | None = None) -> dict[str, Any]:
    """Measure one (size, variant) in a fresh Python process: `script --child JOB_JSON`, which
    prints one JSON line (this file's `child_main`, or another script's of the same kind)."""
    script = script or Path(__file__).resolve()
    cmd = [sys.executable, str(script), "--child", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    why = lines[-1] if lines else f"exit status {proc.returncode}"
    return {"status": f"failed: {why[:300]}"}


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(results: list[dict[str, Any]]) -> str:
    header = ["size", "variant", "params", "tok/s", "speedup", "ms/iter", "peak MiB", "TFLOP/s"]
    header += ["MFU", "status"]
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        base = next(
            (b for b in results if b["size"] == r["size"] and b["variant"] == BASELINE), None
        )
        speedup = (
            r["tokens_per_s"] / base["tokens_per_s"]
            if ok and base is not None and base["status"] == "ok"
            else None
        )
        rows.append(
            [
                r["size"],
                r["variant"],
                _fmt(r.get("n_params", 0) / 1e6, ".2f") + "M" if ok else "-",
                _fmt(r.get("tokens_per_s"), ",.0f") if ok else "-",
                _fmt(speedup, ".2f") + "x" if speedup is not None else "-",
                _fmt(r.get("ms_per_iter"), ".1f") if ok else "-",
                _fmt(r.get("peak_mem_mib"), ",.0f") if ok else "-",
                _fmt(r.get("tflops"), ".3f") if ok else "-",
                _fmt(100 * r["mfu"], ".1f") + "%" if ok and r.get("mfu") is not None else "-",
                r["status"],
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header[:-1])]
    lines = []
    for row in [header, *rows]:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def parse_sizes(args: Any) -> dict[str, tuple[int, int, int, int, int]]:
    """The sizes to measure: `--sizes` presets, or one custom size from the size flags."""
    custom = [args.n_layer, args.n_head, args.n_embd, args.block_size, args.batch_size]
    if any(v is not None for v in custom):
        ref = SIZES["tiny"]
        shape = tuple(v if v is not None else d for v, d in zip(custom, ref))
        if any(v < 1 for v in shape):
            raise UserError("size flags must be >= 1")
        L, H, C, T, B = shape
        if C % H:
            raise UserError(f"--n-embd ({C}) must be divisible by --n-head ({H})")
        return {f"L{L}-H{H}-C{C}-T{T}-B{B}": shape}
    sizes = {}
    for name in args.sizes.split(","):
        name = name.strip()
        if name not in SIZES:
            raise UserError(f"unknown size {name!r}; choose from {', '.join(SIZES)}")
        sizes[name] = SIZES[name]
    return sizes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    parser = ArgumentParser(
        prog="bench_train.py",
        description="Training tokens/s, ms/iteration, peak memory and MFU, variants side by side.",
    )
    parser.add_argument("--input", default="data/tiny.txt", help="text file (byte-encoded)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--config", default="configs/tiny.yaml", help="architecture (model.*)")
    parser.add_argument("--sizes", default="tiny,small", help=f"presets: {', '.join(SIZES)}")
    for flag in ("n-layer", "n-head", "n-embd", "block-size", "batch-size"):
        parser.add_argument(f"--{flag}", type=int, help="custom size (replaces --sizes)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=", ".join(VARIANTS) + "; combine with +"
    )
    parser.add_argument("--vocab-size", type=int, default=256, help="e.g. 50304 for GPT-2")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per variant, best kept (noisy machines)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--peak-flops", type=float, default=None, help="for MFU off the GPU list")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per variant")
    parser.add_argument("--json-out", default=None, help="also write the JSON lines here")
    parser.add_argument(
        "--nanogpt", metavar="DIR", help="a nanoGPT checkout: adds the variant nanogpt"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        if args.iters < 1 or args.warmup < 0 or args.repeats < 1:
            raise UserError("--iters and --repeats must be >= 1, --warmup >= 0")
        if not Path(args.input).is_file():
            raise UserError(f"{args.input}: input text file not found")
        if args.config and not Path(args.config).is_file():
            raise UserError(f"{args.config}: config file not found")
        from llm_tiny.runtime import resolve_device

        resolve_device(args.device)  # a device that is not here: one line, before any variant
        sizes = parse_sizes(args)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        for v in variants:
            variant_features(v)
        if args.nanogpt:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import nanogpt_ref

            args.nanogpt = str(nanogpt_ref.check_checkout(args.nanogpt, for_training=False))
            if not any(NANOGPT in variant_features(v) for v in variants):
                variants.append(NANOGPT)
        elif any(NANOGPT in variant_features(v) for v in variants):
            raise UserError("the nanogpt variant needs --nanogpt DIR (a nanoGPT checkout)")
        if args.vocab_size < 256:
            raise UserError(
                f"--vocab-size must be >= 256 (the text is bytes), got {args.vocab_size}"
            )
        print(
            f"bench_train: median of {args.iters} timed iterations after {args.warmup} warm-up, "
            f"best of {args.repeats} repeat(s), device {args.device}, {os.cpu_count()} CPU cores; "
            "each run in a fresh subprocess so peak memory is per variant",
            flush=True,
        )
        # Repeats go round-robin over all (size, variant) pairs, so that a busy spell on a
        # shared machine hits one repeat of many variants rather than every repeat of one.
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):
            for size, shape in sizes.items():
                for variant in variants:
                    job = {
                        "shape": shape,
                        "variant": variant,
                        "device": args.device,
                        "config": args.config,
                        "input": args.input,
                        "iters": args.iters,
                        "warmup": args.warmup,
                        "threads": args.threads,
                        "peak_flops": args.peak_flops,
                        "vocab_size": args.vocab_size,
                        "nanogpt": args.nanogpt,
                    }
                    t0 = time.perf_counter()
                    result = run_job(job, args.timeout)
                    runs.setdefault((size, variant), []).append(result)
                    tag = f" repeat {repeat + 1}/{args.repeats}" if args.repeats > 1 else ""
                    print(
                        f"  {size:<8} {variant:<8} {result['status'][:60]:<12} "
                        f"({time.perf_counter() - t0:.0f} s){tag}",
                        flush=True,
                    )
        results = []
        for (size, variant), attempts in runs.items():
            L, H, C, T, B = sizes[size]
            ok = [r for r in attempts if r["status"] == "ok"]
            best = max(ok, key=lambda r: r["tokens_per_s"]) if ok else attempts[-1]
            results.append(
                {
                    "bench": "train",
                    "size": size,
                    "variant": variant,
                    "n_layer": L,
                    "n_head": H,
                    "n_embd": C,
                    "block_size": T,
                    "batch_size": B,
                    "vocab_size": args.vocab_size,
                    "iters": args.iters,
                    "warmup": args.warmup,
                    "repeats": args.repeats,
                    **best,
                    "tokens_per_s_all": [r.get("tokens_per_s") for r in attempts],
                }
            )
        lines = [json.dumps(r) for r in results]
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print()
        print(format_table(results))
        print("\n".join(lines))
        return 0

    return run_cli(run, "bench_train.py")


if __name__ == "__main__":
    sys.exit(main())
