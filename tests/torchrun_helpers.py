"""Launching `torchrun` from the tests: small run configs, time-bounded process groups.

A launch that runs past its time is killed with every process under it (`stop`), so no rank
is left hanging after a test, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "tiny.txt"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def small_config(tmp_path: Path, name: str = "config.yaml", **sections: dict[str, Any]) -> Path:
    """A run config for a 2-layer model on the first 20,000 characters of data/tiny.txt, with
    its data, tokenizer and run directory under `tmp_path`; `sections` update its sections."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    raw: dict[str, dict[str, Any]] = {
        "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "data": {
            "input": [str(corpus)],
            "tokenizer": str(tmp_path / "tok.json"),
            "vocab_size": 256,
            "data_dir": str(tmp_path / "data"),
        },
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 3},
        "train": {
            "out_dir": str(tmp_path / "run"),
            "max_iters": 12,
            "batch_size": 4,
            "eval_interval": 6,
            "ckpt_interval": 6,
            "log_interval": 1,
            "eval_batch_size": 8,
            "threads": 1,
            "device": "cpu",
            "sample_at_end": False,
        },
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """The command line of a one-machine torchrun of `python -m llm_tiny ARGS`."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "llm_tiny", *args,
    ]  # fmt: skip


def start(cmd: list[str]) -> subprocess.Popen:
    """Start `cmd` in its own session."""
    return subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (Linux /proc). torchrun starts each rank in a session of its
    own, so a signal to torchrun's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to `proc` (torchrun) and to every process under it (its ranks)."""
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for `proc` at most `timeout` seconds; past that, kill every rank and fail."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        out, err = proc.communicate()
        raise AssertionError(
            f"{proc.args} ran past {timeout} s; killed\nstdout: {out[-2000:]}\nstderr: {err[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `cmd` to its end, bounded in time (`finish`)."""
    return finish(start(cmd), timeout)


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def column(run_dir: Path, name: str) -> list[float]:
    """The logged values of metrics.csv's column `name`, in step order."""
    return [float(r[name]) for r in metrics(run_dir) if r[name]]
