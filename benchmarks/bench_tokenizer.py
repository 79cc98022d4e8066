"""Benchmark the tokenizer: training time and memory against Hugging Face, encode throughput.

    python benchmarks/bench_tokenizer.py [--input ../shared/data/tinyshakespeare.txt]
                                         [--vocab-size 4096] [--repeats 5] [--json-out F]
                                         [--workers N] [--max-bytes N] [--train-only]

Measures, on one text file:

- training a `--vocab-size` vocabulary from the file, pre-tokenization included, with our
  trainer on `--workers` processes (default: one per CPU) and on one, and with the
  `tokenizers` package (Hugging Face, Rust, all its threads; same file, same split pattern)
  when it is installed; each training runs in a fresh subprocess, round-robin over the
  variants `--repeats` times, so that its time (best and median) and its peak memory are its
  own. The peak is the resident set of the process, plus that of its largest worker process
  times the number of workers (an upper bound: forked workers share pages with their parent).
  The tokenizer files of our variants are checked byte-identical;
- encode throughput in MB/s (bytes of UTF-8 text per second) for the pure-Python encoder with
  cold caches (a freshly loaded tokenizer) and warm caches (the same text again), and for the
  tiktoken fast path when tiktoken is installed; the ids of all paths are checked equal
  (skipped with `--train-only`).

Every encode figure is the best of `--repeats` runs by wall clock; the "cpu" column gives the
same figure from process CPU time (worker processes and threads included), which other jobs on
a shared machine disturb less. `--max-bytes` trains our variants on a sample (HF on the whole
file: compare times without it).

`--input` defaults to the reference corpus `../shared/data/tinyshakespeare.txt` when it is
beside the repository, else to the embedded `data/tiny.txt`. Prints a table, then one JSON
line per result (also written to `--json-out`). Timings on a shared machine are noisy (the load
average at the start is recorded): the best of several repeats is the figure to quote, with the
command line.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llm_tiny.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from tok.bpe import Tokenizer  # noqa: E402
from tok.patterns import resolve_pattern  # noqa: E402

REFERENCE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
DEFAULT_INPUT = REFERENCE if REFERENCE.is_file() else REPO / "data" / "tiny.txt"


def check_input(path: Path) -> int:
    """The size in bytes of `--input` once checked to be non-empty UTF-8 text (read a block at
    a time: the benchmark itself holds the text only to encode it), or a UserError that says
    what is wrong with it."""
    if not path.is_file():
        raise UserError(f"--input {path}: no such file (pass --input PATH to a UTF-8 text)")
    decoder = codecs.getincrementaldecoder("utf-8")()
    n_bytes = 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:  # e.object: the bytes held back, then `block`
                at = n_bytes - (len(e.object) - len(block)) + e.start
                raise UserError(f"--input {path}: not UTF-8 text (byte {at})") from None
            n_bytes += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UserError(f"--input {path}: not UTF-8 text (it ends inside a character)") from None
    if not n_bytes:
        raise UserError(f"--input {path}: is empty")
    return n_bytes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    p = ArgumentParser(prog="bench_tokenizer.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="UTF-8 text file")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--pattern", default="gpt4")
    p.add_argument("--repeats", type=int, default=5, help="runs per measurement (best is kept)")
    p.add_argument("--workers", type=int, help="our training processes (default: one per CPU)")
    p.add_argument("--max-bytes", type=int, help="train ours on a sample of about N bytes")
    p.add_argument("--train-only", action="store_true", help="skip the encode measurements")
    p.add_argument("--json-out", type=Path, help="also write the JSON lines here")
    args = p.parse_args(argv)
    return run_cli(lambda: bench(args), "bench_tokenizer.py")


def bench(args) -> int:
    """Run every measurement of the module docstring; print the table and the JSON lines."""
    if args.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {args.repeats}")
    if args.vocab_size < 256:
        raise UserError(f"--vocab-size must be >= 256 (the bytes), got {args.vocab_size}")
    workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    resolve_pattern(args.pattern)  # an unknown pattern: one line before any work
    n_bytes = check_input(args.input)
    results: list[dict] = []

    # Other jobs on the machine slow every figure down: record how busy it was.
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

    def record(metric: str, value: float, unit: str, **extra) -> None:
        results.append({"bench": "tokenizer", "metric": metric, "value": value, "unit": unit,
                        "input": str(args.input), "bytes": n_bytes, "vocab_size": args.vocab_size,
                        "cpus": os.cpu_count(), "load_avg_1m": load, **extra})  # fmt: skip

    # Training: each variant in its own process, round-robin, `--repeats` times.
    variants = {"train": workers} | ({"train_1_worker": 1} if workers > 1 else {})
    if importlib.util.find_spec("tokenizers"):
        variants["hf_train"] = 0  # 0: Hugging Face's trainer
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "bpe.json"
        for _ in range(args.repeats):
            for name, n in variants.items():
                job = {"input": str(args.input), "vocab_size": args.vocab_size,
                       "pattern": args.pattern, "workers": n, "max_bytes": args.max_bytes,
                       "save": str(saved) if name == "train" else None}  # fmt: skip
                runs[name].append(run_child(job))
        tok = Tokenizer.load(saved)
        json_text = tok.to_json()
    best_ours = None
    for name, measured in runs.items():
        seconds = [r["seconds"] for r in measured]
        extra = {"median": statistics.median(seconds), "cpu": min(r["cpu"] for r in measured),
                 "merges": measured[0]["merges"], "peak_rss_mib": max(r["peak_mib"] for r in measured),
                 "workers": measured[0]["workers"]}  # fmt: skip
        if name == "train":
            best_ours = min(seconds)
            extra |= {"max_bytes": args.max_bytes, "fingerprint": measured[0]["fingerprint"]}
        if name == "hf_train":
            extra["ratio_ours_over_hf"] = best_ours / min(seconds)
        metric = "hf_train_seconds" if name == "hf_train" else f"{name}_seconds"
        record(metric, min(seconds), "s", **extra)
        prefix = "hf_train" if name == "hf_train" else name
        record(f"{prefix}_peak_memory", extra["peak_rss_mib"], "MiB")
    ours = {r["fingerprint"] for name in runs if name != "hf_train" for r in runs[name]}
    assert len(ours) == 1, "our tokenizer files differ between runs or numbers of workers"

    if not args.train_only:
        _bench_encode(args.input.read_text(encoding="utf-8"), json_text, args.repeats, record)

    _print_table(results, args)
    lines = [json.dumps(r) for r in results]
    print("\n".join(lines))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


def _bench_encode(text: str, json_text: str, repeats: int, record) -> None:
    """Encode throughput: pure Python cold and warm, tiktoken; checks that the ids agree."""
    n_bytes = len(text.encode("utf-8"))
    cold, warm = [], []
    for _ in range(repeats):
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
        for _ in range(repeats):
            quick = Tokenizer.from_json(json_text, fast=True)
            quick.encode("warm-up builds the tiktoken encoding")
            fast.append(_timed(quick.encode, text))
            assert fast[-1][2] == ids, "the fast path disagrees with the pure-Python encoder"
        record("encode_tiktoken", n_bytes / min(t[0] for t in fast) / 1e6, "MB/s",
               cpu=n_bytes / min(t[1] for t in fast) / 1e6)  # fmt: skip


def _timed(fn, *args, **kwargs):
    """``(wall seconds, CPU seconds, result)`` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, result


