"""Hyperparameter sweeps: spec validation, grid and random expansion, ranking and the figure
(whole sweeps through the real command line are tests/e2e/test_sweep_cli.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from helpers import write_base

from llm_tiny.config import config_to_dict, load_config
from llm_tiny.plots import pyplot
from llm_tiny.sweep.results import rank, sweep_figure, trial_styles
from llm_tiny.sweep.runner import threads_per_job
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

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- spec errors


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


# ----------------------------------------------------------------------------- whole sweeps


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
