"""The optimizer step alone: AdamW against Muon with its orthogonalisation in float32 and in
bfloat16 (torch's own), on a config's model.

    python benchmarks/bench_optim.py --config configs/speedrun_cpu.yaml --threads 1

Every parameter gets a random gradient once; then each optimizer steps `--iters` times,
round-robin (one step of each in turn, so that a busy spell on a shared machine hits all of
them), and the fastest and the median step are reported. The training step around it (forward,
backward) is what `bench_train.py` measures. Output: a table, then one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from llm_tiny.errors import ArgumentParser, UserError, run_cli

VARIANTS = {
    "adamw": {"name": "adamw"},
    "muon float32": {"name": "muon", "muon_dtype": "float32"},
    "muon bfloat16": {"name": "muon", "muon_dtype": "bfloat16"},
}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="bench_optim.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/speedrun_cpu.yaml", help="the model")
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20, help="steps of each optimizer")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)

    def run() -> int:
        if not Path(args.config).is_file():
            raise UserError(f"{args.config}: config file not found")
        if args.iters < 1:
            raise UserError(f"--iters must be >= 1, got {args.iters}")
        import torch

        from llm_tiny.config import load_config
        from llm_tiny.model import TinyGPT
        from llm_tiny.train.optim import build_optimizer

        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = load_config(args.config)
        torch.manual_seed(0)
        model = TinyGPT(dataclasses.replace(cfg.model, vocab_size=args.vocab_size))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opts = {
            name: build_optimizer(model, dataclasses.replace(cfg.optim, **changes), "cpu")
            for name, changes in VARIANTS.items()
        }
        times: dict[str, list[float]] = {name: [] for name in opts}
        for _ in range(args.iters):
            for name, opt in opts.items():
                t0 = time.perf_counter()
                opt.step()
                times[name].append(time.perf_counter() - t0)
        result = {
            "bench": "optim",
            "config": args.config,
            "threads": torch.get_num_threads(),
            "iters": args.iters,
            **{name: {"min_ms": 1e3 * min(t), "median_ms": 1e3 * statistics.median(t)}
               for name, t in times.items()},
        }  # fmt: skip
        print(f"{'optimizer':<16} {'min ms':>8} {'median ms':>10}")
        for name in opts:
            r = result[name]
            print(f"{name:<16} {r['min_ms']:8.2f} {r['median_ms']:10.2f}")
        print(json.dumps(result))
        return 0

    return run_cli(run, "bench_optim.py")


if __name__ == "__main__":
    sys.exit(main())
