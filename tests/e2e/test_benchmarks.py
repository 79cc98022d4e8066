"""benchmarks/*.py as a user runs them: tiny sizes through a subprocess, the JSON they print
and write, and one line with exit status 2 for bad input. (Speeds are not asserted here; they
are what the scripts measure. benchmarks/speedrun.py has its own tests/e2e/test_speedrun_runs.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY_TEXT = ROOT / "data" / "tiny.txt"


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_bench_train_runs_variants_side_by_side_and_writes_json(tmp_path):
    out = tmp_path / "train.jsonl"
    proc = bench(
        "bench_train.py",
        "--input", str(TINY_TEXT),
        "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
        "--batch-size", "2", "--iters", "2", "--warmup", "1", "--repeats", "2",
        "--variants", "sdpa,manual,bf16", "--device", "cpu", "--threads", "1",
        "--json-out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json_lines(proc.stdout)
    assert [r["variant"] for r in results] == ["sdpa", "manual", "bf16"]
    assert json_lines(out.read_text()) == results
    for r in results:
        assert r["status"] == "ok" and r["device"] == "cpu" and r["threads"] == 1
        assert r["tokens_per_s"] > 0 and r["ms_per_iter"] > 0 and r["peak_mem_mib"] > 0
        assert len(r["tokens_per_s_all"]) == 2  # both repeats kept; the best is reported
        assert r["tokens_per_s"] == max(r["tokens_per_s_all"])
        assert r["mfu"] is None  # MFU needs a known accelerator peak
    # Same seed and batches: sdpa and the written-out attention train the same model.
    assert results[0]["final_loss"] == pytest.approx(results[1]["final_loss"], rel=1e-4)
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("size "))
    assert header < next(i for i, line in enumerate(lines) if line.startswith("{"))


def test_bench_sample_checks_cache_and_recompute_agree(tmp_path):
    out = tmp_path / "sample.json"
    proc = bench(
        "bench_sample.py",
        "--input", str(TINY_TEXT),
        "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
        "--new-tokens", "40", "--train-iters", "1", "--threads", "1",
        "--json-out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (result,) = json_lines(proc.stdout)
    assert json.loads(out.read_text()) == result
    # 40 tokens past a 16-token context: the cache slides, and both paths still agree.
    assert result["same_tokens"] is True and result["new_tokens"] == 40
    assert result["kv_cache_speedup"] == pytest.approx(
        result["kv_cache_tokens_per_s"] / result["full_recompute_tokens_per_s"], rel=0.02
    )
    assert result["threads"] == 1 and result["device"] == "cpu"


def test_bench_tokenizer_reports_every_measurement(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TINY_TEXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    out = tmp_path / "tok.jsonl"
    proc = bench(
        "bench_tokenizer.py", "--input", str(text), "--vocab-size", "300", "--repeats", "1",
        "--json-out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json_lines(proc.stdout)
    assert json_lines(out.read_text()) == results
    metrics = {r["metric"]: r for r in results}
    assert {"train_seconds", "train_peak_memory", "encode_pure_cold", "encode_pure_warm"} <= set(
        metrics
    )
    assert metrics["train_seconds"]["merges"] == 300 - 256
    assert metrics["compression"]["value"] > 1.0  # merges make tokens longer than a byte
    assert all(r["bytes"] == 20_000 for r in results)


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("bench_train.py", ["--input", "nope.txt"], "nope.txt: input text file not found"),
        ("bench_train.py", ["--variants", "fast"], "unknown variant 'fast'"),
        ("bench_train.py", ["--iters", "0"], "--iters and --repeats must be >= 1"),
        ("bench_sample.py", ["--input", "nope.txt"], "--input nope.txt: no such file"),
        ("bench_sample.py", ["--n-head", "5"], "--n-embd 384 is not divisible by --n-head 5"),
        ("bench_sample.py", ["--threads", "0"], "--threads must be >= 1, got 0"),
        ("bench_sample.py", ["--vocab-size", "100"], "--vocab-size must be >= 256"),
        ("bench_tokenizer.py", ["--input", "nope.txt"], "--input nope.txt: no such file"),
        ("bench_tokenizer.py", ["--vocab-size", "10"], "--vocab-size must be >= 256"),
        ("bench_tokenizer.py", ["--pattern", "("], "bad split pattern '('"),
        ("bench_tokenizer.py", ["--bogus"], "unrecognized arguments: --bogus"),
        ("digits_check.py", ["--config", "nope.yaml"], "--config nope.yaml: not found"),
        ("digits_check.py", ["--seeds", "1,x"], "--seeds must be integers separated by commas"),
        ("bench_fsdp.py", ["--nproc", "1"], "--nproc must be >= 2"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(script, args, message):
    proc = bench(script, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith(f"{script}: error: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("script", ["bench_train.py", "bench_sample.py"])
def test_a_missing_cuda_device_is_one_line(script):
    proc = bench(script, "--device", "cuda", "--input", str(TINY_TEXT))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"{script}: error: device 'cuda' asked for, but CUDA is not available here"
    ]


def test_non_utf8_input_to_the_tokenizer_benchmark(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café\n".encode("latin-1") * 10)
    proc = bench("bench_tokenizer.py", "--input", str(bad))
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"bench_tokenizer.py: error: --input {bad}: not UTF-8 text (byte 3)"
    )


def test_bench_data_compares_the_encoder_and_prepare_with_1_and_2_workers(tmp_path):
    out = tmp_path / "data.jsonl"
    proc = bench(
        "bench_data.py", "--size-mb", "0.5", "--vocab-size", "300", "--tokenizer-mb", "0.2",
        "--workers", "1", "2", "--work-dir", str(tmp_path / "work"), "--json-out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    assert [r["variant"] for r in rows] == ["encode", "prepare w1", "prepare w2"]
    assert rows[1]["tokens"] == rows[2]["tokens"] > 0  # the same shards whatever the workers
    assert all(r["mb_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in rows)
    assert json_lines(out.read_text()) == rows


def test_bench_serve_compares_concurrent_streams_with_one_at_a_time(tmp_path):
    pytest.importorskip("fastapi")
    out = tmp_path / "serve.json"
    proc = bench(
        "bench_serve.py",
        "--n-layer", "1", "--n-embd", "32", "--block-size", "16", "--vocab-size", "280",
        "--requests", "4", "--new-tokens", "20", "--streams", "1,4", "--threads", "1",
        "--json-out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (result,) = json_lines(proc.stdout)
    assert json.loads(out.read_text()) == result
    assert result["same_tokens"] is True and result["largest_batch"] == 4
    assert list(result["variants"]) == [
        "generate, one at a time", "server, 1 concurrent", "server, 4 concurrent",
    ]  # fmt: skip
    assert all(v["tokens"] > 0 and v["tokens_per_s"] > 0 for v in result["variants"].values())
    assert bench("bench_serve.py", "--streams", "0").returncode == 2


def test_digits_check_trains_and_scores_the_recipe_on_each_data_seed(tmp_path):
    out = tmp_path / "check.json"
    proc = bench(
        "digits_check.py", "--config", "configs/digits.yaml", "--range", "9", "--seeds", "5,6",
        "--n", "300", "--set", "train.max_iters=6", "--set", "optim.warmup_iters=2",
        "--set", "train.eval_interval=3", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert json_lines(proc.stdout) == [result]
    assert [r["seed"] for r in result["seeds"]] == [5, 6]
    for row in result["seeds"]:
        assert row["steps"] == 6 and row["n_test"] == 30 and 0 <= row["accuracy"] <= 1
        assert set(row["per_operation"]) <= {"First", "Second", "Last", "Max", "Min"}
        assert row["per_depth"].keys() == {"1"} and not row["stopped_by_time"]
        assert 0 < row["train_s"] < row["wall_s"]
    assert result["min_accuracy"] == min(r["accuracy"] for r in result["seeds"])
    assert "seed 5: " in proc.stdout and "after 6 steps" in proc.stdout


def test_digits_check_reports_a_run_that_the_time_budget_ended(tmp_path):
    proc = bench(
        "digits_check.py", "--config", "configs/digits.yaml", "--range", "9", "--seeds", "4",
        "--n", "300", "--set", "train.max_iters=100000", "--set", "train.max_seconds=0.5",
        "--set", "optim.warmup_iters=2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json_lines(proc.stdout)[0]["seeds"]
    assert row["stopped_by_time"] and 0 < row["steps"] < 100000
    assert "(stopped by the time budget)" in proc.stdout


def test_bench_optim_times_every_optimizer():
    root = Path(__file__).resolve().parents[2]
    args = ["--config", "configs/tiny.yaml", "--iters", "1", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_optim.py", *args],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("adamw", "muon float32", "muon bfloat16"):
        assert 0 < result[name]["min_ms"] <= result[name]["median_ms"]


@pytest.mark.slow
def test_bench_fsdp_halves_what_each_rank_holds(tmp_path):
    out = tmp_path / "fsdp.json"
    args = ["--layers", "1", "--width", "64", "--steps", "2", "--warmup", "1", "--out", str(out)]
    proc = bench("bench_fsdp.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json_lines(proc.stdout) == [report]
    ddp, fsdp = (report["runs"][v]["ranks"] for v in ("ddp", "fsdp"))
    assert len(ddp) == len(fsdp) == 2 and report["runs"]["ddp"]["params"] > 500_000
    # DDP: every rank holds every parameter, its gradient and AdamW's two moments (float32).
    n = report["runs"]["ddp"]["params"]
    assert all(r["params"] == r["grads"] == 4 * n and r["optimizer"] >= 8 * n for r in ddp)
    # FSDP: half of each (dim-0 shards; every row count here is even), and so half in total.
    assert [r["params"] for r in fsdp] == [2 * n] * 2
    assert report["fsdp_over_ddp"]["total"] == pytest.approx(0.5, abs=1e-3)
    assert report["fsdp_over_ddp"]["step_ms"] > 0
