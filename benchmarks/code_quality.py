"""The share of sampled functions that parse as Python, for trained runs and an untrained model.

    .venv/bin/python benchmarks/code_quality.py --runs out/tiny out/stdlib_code
    .venv/bin/python benchmarks/code_quality.py --runs out/tiny out/stdlib_code --n 200 \\
        --threads 1 --json-out out/code_quality.json

Each run (its `best.pt`) continues ``def `` `--n` times through the one engine, batched, at
temperature 0.8; each sample is cut to its function and parsed, and its signature line(s)
parsed too (`llm_tiny.eval.syntax`, the rule in docs/code_model.md). The reference comes first, in the same run: `untrained`, a model
of the last run's config and tokenizer with freshly initialised weights (seed `--seed`).
Prints a table, the first parsing function of each run, then one JSON line (also written to
`--json-out`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from llm_tiny.errors import ArgumentParser, UserError, run_cli


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="code_quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN",
                   help="run directories (or .pt files) to score")  # fmt: skip
    p.add_argument("--n", type=int, default=200, help="samples per model")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per sample, at most")
    p.add_argument("--seed", type=int, default=0, help="sample i draws from seed + i")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps | auto")
    p.add_argument("--json-out", "--json", dest="json", type=Path, default=None,
                   help="also write the JSON result here")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: bench(args), "code_quality.py")


def untrained_like(model: torch.nn.Module, cfg, seed: int) -> torch.nn.Module:
    """A model of `cfg.model` with freshly initialised weights, on `model`'s device."""
    from llm_tiny.model import TinyGPT

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    return TinyGPT(cfg.model).to(device).eval()


def score(name: str, model, tokenizer, cfg, args) -> dict:
    from llm_tiny.eval.syntax import parse_share, sample_functions
    from llm_tiny.infer.prompt import eot_ids

    start = time.perf_counter()
    samples = sample_functions(
        model, tokenizer, args.n, stop_tokens=tuple(eot_ids(tokenizer, cfg)),
        max_new_tokens=args.max_new_tokens, seed=args.seed,
    )  # fmt: skip
    counts = parse_share(samples)
    example = next((s.function for s in samples if s.parses), None)
    return {"run": name, **counts, "seconds": time.perf_counter() - start, "example": example}


def bench(args) -> int:
    from llm_tiny.runtime import resolve_device
    from llm_tiny.train.checkpoint import load_model

    if args.n < 1 or args.max_new_tokens < 1:
        raise UserError("--n and --max-new-tokens must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    loaded = [(str(r), *load_model(r, device)[:3]) for r in args.runs]
    _, last_model, last_tok, last_cfg = loaded[-1]
    load_before = os.getloadavg()[0]
    rows = [score("untrained", untrained_like(last_model, last_cfg, args.seed), last_tok,
                  last_cfg, args)]  # fmt: skip
    rows += [score(name, model, tok, cfg, args) for name, model, tok, cfg in loaded]
    print(f"{'model':<24} {'samples':>7} {'finished':>8} {'parsed':>6} {'share':>6} "
          f"{'signatures':>10} {'share':>6} {'s':>6}")  # fmt: skip
    for r in rows:
        print(f"{r['run']:<24} {r['samples']:>7} {r['finished']:>8} {r['parsed']:>6} "
              f"{r['parse_share']:>6.1%} {r['signatures']:>10} {r['signature_share']:>6.1%} "
              f"{r['seconds']:>6.1f}")  # fmt: skip
    for r in rows:
        if r["example"]:
            print(f"\n--- a function of {r['run']} that parses:\n{r['example'].rstrip()}")
    result = {
        "benchmark": "code_quality",
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "machine": platform.machine(),
        "load_avg": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }
    line = json.dumps(result)
    print("\n" + line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
