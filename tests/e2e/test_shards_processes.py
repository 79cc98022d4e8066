"""Preparation as a process: interrupted and continued, and its memory on a large corpus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import corpus_jsonl, data_cfg, shard_hashes

from llm_tiny.data import prepare_data

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "tiny.txt"


def test_an_interrupted_preparation_continues_to_the_same_shards(tmp_path):
    jsonl = corpus_jsonl(tmp_path / "c.jsonl", copies=6)
    reference = prepare_data(data_cfg(tmp_path / "ref", jsonl, workers=1), log=lambda _: None)
    config = tmp_path / "run.yaml"
    data = {
        "input": [str(jsonl)], "tokenizer": str(tmp_path / "ref" / "tok.json"), "vocab_size": 300,
        "shard_tokens": 5000, "workers": 1,
    }  # fmt: skip
    config.write_text(yaml.safe_dump({"data": data, "train": {"out_dir": str(tmp_path / "run")}}))
    cmd = [sys.executable, "-m", "llm_tiny", "prepare", str(config)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = tmp_path / "run" / "data" / "progress.json"
    deadline = time.monotonic() + 60
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the preparation finished before it could be interrupted")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "data" / "meta.json").exists()  # incomplete, and says so
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "continuing an interrupted preparation" in done.stdout
    assert shard_hashes(tmp_path / "run" / "data") == shard_hashes(reference.data_dir)
    assert not progress.exists()


@pytest.mark.slow
def test_memory_stays_bounded_on_a_large_corpus(tmp_path):
    # 40 MB of JSONL through `prepare` with two workers: the peak RSS of the process tree
    # stays far below the corpus (a preparation that held the ids or the text would not).
    jsonl = tmp_path / "big.jsonl"
    speeches = [s for s in CORPUS.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    with jsonl.open("w") as f:
        written, copy = 0, 0
        while written < 40 << 20:
            for s in speeches:
                line = json.dumps({"text": f"{copy}\n{s}"}) + "\n"
                f.write(line)
                written += len(line)
            copy += 1
    prepare_data(data_cfg(tmp_path / "tok", corpus_jsonl(tmp_path / "small.jsonl")), log=print)
    script = (
        "import resource, sys; from llm_tiny.config import DataConfig; "
        "from llm_tiny.data import prepare_data; "
        f"prepare_data(DataConfig(input=({str(jsonl)!r},), tokenizer={str(tmp_path / 'tok' / 'tok.json')!r}, "
        f"vocab_size=300, data_dir={str(tmp_path / 'data')!r}, workers=2), log=lambda _: None); "
        "own = peak_kib(); "
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; print(own, kids)"
    )
    # NOTE: this process's own peak is VmHWM, the peak of its address space since `exec`; on
    # Linux `ru_maxrss` is carried across `exec` and so reports the pytest process that
    # started it (about 900 MB late in a full run) when that is larger.
    script = (
        "import resource\n"
        "def peak_kib():\n"
        "    try:\n"
        "        with open('/proc/self/status') as f:\n"
        "            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))\n"
        "    except OSError:\n"
        "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    ) + script
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    own_kib, child_kib = map(int, done.stdout.split())
    assert own_kib < 600 * 1024 and child_kib < 600 * 1024, (own_kib, child_kib)
