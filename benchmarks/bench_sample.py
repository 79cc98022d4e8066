"""Generation speed with and without the KV cache, and training throughput of sdpa vs manual.

    .venv/bin/python benchmarks/bench_sample.py               # the 6L/6H/384, block 256 model
    .venv/bin/python benchmarks/bench_sample.py --new-tokens 100 --json-out out/bench_sample.json

Both generation paths decode greedily from the same one-token prompt (the first byte of
`--input`, default `data/tiny.txt`) with the same untrained (randomly initialised) model, so they
must produce the same tokens; the script checks that and exits 1 if they differ. The training
steps read windows of the same text's bytes.
Speed does not depend on the weights. Variants are timed in the same run and compared as
ratios, because a shared machine makes absolute numbers noisy. Prints a table, then one JSON
line (also written to --json if given).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from llm_tiny.config import ModelConfig
from llm_tiny.errors import ArgumentParser, UserError, run_cli
from llm_tiny.infer.sampling import generate
from llm_tiny.model import TinyGPT

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench_sample.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, default=ROOT / "data" / "tiny.txt",
                   help="text whose bytes give the prompt and the training batches")  # fmt: skip
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=512, help="the tiny BPE vocabulary")
    p.add_argument("--new-tokens", type=int, default=500, help="tokens generated per path")
    p.add_argument("--train-batch", type=int, default=4, help="sequences per fwd+bwd step")
    p.add_argument("--train-iters", type=int, default=3, help="timed fwd+bwd steps per variant")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps | auto")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json-out", "--json", dest="json", type=Path, default=None,
                   help="also write the JSON result here")  # fmt: skip
    return p


def read_bytes(path: Path, need: int) -> torch.Tensor:
    """The bytes of `path` as token ids (long), at least `need` of them, or a UserError."""
    if not path.is_file():
        raise UserError(f"--input {path}: no such file")
    data = path.read_bytes()
    if len(data) < need:
        raise UserError(f"--input {path}: {len(data)} bytes; the benchmark needs {need}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def check_args(args) -> None:
    """One line for each impossible flag, before any work."""
    for flag in ("n_layer", "n_head", "n_embd", "block_size", "new_tokens", "train_batch",
                 "train_iters"):  # fmt: skip
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.vocab_size < 256:
        raise UserError(f"--vocab-size must be >= 256 (the prompt is bytes), got {args.vocab_size}")
    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} is not divisible by --n-head {args.n_head}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(model: TinyGPT, prompt: torch.Tensor, n: int, use_cache: bool):
    generate(model, prompt, min(n, 8), temperature=0, use_cache=use_cache)  # warm-up
    sync(prompt.device)
    t0 = time.perf_counter()
    out = generate(model, prompt, n, temperature=0, use_cache=use_cache)
    sync(prompt.device)
    return out, time.perf_counter() - t0


def time_train_step(cfg: ModelConfig, args, device: torch.device, text: torch.Tensor) -> float:
    """Forward + backward tokens per second of one attention implementation."""
    torch.manual_seed(args.seed)
    model = TinyGPT(cfg).to(device).train()
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    T = cfg.block_size
    starts = torch.randint(len(text) - T, (args.train_batch,), generator=gen).tolist()
    xy = torch.stack([text[s : s + T + 1] for s in starts]).to(device)  # (B, T + 1)
    x, y = xy[:, :-1], xy[:, 1:]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()

    step()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.train_iters):
        step()
    sync(device)
    return args.train_iters * x.numel() / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: bench(args), "bench_sample.py")


def bench(args) -> int:
    """Time both generation paths and both attention implementations; print and return."""
    from llm_tiny.runtime import resolve_device

    check_args(args)
    device = resolve_device(args.device)
    text = read_bytes(args.input, args.block_size + 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig(
        vocab_size=args.vocab_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
    )
    torch.manual_seed(args.seed)
    model = TinyGPT(cfg).to(device).eval()
    prompt = text[:1].view(1, 1).to(device)

    # The cached run goes before and after the long full one, so that a change in the load of
    # a shared machine during the run affects both sides of the ratio alike.
    load_before = os.getloadavg()[0]
    cached, t_before = time_generation(model, prompt, args.new_tokens, use_cache=True)
    full, t_full = time_generation(model, prompt, args.new_tokens, use_cache=False)
    cached_again, t_after = time_generation(model, prompt, args.new_tokens, use_cache=True)
    t_cached = (t_before + t_after) / 2
    same = torch.equal(cached, full) and torch.equal(cached, cached_again)
    n_new = cached.size(1) - 1
    tps_cached, tps_full = n_new / t_cached, n_new / t_full

    train_tps = {
        impl: time_train_step(
            ModelConfig(**{**cfg.__dict__, "attn_impl": impl}), args, device, text
        )
        for impl in ("sdpa", "manual")
    }

    result = {
        "bench": "sample",
        "model": f"{cfg.n_layer}L/{cfg.n_head}H/{cfg.n_embd}, block {cfg.block_size}, "
        f"vocab {cfg.vocab_size}",
        "params": model.num_params(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "new_tokens": n_new,
        "kv_cache_tokens_per_s": round(tps_cached, 1),
        "full_recompute_tokens_per_s": round(tps_full, 1),
        "kv_cache_speedup": round(tps_cached / tps_full, 2),
        "same_tokens": same,
        "train_batch": args.train_batch,
        "train_sdpa_tokens_per_s": round(train_tps["sdpa"], 1),
        "train_manual_tokens_per_s": round(train_tps["manual"], 1),
        "train_sdpa_over_manual": round(train_tps["sdpa"] / train_tps["manual"], 2),
    }
    print(f"model {result['model']}, {result['params']:,} params, {result['threads']} threads")
    print(f"{'variant':<28}{'tokens/s':>12}")
    print(f"{'generate, KV cache':<28}{tps_cached:>12.1f}")
    print(f"{'generate, full recompute':<28}{tps_full:>12.1f}")
    print(f"{'train fwd+bwd, sdpa':<28}{train_tps['sdpa']:>12.1f}")
    print(f"{'train fwd+bwd, manual':<28}{train_tps['manual']:>12.1f}")
    print(f"KV cache speed-up {result['kv_cache_speedup']}x, same tokens: {same}")
    line = json.dumps(result)
    print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n", encoding="utf-8")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
