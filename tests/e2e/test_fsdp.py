"""FSDP (`runtime.parallel: fsdp`) over 2 processes on the CPU (gloo): sharded checkpoints that
resume bit for bit after a kill -9, that reshard to one process and back, that `consolidate`,
`sample`, `eval` and `export` read, and bad input that is one line and exit 2 on every rank.

Every launch is bounded in time and killed as a whole past it (tests/torchrun_helpers.py)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrun_helpers import column, finish, metrics, run, small_config, start, stop, torchrun

from llm_tiny.config import load_config
from llm_tiny.train.checkpoint import load_checkpoint, load_model
from llm_tiny.train.loop import train
from llm_tiny.train.sharded import consolidate

pytestmark = pytest.mark.slow

STEPS = 30
FSDP = {"runtime": {"parallel": "fsdp"}}
LOGGED = ("step", "tokens", "train_loss", "lr", "grad_norm", "val_loss", "val_bpb")


def fsdp_config(tmp_path: Path, name: str = "fsdp.yaml", **train) -> Path:
    # eval_iters 3: 2 batches on rank 0, 1 on rank 1, which runs in step with a masked copy.
    train = {"max_iters": STEPS, "ckpt_interval": 5, "eval_interval": 10, "eval_iters": 3, **train}
    train.setdefault("log_dynamics", True)  # weight norms of sharded weights: a collective
    return small_config(tmp_path, name, train=train, **FSDP)


def logged(run_dir: Path) -> list[tuple[str, ...]]:
    return [tuple(r[c] for c in LOGGED) for r in metrics(run_dir)]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def llm_tiny(*args: str, timeout: float = 120):
    return run([sys.executable, "-m", "llm_tiny", *args], timeout)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> Path:
    """An uninterrupted FSDP run of STEPS steps (its config beside it, its data shared)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    proc = run(torchrun("train", str(fsdp_config(tmp))), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"done: step {STEPS}") == 1  # rank 0 alone logs
    assert len(metrics(tmp / "run")) == STEPS + 1
    dynamics = (tmp / "run" / "dynamics.csv").read_text().splitlines()
    assert dynamics[1].startswith("1,wte.weight,") and len(dynamics) > STEPS
    return tmp


