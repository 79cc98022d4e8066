"""Checkpoint files: atomic writes (kill -9), validation on load, RNG states, compatibility."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from llm_tiny.config import ModelConfig, config_to_dict, load_config
from llm_tiny.errors import UserError
from llm_tiny.model import TinyGPT
from llm_tiny.runtime import capture_rng, restore_rng
from llm_tiny.train.checkpoint import (
    FORMAT,
    VERSION,
    check_resume_compatible,
    clean_state_dict,
    load_checkpoint,
    resolve_checkpoint_path,
    save_checkpoint,
    unwrap_model,
)

ROOT = Path(__file__).resolve().parents[2]


def minimal(step: int = 0, **extra) -> dict:
    cfg = load_config(None, ["--model.vocab_size=512"])
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config_to_dict(cfg),
        "model": {"w": torch.full((3,), float(step))},
        "step": step,
        "tokenizer": "{}",
        "tokenizer_fingerprint": "ab" * 32,
        **extra,
    }


def test_round_trip_with_rng_states_under_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached Gaussian in NumPy's state
    state = capture_rng()
    expected = (random.random(), np.random.random(), torch.rand(2))
    path = save_checkpoint(minimal(5, rng=[state]), tmp_path / "last.pt")
    assert not (tmp_path / "last.pt.tmp").exists()
    ckpt = load_checkpoint(path)  # weights_only=True inside
    assert ckpt["step"] == 5 and (ckpt["model"]["w"] == 5).all()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng(ckpt["rng"][0])
    assert (random.random(), np.random.random()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "checkpoint not found"),
        (
            b"definitely not a zip file",
            r"is not an llm_tiny checkpoint \(not a PyTorch \.pt file\)",
        ),
        ("truncated", "not a readable checkpoint"),
        ({"format": "something.else", "version": 1}, "not an llm_tiny checkpoint"),
        ({"format": FORMAT, "version": 99}, "checkpoint version 99 is not supported"),
        ({"format": FORMAT, "version": VERSION, "step": 1}, "checkpoint is missing config"),
        ([1, 2, 3], "not an llm_tiny checkpoint"),
        ("pickled", r"is not an llm_tiny checkpoint \(it holds Python objects"),
    ],
)
def test_bad_checkpoints_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        save_checkpoint(minimal(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "pickled":  # a torch file with a class in it: never unpickled
        torch.save({"x": Path("a")}, path)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert "weights_only" not in str(info.value)  # never suggest loading with code execution


def test_a_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_resolve_checkpoint_path(tmp_path):
    with pytest.raises(UserError, match="no checkpoint in this directory"):
        resolve_checkpoint_path(tmp_path)
    with pytest.raises(UserError, match="not found"):
        resolve_checkpoint_path(tmp_path / "missing")
    save_checkpoint(minimal(1), tmp_path / "last.pt")
    assert resolve_checkpoint_path(tmp_path) == tmp_path / "last.pt"  # no best.pt yet
    save_checkpoint(minimal(2), tmp_path / "best.pt")
    assert resolve_checkpoint_path(tmp_path) == tmp_path / "best.pt"
    # A misspelt file in a run directory names the checkpoints that are there.
    with pytest.raises(
        UserError, match=r"nope.pt: not found; the checkpoints in .* are best.pt, last.pt"
    ):
        resolve_checkpoint_path(tmp_path / "nope.pt")
    assert resolve_checkpoint_path(tmp_path, "last.pt") == tmp_path / "last.pt"
    assert resolve_checkpoint_path(tmp_path / "last.pt") == tmp_path / "last.pt"


def test_resume_compatibility_names_the_difference():
    ckpt = minimal()
    same = load_config(None, ["--model.vocab_size=512", "--train.max_iters=5000", "--optim.lr=0.1"])
    check_resume_compatible(ckpt, same, "ab" * 32, "last.pt")  # budget and lr may change
    wider = load_config(None, ["--model.vocab_size=512", "--model.n_embd=64"])
    with pytest.raises(
        UserError, match=r"model.n_embd is 128 in the checkpoint but 64 in the config"
    ):
        check_resume_compatible(ckpt, wider, "ab" * 32, "last.pt")
    with pytest.raises(UserError, match="the tokenizer differs"):
        check_resume_compatible(ckpt, same, "cd" * 32, "last.pt")


WRITER = textwrap.dedent(
    """
    import sys, torch
    from llm_tiny.train.checkpoint import FORMAT, VERSION, save_checkpoint
    # 1000 tensors (16 MB) all holding the step: a torn file would show mixed values or a bad
    # zip. Refilling them takes ~3 ms, writing them ~50-100 ms: the kill lands mid-write.
    weights = {f"w{i}": torch.zeros(4000) for i in range(1000)}
    step = 0
    while True:
        for w in weights.values():
            w.fill_(float(step))
        save_checkpoint({"format": FORMAT, "version": VERSION, "config": {}, "model": weights,
                         "step": step, "tokenizer": ""}, sys.argv[1])
        print(step, flush=True)
        step += 1
    """
)


def test_kill_9_while_writing_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    killed_mid_write = False
    for attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            for _ in range(2):  # at least two complete checkpoints
                assert proc.stdout.readline().strip() != ""
            time.sleep(0.01 + 0.01 * attempt)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        # A kill inside save_checkpoint leaves the temp file behind; retry until one did.
        killed_mid_write = (tmp_path / "last.pt.tmp").exists()
        (tmp_path / "last.pt.tmp").unlink(missing_ok=True)
        ckpt = load_checkpoint(path)
        assert ckpt["step"] >= 1
        assert all((w == ckpt["step"]).all() for w in ckpt["model"].values())
        if killed_mid_write:
            break
    assert killed_mid_write, "never managed to kill the writer in the middle of a write"


CFG = ModelConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16)
IDS = torch.arange(8).view(1, 8)


def test_compiled_and_wrapped_models_save_clean_state_dicts(tmp_path):
    model = TinyGPT(CFG)
    compiled = torch.compile(model)  # only wraps; nothing compiles until it is called
    assert unwrap_model(compiled) is model
    state = clean_state_dict(compiled)
    assert list(state) == list(model.state_dict())
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state)
    wrapped = nn.DataParallel(compiled)  # the `.module` wrapper, as DDP adds
    assert unwrap_model(wrapped) is model
    torch.save(clean_state_dict(wrapped), tmp_path / "ckpt.pt")
    torch.manual_seed(3)
    fresh = TinyGPT(CFG)
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    torch.testing.assert_close(fresh(IDS)[0], model(IDS)[0])
    # a state dict saved from a wrapper by someone else loses its prefixes too
    prefixed = {"module._orig_mod." + k: v for k, v in model.state_dict().items()}
    assert list(clean_state_dict(prefixed)) == list(model.state_dict())
    with pytest.raises(TypeError, match="expected a TinyGPT"):
        unwrap_model(nn.Linear(2, 2))
