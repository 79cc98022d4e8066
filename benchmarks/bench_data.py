"""Data preparation throughput and memory: the encoder alone against `prepare_data` with 1 and
with N workers, on the same JSONL corpus and tokenizer, in one run.

    .venv/bin/python benchmarks/bench_data.py                      # 100 MB of Python source
    .venv/bin/python benchmarks/bench_data.py --size-mb 20 --workers 1 2 --json-out out/bench_data.json

The corpus is the Python standard library's own `.py` files as JSONL documents (one file per
line), repeated until `--size-mb` (written once under `--work-dir`, not in the clone). The
tokenizer (`--vocab-size`, default 8,192) is trained once on its first `--tokenizer-mb`. Each
variant runs in a fresh subprocess, so its peak RSS is its own:

- `encode`: the tokenizer's single-process `encode_ordinary` over the documents' texts, already
  in memory (no reading, no writing): the reference throughput;
- `prepare wN`: `llm_tiny.data.prepare_data` with `data.workers = N`: reading the JSONL,
  tokenizing, writing the shards.

Throughput is MB of text per second of wall time. Prints a table, then one JSON line per
variant (also written to `--json-out`).
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from llm_tiny.errors import ArgumentParser, UserError, run_cli


def build_corpus(path: Path, size_mb: float) -> int:
    """JSONL of the standard library's sources, repeated to `size_mb`; returns its text bytes."""
    sources = sorted(Path(sysconfig.get_path("stdlib")).rglob("*.py"))
    texts = []
    for p in sources:
        try:
            texts.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    target, written, rep = size_mb * 2**20, 0, 0
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            for t in texts:
                text = f"# copy {rep}\n{t}"
                f.write(json.dumps({"text": text}) + "\n")
                written += len(text.encode("utf-8"))
                if written >= target:
                    break
            rep += 1
    return written


def child(job: dict) -> dict:
    """Run one variant in this process and measure it."""
    from llm_tiny.config import DataConfig
    from llm_tiny.data import prepare_data
    from tok.bpe import Tokenizer

    corpus = Path(job["corpus"])
    start = time.perf_counter()
    if job["variant"] == "encode":
        tok = Tokenizer.load(job["tokenizer"])
        texts = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
        start = time.perf_counter()
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        tokens = sum(len(tok.encode_ordinary(t)) for t in texts)
    else:
        cfg = DataConfig(
            input=(str(corpus),),
            tokenizer=job["tokenizer"],
            vocab_size=job["vocab_size"],
            data_dir=job["data_dir"],
            workers=job["workers"],
        )
        data = prepare_data(cfg, log=lambda _: None)
        n_bytes = sum(s["bytes"] for s in data.meta["splits"].values())
        tokens = sum(s["tokens"] for s in data.meta["splits"].values())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"bytes": n_bytes, "tokens": tokens, "seconds": seconds, "peak_rss_mib": peak}


def run_variant(job: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{job['variant']}: failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(child(json.loads(argv[1]))))
        return 0
    p = ArgumentParser(prog="bench_data.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=float, default=100.0, help="corpus size in MB of text")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--tokenizer-mb", type=float, default=8.0, help="text to train it on")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/llm_tiny_bench_data"))
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)

    def run() -> int:
        from tok.bpe import Tokenizer

        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / f"stdlib_{args.size_mb:g}mb.jsonl"
        if not corpus.exists():
            print(f"writing {corpus} ...", file=sys.stderr)
            build_corpus(corpus, args.size_mb)
        tok_path = work / f"tok_{args.vocab_size}.json"
        if not tok_path.exists():
            sample = work / "sample.jsonl"
            build_corpus(sample, args.tokenizer_mb)
            texts = [json.loads(line)["text"] for line in sample.open(encoding="utf-8")]
            print(f"training a {args.vocab_size}-token tokenizer ...", file=sys.stderr)
            Tokenizer.train(texts, args.vocab_size, special_tokens=("<|endoftext|>",)).save(
                tok_path
            )
        base = {"corpus": str(corpus), "tokenizer": str(tok_path), "vocab_size": args.vocab_size}
        jobs = [{**base, "variant": "encode"}] + [
            {**base, "variant": f"prepare w{w}", "workers": w, "data_dir": str(work / f"data_w{w}")}
            for w in args.workers
        ]
        results = []
        for job in jobs:
            if "data_dir" in job:  # an earlier run's shards would make `prepare` a no-op
                shutil.rmtree(job["data_dir"], ignore_errors=True)
            r = {**job, **run_variant(job)}
            r["mb_per_s"] = r["bytes"] / 2**20 / r["seconds"]
            results.append(r)
        ref = results[0]["mb_per_s"]
        print(f"{'variant':<12} {'MB/s':>7} {'x encode':>9} {'seconds':>8} {'peak RSS MiB':>13}")
        for r in results:
            r["vs_encode"] = r["mb_per_s"] / ref
            print(
                f"{r['variant']:<12} {r['mb_per_s']:>7.2f} {r['vs_encode']:>9.2f} "
                f"{r['seconds']:>8.1f} {r['peak_rss_mib']:>13.0f}"
            )
        lines = [
            json.dumps({"bench": "data", "machine": platform.processor(), **r}) for r in results
        ]
        print("\n".join(lines))
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text("\n".join(lines) + "\n")
        return 0

    return run_cli(run, "bench_data.py")


if __name__ == "__main__":
    sys.exit(main())