def test_a_run_killed_with_kill_9_resumes_bit_for_bit(whole_run, tmp_path):
    (tmp_path / "data").symlink_to(whole_run / "data")
    shutil.copy(whole_run / "tok.json", tmp_path / "tok.json")
    cfg = fsdp_config(tmp_path)
    latest = tmp_path / "run" / "last.dcp" / "LATEST"
    proc = start(torchrun("train", str(cfg)))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.exists() and int(latest.read_text().split("-")[1]) >= 10:
            stop(proc)  # kill -9 every rank, wherever each is
            break
        time.sleep(0.01)
    finish(proc, 60)
    assert proc.returncode == -9, "the run ended before it could be killed"
    saved = load_checkpoint(tmp_path / "run" / "last.dcp", weights=False)["step"]
    assert 10 <= saved < STEPS

    proc = run(torchrun("train", str(cfg), "--resume"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {tmp_path / 'run' / 'last.dcp'} at step {saved}" in proc.stdout
    assert logged(tmp_path / "run") == logged(whole_run / "run")  # every logged digit
    a = load_checkpoint(tmp_path / "run" / "last.dcp")
    b = load_checkpoint(whole_run / "run" / "last.dcp")
    assert same_tensors(a["model"], b["model"])
    assert len(a["rng"]) == 2 and a["step"] == STEPS


def test_reshards_to_one_process_and_back_and_consolidates(whole_run, tmp_path):
    src = whole_run / "run"
    cons = tmp_path / "last.pt"
    proc = llm_tiny("consolidate", str(src / "last.dcp"), "--out", str(cons))
    assert proc.returncode == 0, proc.stderr[-2000:]
    whole, sharded = load_checkpoint(cons), load_checkpoint(src / "last.dcp")
    assert same_tensors(whole["model"], sharded["model"])
    assert whole["step"] == STEPS and whole["optimizer"]["state"]

    # Four continuations to 36 steps: 2 processes (FSDP) and 1 process (2 accumulation steps,
    # the same windows), each from the sharded checkpoint and from the consolidated file.
    def continued(name: str, form: str, fsdp: bool) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "run").mkdir()
        if form == "dcp":
            shutil.copytree(src / "last.dcp", d / "run" / "last.dcp")
        else:
            shutil.copy(cons, d / "run" / "last.pt")
        shutil.copy(src / "metrics.csv", d / "run" / "metrics.csv")
        args = [f"--train.out_dir={d / 'run'}", "--train.max_iters=36", "--train.resume=always"]
        cfg = whole_run / "fsdp.yaml"
        if fsdp:
            proc = run(torchrun("train", str(cfg), *args), timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
        else:
            one = ["--runtime.parallel=ddp", "--train.grad_accum_steps=2"]
            train(load_config(cfg, args + one), progress=False, log=lambda _: None)
        return d / "run"

    fsdp_dcp, fsdp_pt = continued("a", "dcp", True), continued("b", "pt", True)
    one_dcp, one_pt = continued("c", "dcp", False), continued("d", "pt", False)
    # The same world size from either form: bit for bit.
    assert logged(fsdp_dcp) == logged(fsdp_pt)
    assert logged(one_dcp) == logged(one_pt)
    # 1 process writes .pt, 2 with FSDP .dcp; the other form is gone.
    assert (one_dcp / "last.pt").is_file() and not (one_dcp / "last.dcp").exists()
    assert (fsdp_pt / "last.dcp").is_dir() and not (fsdp_pt / "last.pt").exists()
    assert same_tensors(*(load_checkpoint(d / "last.pt")["model"] for d in (one_dcp, one_pt)))
    # 2 -> 1: the same values, continued; the sums differ in the last float bits only.
    two = [float(r["train_loss"]) for r in metrics(fsdp_dcp)[STEPS + 1 :]]
    one = [float(r["train_loss"]) for r in metrics(one_dcp)[STEPS + 1 :]]
    assert len(two) == len(one) == 6
    np.testing.assert_allclose(one, two, rtol=1e-5)
    # Evaluation over unevenly split batches scores what one process scores.
    for key in ("val_loss", "full_val_loss"):
        two_val = [float(r[key]) for r in metrics(fsdp_dcp) if r[key]]
        one_val = [float(r[key]) for r in metrics(one_dcp) if r[key]]
        assert len(two_val) == len(one_val) >= 1
        np.testing.assert_allclose(one_val, two_val, rtol=1e-5)


def test_sample_eval_and_export_read_a_sharded_checkpoint(whole_run, tmp_path):
    ckpt = str(whole_run / "run" / "last.dcp")
    sample = llm_tiny("sample", "--ckpt", ckpt, "--max-new-tokens", "8", "--seed", "1")
    assert sample.returncode == 0 and sample.stdout.strip(), sample.stderr[-2000:]
    ev = llm_tiny("eval", "--ckpt", ckpt)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert (
        ev.stdout.split("\n")[-2]
        == llm_tiny("eval", "--ckpt", str(whole_run / "run")).stdout.split("\n")[-2]
    )
    # serve and chat load through `load_model`, as sample does: in this process, alone.
    model, tokenizer, cfg, _ = load_model(ckpt)
    assert same_tensors(dict(model.state_dict()), load_checkpoint(ckpt)["model"])
    assert cfg.runtime.parallel == "fsdp" and tokenizer.vocab_size == 256
    out = tmp_path / "hf"
    exp = llm_tiny("export", "--ckpt", ckpt, "--out", str(out))
    assert exp.returncode == 0, exp.stderr[-2000:]
    assert (out / "config.json").is_file()


def test_bad_input_is_one_line_and_exit_2(whole_run, tmp_path):
    cfg = str(whole_run / "fsdp.yaml")
    out = f"--train.out_dir={tmp_path / 'new'}"
    alone = llm_tiny("train", cfg, out)
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines() == [
        "llm_tiny train: error: runtime.parallel: fsdp shards the model over several processes; "
        "launch with torchrun --nproc-per-node N (N >= 2), or use runtime.parallel: ddp"
    ]
    # Another model's sharded checkpoint, read by one process: named, nothing trained.
    other = llm_tiny("train", cfg, f"--train.out_dir={whole_run / 'run'}", "--resume",
                     "--runtime.parallel=ddp", "--model.n_layer=3")  # fmt: skip
    assert other.returncode == 2
    assert "cannot resume from" in other.stderr and "model.n_layer is 2" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    # A weight with 1 row cannot be sharded over 2 processes: every rank says so and exits 2.
    tiny = ["--model.n_embd=1", "--model.n_head=1", out]
    proc = run(torchrun("train", cfg, *tiny), timeout=240)
    assert proc.returncode != 0
    assert "/llm_tiny/" not in proc.stderr  # no traceback of a rank (torchrun prints its own)
    assert proc.stderr.count("error: runtime.parallel: fsdp cannot shard") == 2
    assert "exitcode  : 2" in proc.stderr


def test_muon_on_sharded_matrices_matches_one_process(tmp_path):
    # Muon's orthogonalisation of each whole matrix, carried out on the shards (DTensor).
    steps = {"max_iters": 8, "eval_interval": 8, "ckpt_interval": 8, "eval_at_start": False}
    muon = {"name": "muon"}
    two = small_config(tmp_path, "two.yaml", train=steps, optim=muon, **FSDP)
    proc = run(torchrun("train", str(two)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = column(tmp_path / "run", "train_loss")
    one = {**steps, "grad_accum_steps": 2, "out_dir": str(tmp_path / "one")}
    train(load_config(small_config(tmp_path, "one.yaml", train=one, optim=muon)), progress=False)
    whole = column(tmp_path / "one", "train_loss")
    assert len(sharded) == len(whole) == 8
    np.testing.assert_allclose(sharded, whole, rtol=1e-5)
    # Its sharded checkpoint holds both optimizers' states, which load into one process.
    consolidate(tmp_path / "run" / "last.dcp", tmp_path / "muon.pt")
    ckpt = load_checkpoint(tmp_path / "muon.pt")
    muon_state, adamw_state = (o["state"] for o in ckpt["optimizer"]["optimizers"])
    assert all("momentum_buffer" in v for v in muon_state.values()) and len(muon_state) == 8
    assert all("exp_avg" in v for v in adamw_state.values())
    want = load_checkpoint(tmp_path / "one" / "last.pt")["optimizer"]["optimizers"][0]["state"]
    for key, value in want.items():
        torch.testing.assert_close(muon_state[key]["momentum_buffer"], value["momentum_buffer"],
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
