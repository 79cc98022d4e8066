"""Hyperparameter sweeps: spec validation, grid and random expansion, and whole sweeps run
through the real command line (each trial a real training subprocess)."""

from __future__ import annotations

import csv
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llm_tiny.config import config_to_dict, load_config
from llm_tiny.plots import pyplot
from llm_tiny.sweep.results import rank, sweep_figure, trial_styles
from llm_tiny.sweep.runner import Processes, threads_per_job
from llm_tiny.sweep.space import (
    Trial,
    grid_points,
    plan_trials,
    sample_points,
    trial_id,
    trial_overrides,
)
from llm_tiny.sweep.spec import SpecError, load_spec, parse_spec
from llm_tiny.train.metrics import final_metrics, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def sweep_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_tiny", "sweep", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def write_base(tmp_path: Path) -> Path:
    """A tiny byte-level run config over a small made-up text, all paths inside tmp_path."""
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "red", "big", "fox"]
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(600)]
    text = tmp_path / "text.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = {
        "model": {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 16},
        "data": {
            "input": [str(text)],
            "tokenizer": str(tmp_path / "tok" / "bytes.json"),
            "vocab_size": 256,
            "data_dir": str(tmp_path / "data"),
        },
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_iters": 2},
        "train": {
            "out_dir": str(tmp_path / "run"),
            "max_iters": 10,
            "batch_size": 4,
            "eval_interval": 100,
            "eval_iters": 4,
            "eval_batch_size": 8,
            "log_interval": 2,
            "ckpt_interval": 100,
            "device": "cpu",
            "sample_at_end": False,
        },
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    return path


