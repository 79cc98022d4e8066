"""Test-wide settings, the tier markers, and the fixtures that more than one tier uses.

The tiers are the folders (STYLE.md item 19): `unit` (pure functions and tiny random models,
no process started: tests/unit/conftest.py enforces it), `integration` (in-process training,
resume, the server, export round trips) and `e2e` (commands as a user runs them: CLIs and README
lines as subprocesses, notebooks, the browser, torchrun, benchmarks, the GPU dry run). Each test
gets its folder's marker, so `-m unit`, `-m "not e2e"` and the like select by tier.

NOTE: the suite runs on 2-core machines, often beside subprocess tests (torchrun, CLIs). Tiny
models gain nothing from a second intra-op thread and lose a lot when threads contend, so
in-process tests and the subprocesses they start use one thread each.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Mark each test with its tier, the name of the folder under tests/ that holds it."""
    tests = Path(__file__).resolve().parent
    for item in items:
        parts = item.path.resolve().relative_to(tests).parts
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny trained run for the whole session, trained in-process in a few seconds: a
    2-layer, 32-wide byte-level model, 6 steps on 6 KB of Tiny Shakespeare, evaluated at steps
    0, 3 and 6, training dynamics logged every 2 steps. Its directory holds best.pt, last.pt,
    config.yaml, metrics.csv and dynamics.csv; its prepared data is in `../data`.

    Shared: read it, never write into it. A test that must change a run copies it first
    (`shutil.copytree(tiny_run, tmp_path / "run")`)."""
    from llm_tiny.config import config_from_dict
    from llm_tiny.train.loop import train

    tmp = tmp_path_factory.mktemp("tiny_run")
    corpus = tmp / "corpus.txt"
    corpus.write_text((ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:6000])
    cfg = config_from_dict(
        {
            "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
            "data": {
                "input": [str(corpus)],
                "tokenizer": str(tmp / "tok.json"),
                "vocab_size": 256,
                "data_dir": str(tmp / "data"),
                "workers": 1,
            },
            "optim": {"lr": 3e-3, "warmup_iters": 2},
            "train": {
                "out_dir": str(tmp / "run"),
                "max_iters": 6,
                "batch_size": 8,
                "eval_interval": 3,
                "eval_iters": 2,
                "log_interval": 2,
                "log_dynamics": True,
                "threads": 1,
                "device": "cpu",
                "sample_at_end": False,
            },
        }
    )
    result = train(cfg, progress=False, log=lambda _: None)
    assert result.step == 6
    return tmp / "run"


@pytest.fixture(scope="session")
def chat_run(tiny_run, tmp_path_factory) -> Path:
    """`tiny_run` fine-tuned for 6 steps on 200 short conversations (`helpers.sft_config`):
    a chat run, its tokenizer extended with the turn tokens. Shared: read it only."""
    from helpers import sft_config

    from llm_tiny.config import config_from_dict
    from llm_tiny.train.loop import train

    tmp = tmp_path_factory.mktemp("chat_run")
    result = train(config_from_dict(sft_config(tmp, tiny_run)), progress=False, log=lambda _: None)
    assert result.step == 6
    return tmp / "chat"