# ----------------------------------------------------------------------------- one training
# Runs in the child process: trains once, prints one JSON line.


def child_main(job_json: str) -> int:
    """Train once as `job` says (``workers`` 0: Hugging Face); print time, CPU, peak memory."""
    job = json.loads(job_json)
    path = Path(job["input"])
    # Imports are not training: numpy (our trainer's) and tokenizers load before the clock.
    importlib.import_module("tokenizers" if job["workers"] == 0 else "numpy")
    start, cpu = time.perf_counter(), _cpu_seconds()
    if job["workers"] == 0:
        merges, fingerprint = _train_hf(path, job["vocab_size"], job["pattern"]), None
    else:
        tok = Tokenizer.train(path, job["vocab_size"], pattern=job["pattern"],
                              workers=job["workers"], max_bytes=job["max_bytes"])  # fmt: skip
        merges, fingerprint = len(tok.merges), tok.fingerprint
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if job["save"] and fingerprint is not None:
        tok.save(job["save"])
    # RUSAGE_CHILDREN: the largest worker's peak (ru_maxrss: KiB on Linux, bytes on macOS).
    unit = 1 if sys.platform == "darwin" else 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit
    peak = _own_peak_rss() + child * max(job["workers"], 1)
    print(json.dumps({"seconds": seconds, "cpu": cpu, "merges": merges, "peak_mib": peak / 2**20,
                      "workers": job["workers"], "fingerprint": fingerprint}))  # fmt: skip
    return 0


def _own_peak_rss() -> int:
    """This process's peak resident set in bytes since it started running this program.

    NOTE: on Linux, ``ru_maxrss`` keeps the peak from before ``exec``, when the new process was
    still a copy of the benchmark (which may hold the whole text); ``VmHWM`` starts afresh.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        return int(kib) * 1024
    except (OSError, StopIteration):
        unit = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_child(job: dict) -> dict:
    """One training in a fresh Python process (see `child_main`)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise RuntimeError(f"training subprocess failed: {err[-1] if err else proc.returncode}")
    return json.loads(lines[-1])


def _train_hf(path: Path, vocab_size: int, pattern: str) -> int:
    """Train Hugging Face `tokenizers`' byte-level BPE with our split pattern on the file (its
    usual `train(files)` path); returns the number of merges."""
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(resolve_pattern(pattern).source), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train([str(path)], trainer=trainer)
    return hf.get_vocab_size() - 256


def _print_table(results: list[dict], args) -> None:
    print(f"tokenizer benchmark: {args.input} ({results[0]['bytes']:,} bytes), "
          f"vocab {args.vocab_size}, best of {args.repeats}, {results[0]['cpus']} CPUs, "
          f"load average {results[0]['load_avg_1m']} at the start")  # fmt: skip
    print(f"{'metric':<26}{'value':>10}  {'unit':<12}{'cpu':>8}  notes")
    for r in results:
        cpu = f"{r['cpu']:8.3f}" if "cpu" in r else " " * 8
        notes = []
        if "workers" in r:
            notes.append("HF, all threads" if r["workers"] == 0 else f"{r['workers']} workers")
        if "median" in r:
            notes.append(f"median {r['median']:.3f}")
        if "ratio_ours_over_hf" in r:
            notes.append(f"ours / HF = {r['ratio_ours_over_hf']:.2f}")
        print(f"{r['metric']:<26}{r['value']:>10.3f}  {r['unit']:<12}{cpu}  {', '.join(notes)}")


if __name__ == "__main__":
    sys.exit(main())
