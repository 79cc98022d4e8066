"""The README's commands run as written: every `python -m llm_tiny ...` line of its bash blocks
(and the shell lines that make their input files), against a small run standing in for
`out/tiny` and `out/smoke`. The `make` lines are exercised by tests/e2e/test_cli.py."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    runnable = ("python ", "printf ")
    return [line for line in lines if line.startswith(runnable)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory laid out like the clone after `make train` and `make smoke`, small."""
    tmp = tmp_path_factory.mktemp("readme")
    for folder in ("data", "configs", "llm_tiny", "tok"):
        shutil.copytree(ROOT / folder, tmp / folder, ignore=shutil.ignore_patterns("__pycache__"))
    small = [
        "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=32", "--data.vocab_size=300",
        "--train.max_iters=10", "--train.eval_iters=2", "--optim.warmup_iters=2",
        "--train.sample_at_end=false",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "llm_tiny", "train", "configs/tiny.yaml", *small]
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shutil.copytree(tmp / "out" / "tiny", tmp / "out" / "smoke")
    return tmp


def test_the_readme_shows_the_commands_this_test_runs():
    commands = readme_commands()
    assert len(commands) >= 8
    assert any("--beam-width" in c and "--no-repeat-ngram" in c for c in commands)


# A training command runs as written, cut down to a few steps (of a smaller model, unless it
# starts from a run's weights), each in a directory of its own: a run that starts from another
# run's weights takes that run's tokenizer, which another command's run may not share.
FEW_STEPS = " --train.max_iters=6 --train.eval_iters=2 --optim.warmup_iters=2"
SMALLER = " --model.n_layer=1"


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(workdir, command):
    if command.startswith("python -m llm_tiny train"):
        command = command.split("#")[0].rstrip()
        own = "out/readme_train_" + hashlib.sha1(command.encode()).hexdigest()[:8]
        smaller = "" if "--train.init_from" in command else SMALLER
        command += (
            f"{FEW_STEPS}{smaller} --train.sample_at_end=false --train.out_dir={own} --overwrite"
        )
    # `python` is this interpreter, as after `source .venv/bin/activate`.
    env_path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", "-c", command], cwd=workdir, capture_output=True, text=True,
        env={"PATH": env_path, "HOME": str(workdir)}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stderr}"