def write_spec(tmp_path: Path, **fields) -> Path:
    spec = {
        "base": "base.yaml",
        "sweep_dir": str(tmp_path / "sweep"),
        "method": "grid",
        "space": {"optim.lr": [1.0e-3, 3.0e-3]},
        "budget": {"iters": 6},
        **fields,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- spec errors


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


def test_base_is_found_next_to_the_spec_then_in_the_cwd(tmp_path):
    write_base(tmp_path)
    (tmp_path / "specs").mkdir()
    raw = {"base": "base.yaml", "space": {"optim.lr": [1]}, "budget": {"iters": 1}}
    # Not next to specs/s.yaml, so relative to the cwd.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert parse_spec(raw, "specs/s.yaml").base == Path("base.yaml")
    finally:
        os.chdir(cwd)
    # Next to the spec wins.
    assert parse_spec(raw, tmp_path / "s.yaml").base == tmp_path / "base.yaml"
    with pytest.raises(SpecError, match="tried"):
        parse_spec(raw, "/nowhere/s.yaml")


# ----------------------------------------------------------------------------- expansion


def test_grid_is_the_cartesian_product_last_key_fastest():
    points = grid_points({"optim.lr": [1e-3, 3e-3], "model.n_embd": [32, 64, 128]})
    assert points == [
        {"optim.lr": 1e-3, "model.n_embd": 32},
        {"optim.lr": 1e-3, "model.n_embd": 64},
        {"optim.lr": 1e-3, "model.n_embd": 128},
        {"optim.lr": 3e-3, "model.n_embd": 32},
        {"optim.lr": 3e-3, "model.n_embd": 64},
        {"optim.lr": 3e-3, "model.n_embd": 128},
    ]


def test_random_sampling_is_seeded_bounded_and_extends():
    space = {
        "optim.lr": {"log_uniform": [1e-4, 1e-2]},
        "model.dropout": {"uniform": [0.0, 0.2]},
        "model.n_layer": {"uniform": [1, 6]},
        "model.norm": {"choice": ["layernorm", "rmsnorm"]},
        "train.batch_size": [8, 16],
    }
    a = sample_points(space, 20, seed=1)
    assert a == sample_points(space, 20, seed=1)
    assert a != sample_points(space, 20, seed=2)
    assert sample_points(space, 30, seed=1)[:20] == a  # more trials extend, not reshuffle
    for p in a:
        assert 1e-4 <= p["optim.lr"] <= 1e-2
        assert 0.0 <= p["model.dropout"] <= 0.2
        assert isinstance(p["model.n_layer"], int) and 1 <= p["model.n_layer"] <= 6
        assert p["model.norm"] in ("layernorm", "rmsnorm")
        assert p["train.batch_size"] in (8, 16)


def test_log_uniform_matches_its_distribution():
    # log10 of a log-uniform sample on [1e-4, 1e-2] is uniform on [-4, -2]: half the samples
    # fall below 1e-3 and a quarter below 10^-3.5.
    points = sample_points({"optim.lr": {"log_uniform": [1e-4, 1e-2]}}, 4000, seed=0)
    lrs = [p["optim.lr"] for p in points]
    assert abs(sum(lr < 1e-3 for lr in lrs) / len(lrs) - 0.5) < 0.03
    assert abs(sum(lr < 10**-3.5 for lr in lrs) / len(lrs) - 0.25) < 0.03


def test_trial_identity_ignores_paths_and_threads():
    cfg = config_to_dict(load_config(None))
    other = yaml.safe_load(yaml.safe_dump(cfg))
    other["train"]["out_dir"], other["train"]["threads"] = "elsewhere", 7
    assert trial_id(cfg) == trial_id(other)
    other["optim"]["lr"] = 5e-4
    assert trial_id(cfg) != trial_id(other)


def test_budget_and_threads():
    raw = {"base": str(ROOT / "configs/tiny.yaml"), "space": {"optim.lr": [1]}}
    by_iters = parse_spec({**raw, "budget": {"iters": 40}})
    assert trial_overrides(by_iters, 2) == {
        "train.threads": 2,
        "train.resume": "never",
        "train.overwrite": True,  # a trial run again (--retry-failed) starts from scratch
        "train.max_iters": 40,
    }
    by_time = trial_overrides(parse_spec({**raw, "budget": {"seconds": 30}}), 1)
    assert by_time["train.max_seconds"] == 30.0
    assert by_time["optim.schedule"] == "constant"  # a cosine over 10^6 steps never decays
    assert by_time["train.max_iters"] > 10_000
    assert [threads_per_job(j, cores=8) for j in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_final_metrics_and_ranking(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "step,tokens,train_loss,val_loss,val_ppl,val_bpb,lr,grad_norm,tokens_per_s,elapsed_s\n"
        "0,0,,3.0,20.1,2.5,,,,0.1\n"
        "2,64,2.9,,,,0.001,1.0,100.0,0.5\n"
        "4,128,2.7,,,,0.001,1.0,300.0,0.9\n"
        "6,192,2.5,2.4,11.0,2.1,0.001,1.0,200.0,1.4\n",
        encoding="utf-8",
    )
    final = final_metrics(read_metrics(tmp_path / "metrics.csv"))
    assert final == {"val_loss": 2.4, "val_bpb": 2.1, "iters": 6.0, "tokens_per_s": 200.0}
    trials = [
        Trial("a", {}, tmp_path, status="ok", metric=2.0),
        Trial("b", {}, tmp_path, status="failed", error="boom"),
        Trial("c", {}, tmp_path, status="ok", metric=1.5),
    ]
    assert [t.id for t in rank(trials, "min")] == ["c", "a", "b"]
    assert [t.id for t in rank(trials, "max")] == ["a", "c", "b"]


def test_trial_styles_are_distinct():
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c"]
    styles = trial_styles(20, colours)
    assert len(set(styles)) == 20  # 3 colours x the markers
    assert styles[:4] == [("#1f77b4", "o"), ("#ff7f0e", "o"), ("#2ca02c", "o"), ("#1f77b4", "s")]


def test_sweep_figure_tells_the_trials_apart(tmp_path):
    values = [(1e-3, 64, 3.3), (3e-3, 64, 2.9), (1e-3, 128, 2.8), (3e-3, 128, 2.7), (1e-2, 64, 3.1)]
    trials = [
        Trial(f"t{i}", {"optim.lr": lr, "model.n_embd": n}, tmp_path, status="ok", metric=m)
        for i, (lr, n, m) in enumerate(values)
    ]
    trials.append(Trial("bad", {"optim.lr": 0.1, "model.n_embd": 64}, tmp_path, status="failed"))
    fig = sweep_figure(trials, ["optim.lr", "model.n_embd"], "val_bpb", "min")
    try:
        (legend,) = fig.legends
        texts = [t.get_text() for t in legend.get_texts()]
        # Best first, each naming its id, its values and its metric; the failed one is counted.
        assert texts[0] == "t3 (optim.lr=0.003, model.n_embd=128): 2.7000 best"
        assert [t.split()[0] for t in texts] == ["t3", "t2", "t1", "t4", "t0"]
        assert "1 failed" in fig.get_suptitle()
        for ax in fig.axes:
            dots = ax.collections
            assert [d.get_label() for d in dots] == texts  # one dot per trial, in legend order
            colours = {tuple(d.get_facecolor()[0]) for d in dots}
            assert len(colours) == len(dots)  # every trial its own colour, in every panel
    finally:
        pyplot().close(fig)


def test_stop_all_stops_running_trials_and_refuses_new_ones():
    processes = Processes()
    proc = processes.start([sys.executable, "-c", "import time; time.sleep(60)"])
    assert proc is not None
    t0 = time.monotonic()
    processes.stop_all()
    assert proc.wait(timeout=5) != 0 and time.monotonic() - t0 < 5
    assert processes.start([sys.executable, "-c", "pass"]) is None


# ----------------------------------------------------------------------------- whole sweeps


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
        # The recorded metric is the run's own final validation bpb, as train logged it.
        logged = [m for m in read_rows(out_dir / "metrics.csv") if m["val_bpb"]]
        assert math.isclose(float(r["metric"]), float(logged[-1]["val_bpb"]), rel_tol=1e-5)
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


def test_one_value_written_two_ways_is_one_trial(tmp_path):
    # PyYAML reads `1e-3` (no dot) as a string; validated, it is the float 0.001.
    base = write_base(tmp_path)
    raw = yaml.safe_load("space: {optim.lr: [1e-3, 0.001, 3.0e-3]}")
    spec = parse_spec({**raw, "base": str(base), "budget": {"iters": 3}}, tmp_path / "s.yaml")
    trials = plan_trials(spec, threads=1)
    assert [t.values for t in trials] == [{"optim.lr": 0.001}, {"optim.lr": 0.003}]
    assert all(t.config.train.out_dir == str(t.out_dir) for t in trials)
    assert trials[0].config.train.max_iters == 3 and trials[0].config.train.threads == 1


def test_shipped_example_spec_plans_four_valid_trials(monkeypatch):
    monkeypatch.chdir(ROOT)  # `base: configs/tiny.yaml` is relative to the repository root
    spec = load_spec("configs/sweep_tiny.yaml")
    trials = plan_trials(spec, threads=1)
    assert len({t.id for t in trials}) == 4
    assert all(t.config is not None and t.config.train.max_iters == 150 for t in trials)
