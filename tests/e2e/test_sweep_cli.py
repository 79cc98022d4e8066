"""`python -m llm_tiny sweep` through the real command line: bad specs, whole sweeps (each trial
a real training subprocess), resume, failures and dry runs; and stopping running trials. (Spec
validation, grid and random expansion are tests/unit/test_sweep.py.)"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import read_rows, write_base, write_spec

from llm_tiny.config import load_config
from llm_tiny.sweep.runner import Processes

ROOT = Path(__file__).resolve().parents[2]


def sweep_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_tiny", "sweep", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"spaces": {}}, "unknown key spaces (did you mean space?)"),
        ({"space": {"optim.lrr": [1e-3]}}, "unknown config key optim.lrr (did you mean optim.lr?)"),
        ({"space": {"optim.lr": []}}, "space.optim.lr: the list of values is empty"),
        ({"space": {"optim.lr": {"log_uniform": [1e-4, 1e-2]}}}, "grid search needs a list"),
        ({"method": "randm"}, "method must be one of grid | random, got 'randm' (did you mean"),
        ({"method": "random"}, "method random needs trials: N"),
        ({"budget": {"iters": 5, "seconds": 3}}, "budget takes one of iters or seconds"),
        ({"budget": {"iter": 5}}, "unknown budget key iter (did you mean iters?)"),
        ({"metric": "val_bp"}, "metric must be one of val_bpb | val_loss"),
        ({"base": "nope.yaml"}, "base config not found"),
        ({"overrides": {"optim.lr": 1e-3}}, "optim.lr is both in space and in overrides"),
    ],
)
def test_bad_specs_fail_in_one_line_through_the_cli(tmp_path, fields, expected):
    write_base(tmp_path)
    spec = write_spec(tmp_path, **fields)
    proc = sweep_cli(str(spec), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("llm_tiny sweep: error: ")
    assert expected in proc.stderr
    assert not (tmp_path / "sweep").exists()  # nothing is started on a bad spec


def test_missing_spec_file_and_bad_flags(tmp_path):
    proc = sweep_cli(str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "none.yaml: sweep spec not found" in proc.stderr
    proc = sweep_cli("x.yaml", "--jobs", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--jobs must be >= 1" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_stop_all_stops_running_trials_and_refuses_new_ones():
    processes = Processes()
    proc = processes.start([sys.executable, "-c", "import time; time.sleep(60)"])
    assert proc is not None
    t0 = time.monotonic()
    processes.stop_all()
    assert proc.wait(timeout=5) != 0 and time.monotonic() - t0 < 5
    assert processes.start([sys.executable, "-c", "pass"]) is None


def test_grid_sweep_end_to_end_then_resume(tmp_path):
    write_base(tmp_path)
    # n_head 3 does not divide n_embd 16: those two trials fail validation, the others train.
    spec = write_spec(tmp_path, space={"optim.lr": [1.0e-3, 3.0e-3], "model.n_head": [2, 3]})
    proc = sweep_cli(str(spec), "--jobs", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = tmp_path / "sweep"
    rows = read_rows(sweep / "results.csv")
    assert len(rows) == 4
    assert list(rows[0])[:5] == ["trial", "status", "metric", "optim.lr", "model.n_head"]
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert sorted(r["model.n_head"] for r in ok) == ["2", "2"]
    assert len(failed) == 2 and all(
        "must be divisible by model.n_head" in r["error"] for r in failed
    )
    assert [float(r["metric"]) for r in ok] == sorted(float(r["metric"]) for r in ok)  # ranked

    for r in ok:
        out_dir = Path(r["out_dir"])
        if not out_dir.is_absolute():
            out_dir = tmp_path / out_dir
        # The recorded metric is the run's own final validation bpb, as train logged it: over
        # the whole split, which the end of a run without a budget scores.
        logged = [m for m in read_rows(out_dir / "metrics.csv") if m["val_bpb"]]
        final = logged[-1]["full_val_bpb"] or logged[-1]["val_bpb"]
        assert math.isclose(float(r["metric"]), float(final), rel_tol=1e-5)
        assert logged[-1]["step"] == "6" and r["iters"] == "6"
        trained = load_config(out_dir / "config.yaml")
        assert trained.optim.lr == float(r["optim.lr"]) and trained.train.threads == 1
        assert float(r["wall_s"]) > 0 and float(r["tokens_per_s"]) > 0

    best = load_config(sweep / "best.yaml")
    assert best.optim.lr == float(ok[0]["optim.lr"]) and best.model.n_head == 2
    assert best.train.max_iters == 6 and best.train.out_dir == str(sweep / "best")
    assert (sweep / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = proc.stdout[proc.stdout.index("rank") :]
    assert table.index(ok[0]["trial"]) < table.index(ok[1]["trial"])

    # Run again: nothing trains; the finished trials are reported as skipped.
    stamps = {r["trial"]: os.stat(tmp_path / r["out_dir"] / "metrics.csv").st_mtime_ns for r in ok}
    again = sweep_cli(str(spec), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already finished") == 2 and "0 to run" in again.stdout
    assert "training in" not in again.stdout
    for r in ok:
        assert os.stat(tmp_path / r["out_dir"] / "metrics.csv").st_mtime_ns == stamps[r["trial"]]
    assert read_rows(sweep / "results.csv") == rows

    # A trial with no row (the sweep was interrupted during it) is trained on the next run.
    missing = ok[1]["trial"]
    with (sweep / "results.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["trial"] != missing)
    third = sweep_cli(str(spec), "--jobs", "2", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "1 to run" in third.stdout and f"trial {missing} (optim.lr=" in third.stdout
    assert third.stdout.count("already finished") == 1
    rows3 = {r["trial"]: r for r in read_rows(sweep / "results.csv")}
    assert rows3[missing]["status"] == "ok"
    # Training is deterministic on CPU, so the re-run reproduces the lost result.
    assert math.isclose(float(rows3[missing]["metric"]), float(ok[1]["metric"]), rel_tol=1e-6)


def test_failing_trial_is_recorded_and_retried_on_request(tmp_path):
    write_base(tmp_path)
    # Varying a data key gives each trial its own tokenizer and data; the missing file passes
    # config validation and fails inside its training process.
    spec = write_spec(tmp_path, space={"data.input": ["text.txt", "missing.txt"]})
    proc = sweep_cli(str(spec), "--jobs", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["data.input"]: r for r in read_rows(tmp_path / "sweep" / "results.csv")}
    good, bad = rows["text.txt"], rows["missing.txt"]
    assert good["status"] == "ok" and math.isfinite(float(good["metric"]))
    assert (tmp_path / good["out_dir"] / "data" / "meta.json").is_file()
    assert not (tmp_path / "data").exists()  # the base's data dir was never prepared
    assert bad["status"] == "failed" and "data.input: missing.txt not found" in bad["error"]
    assert "Traceback" not in bad["error"]

    again = sweep_cli(str(spec), cwd=tmp_path)
    assert "failed before, skipped (--retry-failed re-runs it)" in again.stdout
    assert "0 to run" in again.stdout

    retry = sweep_cli(str(spec), "--retry-failed", cwd=tmp_path)
    assert retry.returncode == 0 and "1 to run" in retry.stdout
    assert f"trial {bad['trial']} failed: " in retry.stdout


def test_dry_run_lists_random_trials_reproducibly(tmp_path):
    write_base(tmp_path)
    space = {"optim.lr": {"log_uniform": [1.0e-4, 1.0e-2]}, "model.n_layer": [1, 2]}
    spec = write_spec(tmp_path, method="random", trials=3, seed=7, space=space)
    first = sweep_cli(str(spec), "--dry-run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 3 and all("optim.lr=" in ln and ln.endswith("valid") for ln in lines)
    assert sweep_cli(str(spec), "--dry-run", cwd=tmp_path).stdout == first.stdout
    assert not (tmp_path / "sweep").exists()
