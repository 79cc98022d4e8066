"""`llm_tiny rl` end to end, in-process: a few steps raise the reward, resume is exact, bad
input is one line and exit 2."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_tiny.config import load_config
from llm_tiny.rl.loop import COLUMNS, main, rl
from llm_tiny.tasks import write_dataset
from llm_tiny.train.checkpoint import load_checkpoint
from llm_tiny.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "configs" / "digits.yaml"
RL = ROOT / "configs" / "rl_digits.yaml"


def quiet(_: str) -> None:
    """A log function that drops the lines."""


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> dict[str, str]:
    """A digit-operations run trained briefly by supervision (partly right), and its splits."""
    tmp = tmp_path_factory.mktemp("rl_start")
    paths = write_dataset(tmp / "digits", n=2000, max_value=9, seed=1)
    flags = [
        f"--data.input=[{paths['train']},{paths['val']}]",
        f"--train.out_dir={tmp / 'sft'}",
        "--train.max_iters=90",
        "--optim.warmup_iters=20",
        "--train.eval_interval=1000",
        "--train.sample_at_end=false",
        "--train.batch_size=64",
    ]
    train(load_config(DIGITS, flags), progress=False, log=quiet)
    few = tmp / "few.txt"  # the toy task: 16 prompts, trained on and scored on
    few.write_text("".join(paths["test"].read_text().splitlines(keepends=True)[:16]))
    return {
        "init": str(tmp / "sft"),
        "train": str(paths["train"]),
        "test": str(paths["test"]),
        "few": str(few),
    }


def rl_flags(start: dict[str, str], out: Path, **extra) -> list[str]:
    flags = {
        "train.init_from": start["init"],
        "train.out_dir": str(out),
        "rl.prompts": start["train"],
        "rl.eval_prompts": start["test"],
        "rl.eval_n": 64,
        "rl.max_new_tokens": 3,
        "train.eval_interval": 4,
        "train.log_interval": 1,
        "train.ckpt_interval": 1000,
        "train.max_seconds": None,
    } | extra
    return [f"--{k}={'null' if v is None else v}" for k, v in flags.items()]


def metric_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_few_steps_raise_the_reward(start, tmp_path):
    # The toy task: 16 prompts, each seen every step and scored with fixed draws, so the
    # rise is the method's, not the luck of which prompts came up.
    few = {"rl.prompts": start["few"], "rl.eval_prompts": start["few"]}
    flags = rl_flags(start, tmp_path / "rl", **few, **{"train.max_iters": 12, "optim.lr": 1e-3})
    result = rl(load_config(RL, flags), progress=False, log=quiet)
    rows = metric_rows(tmp_path / "rl")
    assert list(rows[0]) == list(COLUMNS)
    scored = [r for r in rows if r["eval_pass1"]]
    first, last = float(scored[0]["eval_pass1"]), float(scored[-1]["eval_pass1"])
    assert 0.1 < first < 0.6, "the start should be partly right"
    assert last > first + 0.15, (first, last)
    assert float(scored[-1]["eval_greedy"]) > float(scored[0]["eval_greedy"])
    assert result["eval_pass1"] == last and result["step"] == 12
    for name in ("last.pt", "best.pt", "rl.png", "config.yaml"):
        assert (tmp_path / "rl" / name).exists(), name
    # Every step's row holds the measured quantities, in range.
    steps = [r for r in rows if r["reward"]]
    assert len(steps) == 12
    for r in steps:
        assert 0 <= float(r["reward"]) <= 1 and float(r["entropy"]) > 0
        assert float(r["kl"]) >= 0 and 1 <= float(r["response_len"]) <= 3
    assert float(steps[0]["clip_frac"]) == 0  # one update per batch: the ratio is exactly 1


def test_the_time_budget_ends_the_run_with_a_final_evaluation(start, tmp_path):
    small = {"rl.prompts_per_step": 4, "rl.k": 4, "rl.eval_n": 16, "train.eval_interval": 10**6}
    budget = {"train.max_iters": 10**6, "train.max_seconds": 2.0}
    result = rl(load_config(RL, rl_flags(start, tmp_path / "rl", **small, **budget)),
                progress=False, log=quiet)  # fmt: skip
    assert result["stopped"] == "max_seconds" and 1 <= result["step"] < 10**6
    rows = metric_rows(tmp_path / "rl")
    assert rows[-1]["step"] == str(result["step"]) and rows[-1]["eval_greedy"]  # scored at the end
    assert load_checkpoint(tmp_path / "rl" / "last.pt")["step"] == result["step"]


N = 3  # the interrupted run stops here; the reference runs 2N steps


def test_resume_continues_bit_for_bit(start, tmp_path):
    # Stop after N steps, resume in a fresh process to 2N: every metric (but the clock's) and
    # every weight equal an uninterrupted 2N-step run's. Two updates per batch with the KL on:
    # the ratio, the clip and the reference all take part.
    extra = {"rl.updates_per_batch": 2, "rl.kl_coef": 0.05, "optim.lr_decay_iters": 2 * N}
    extra |= {"optim.warmup_iters": 2, "rl.prompts_per_step": 4, "rl.k": 4, "rl.eval_n": 16}
    extra |= {"train.eval_interval": N}  # the interrupted run evaluates where it stops
    ref_flags = rl_flags(start, tmp_path / "ref", **extra, **{"train.max_iters": 2 * N})
    rl(load_config(RL, ref_flags), progress=False, log=quiet)
    flags = rl_flags(start, tmp_path / "run", **extra, **{"train.max_iters": N})
    assert rl(load_config(RL, flags), progress=False, log=quiet)["step"] == N
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    resumed = subprocess.run(
        [sys.executable, "-m", "llm_tiny", "rl", str(RL), *flags, "--resume",
         f"--train.max_iters={2 * N}"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {tmp_path / 'run' / 'last.pt'} at step {N}" in resumed.stdout
    clock = {"elapsed_s", "samples_per_s"}
    want, got = metric_rows(tmp_path / "ref"), metric_rows(tmp_path / "run")
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(want, got, strict=True):
        assert {k: v for k, v in a.items() if k not in clock} == {
            k: v for k, v in b.items() if k not in clock
        }
    assert any(float(r["clip_frac"] or 0) > 0 for r in got), "the clip never acted"
    w_ref = load_checkpoint(tmp_path / "ref" / "last.pt")["model"]
    w_run = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.equal(w_ref[k], w_run[k]) for k in w_ref)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train.init_from=null"], "rl starts from a trained model: set train.init_from"),
        (["--rl.k=1"], "a group baseline needs rl.k >= 2"),
        (["--rl.task=brackets"], "rl.task must be one of digits"),
        (["--rl.prompts=/nonexistent/train.txt"], "rl.prompts: /nonexistent/train.txt"),
        (["--rl.temperature=0"], "rl.temperature must be > 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(start, tmp_path, capsys, flags, message):
    argv = [str(RL), *rl_flags(start, tmp_path / "rl"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "rl").exists()  # nothing written


@pytest.mark.slow
def test_sigterm_saves_last_and_resume_continues_exactly(start, tmp_path):
    # Stopped by SIGTERM at whatever step it reached, then resumed to 2N: the same rows and
    # weights as an uninterrupted 2N-step run (the schedule is fixed by lr_decay_iters).
    extra = {"optim.lr_decay_iters": 2 * N, "optim.warmup_iters": 2, "rl.eval_n": 16}
    extra |= {"rl.prompts_per_step": 4, "rl.k": 4, "train.eval_interval": 1000}
    rl(load_config(RL, rl_flags(start, tmp_path / "ref", **extra, **{"train.max_iters": 2 * N})),
       progress=False, log=quiet)  # fmt: skip
    flags = rl_flags(start, tmp_path / "run", **extra, **{"train.max_iters": 1_000_000})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_tiny", "rl", str(RL), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    metrics = tmp_path / "run" / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:  # header, 0, 1
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: stopping after this step" in out
    stopped_at = load_checkpoint(tmp_path / "run" / "last.pt")["step"]
    assert 1 <= stopped_at < 2 * N, "the signal came too late to test anything"
    resumed = [*flags, f"--train.max_iters={2 * N}", "--train.resume=always"]
    rl(load_config(RL, resumed), progress=False, log=quiet)
    clock = {"elapsed_s", "samples_per_s"}
    want, got = metric_rows(tmp_path / "ref"), metric_rows(tmp_path / "run")
    # The last row of each holds the final evaluation; the rows before it the steps alone.
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(want, got, strict=True):
        assert {k: v for k, v in a.items() if k not in clock} == {
            k: v for k, v in b.items() if k not in clock
        }
    w_ref = load_checkpoint(tmp_path / "ref" / "last.pt")["model"]
    w_run = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.equal(w_ref[k], w_run[k]) for k in w_ref)
