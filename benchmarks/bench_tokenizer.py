"""Benchmark the tokenizer: training time and memory, encode throughput on both paths.

    python benchmarks/bench_tokenizer.py [--input ../shared/data/tinyshakespeare.txt]
                                         [--vocab-size 4096] [--repeats 5] [--json-out F]

Measures, on one text file:

- training a `--vocab-size` vocabulary, pre-tokenization included (best and median of
  `--repeats` runs); when the `tokenizers` package (Hugging Face, Rust) is installed, it is
  trained on the same file with the same split pattern in the same run and the ratio printed;
- the peak memory of training (Python allocations, traced in a separate untimed run);
- encode throughput in MB/s (bytes of UTF-8 text per second) for the pure-Python encoder with
  cold caches (a freshly loaded tokenizer) and warm caches (the same text again), and for the
  tiktoken fast path when tiktoken is installed; the ids of all paths are checked equal.

Every figure is the best of `--repeats` runs by wall clock; the "cpu" column gives the same
figure from process CPU time, which other jobs on a shared machine disturb less.

`--input` defaults to the reference corpus `../shared/data/tinyshakespeare.txt` when it is
beside the repository, else to the embedded `data/tiny.txt`. Prints a table, then one JSON
line per result (also written to `--json-out`). Timings on a shared machine are noisy (the load
average at the start is recorded): the best of several repeats is the figure to quote, with the
command line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llm_tiny.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from tok.bpe import Tokenizer  # noqa: E402
from tok.patterns import resolve_pattern  # noqa: E402

REFERENCE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
DEFAULT_INPUT = REFERENCE if REFERENCE.is_file() else REPO / "data" / "tiny.txt"


def read_input(path: Path) -> str:
    """The UTF-8 text of `--input`, or a UserError that says what is wrong with it."""
    if not path.is_file():
        raise UserError(f"--input {path}: no such file (pass --input PATH to a UTF-8 text)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--input {path}: not UTF-8 text (byte {e.start})") from None
    if not text:
        raise UserError(f"--input {path}: is empty")
    return text


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bench_tokenizer.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="UTF-8 text file")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--pattern", default="gpt4")
    p.add_argument("--repeats", type=int, default=5, help="runs per measurement (best is kept)")
    p.add_argument("--json-out", type=Path, help="also write the JSON lines here")
    args = p.parse_args(argv)
    return run_cli(lambda: bench(args), "bench_tokenizer.py")


def bench(args) -> int:
    """Run every measurement of the module docstring; print the table and the JSON lines."""
    if args.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {args.repeats}")
    if args.vocab_size < 256:
        raise UserError(f"--vocab-size must be >= 256 (the bytes), got {args.vocab_size}")
    resolve_pattern(args.pattern)  # an unknown pattern: one line before any work
    text = read_input(args.input)
    n_bytes = len(text.encode("utf-8"))
    results: list[dict] = []

    # Other jobs on the machine slow every figure down: record how busy it was.
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

    def record(metric: str, value: float, unit: str, **extra) -> None:
        results.append({"bench": "tokenizer", "metric": metric, "value": value, "unit": unit,
                        "input": str(args.input), "bytes": n_bytes, "vocab_size": args.vocab_size,
                        "cpus": os.cpu_count(), "load_avg_1m": load, **extra})  # fmt: skip

    # Warm-up: imports, regex compilation, first allocations.
    Tokenizer.train(text[:20_000], 300, pattern=args.pattern)

    # Each figure is the best of `--repeats` runs by wall clock; "cpu" is the best process CPU
    # time, which other jobs on the machine disturb less (all of our code here is one thread).
    runs = [_timed(Tokenizer.train, text, args.vocab_size, pattern=args.pattern)
            for _ in range(args.repeats)]  # fmt: skip
    tok = runs[-1][2]
    record("train_seconds", min(r[0] for r in runs), "s", cpu=min(r[1] for r in runs),
           median=statistics.median(r[0] for r in runs), merges=len(tok.merges))  # fmt: skip

    tracemalloc.start()
    Tokenizer.train(text, args.vocab_size, pattern=args.pattern)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    record("train_peak_memory", peak / 2**20, "MiB")

    hf = _train_hf(args, text) if importlib.util.find_spec("tokenizers") else None
    if hf is not None:
        record("hf_train_seconds", hf, "s", ratio_ours_over_hf=min(r[0] for r in runs) / hf)

    json_text = tok.to_json()
    cold, warm = [], []
    for _ in range(args.repeats):
        pure = Tokenizer.from_json(json_text, fast=False)
        cold.append(_timed(pure.encode, text))
        warm.append(_timed(pure.encode, text))
        assert warm[-1][2] == cold[-1][2]
    ids = cold[-1][2]
    for name, timings in (("encode_pure_cold", cold), ("encode_pure_warm", warm)):
        record(name, n_bytes / min(t[0] for t in timings) / 1e6, "MB/s",
               cpu=n_bytes / min(t[1] for t in timings) / 1e6)  # fmt: skip
    record("compression", n_bytes / len(ids), "bytes/token", tokens=len(ids))
    if importlib.util.find_spec("tiktoken"):
        fast = []
        for _ in range(args.repeats):
            quick = Tokenizer.from_json(json_text, fast=True)
            quick.encode("warm-up builds the tiktoken encoding")
            fast.append(_timed(quick.encode, text))
            assert fast[-1][2] == ids, "the fast path disagrees with the pure-Python encoder"
        record("encode_tiktoken", n_bytes / min(t[0] for t in fast) / 1e6, "MB/s",
               cpu=n_bytes / min(t[1] for t in fast) / 1e6)  # fmt: skip

    _print_table(results, args)
    lines = [json.dumps(r) for r in results]
    print("\n".join(lines))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


def _timed(fn, *args, **kwargs):
    """``(wall seconds, CPU seconds, result)`` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _train_hf(args, text: str) -> float | None:
    """Best time of Hugging Face `tokenizers` training a byte-level BPE with our split pattern
    on the same file (its usual `train(files)` path), or None if that fails."""
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    pattern = resolve_pattern(args.pattern).source
    best = float("inf")
    for _ in range(args.repeats):
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=args.vocab_size,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        start = time.perf_counter()
        hf.train([str(args.input)], trainer=trainer)
        best = min(best, time.perf_counter() - start)
    del text
    return best


def _print_table(results: list[dict], args) -> None:
    print(f"tokenizer benchmark: {args.input} ({results[0]['bytes']:,} bytes), "
          f"vocab {args.vocab_size}, best of {args.repeats}, {results[0]['cpus']} CPUs, "
          f"load average {results[0]['load_avg_1m']} at the start")  # fmt: skip
    print(f"{'metric':<22}{'value':>10}  {'unit':<12}{'cpu':>8}  notes")
    for r in results:
        cpu = f"{r['cpu']:8.3f}" if "cpu" in r else " " * 8
        notes = ""
        if "median" in r:
            notes = f"median {r['median']:.3f}"
        if "ratio_ours_over_hf" in r:
            notes = f"ours / HF = {r['ratio_ours_over_hf']:.2f}"
        print(f"{r['metric']:<22}{r['value']:>10.3f}  {r['unit']:<12}{cpu}  {notes}")


if __name__ == "__main__":
    sys.exit(main())
