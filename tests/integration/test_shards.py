"""Token shards: the header, a stream across shards, parallel preparation that gives the same
shards with any number of workers, and an interrupted preparation that continues exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from llm_tiny.config import DataConfig
from llm_tiny.data import prepare_data
from llm_tiny.data.batches import TokenWindows
from llm_tiny.data.shards import HEADER_BYTES, ShardWriter, TokenStream, read_header
from llm_tiny.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "tiny.txt"


def write_shards(tmp_path: Path, pieces: list[np.ndarray], shard_tokens: int) -> TokenStream:
    w = ShardWriter(tmp_path, "train", np.uint16, shard_tokens)
    for p in pieces:
        w.append(p)
    return TokenStream([tmp_path / s["file"] for s in w.close()])


def test_shards_have_a_header_and_read_back_as_one_stream(tmp_path):
    ids = np.arange(1000) % 300
    stream = write_shards(tmp_path, np.split(ids, [300, 650, 900]), shard_tokens=300)
    # A shard closes once full, between two appends: 300 | 350 | 250 + 100.
    assert [p.name for p in stream.paths] == [f"train_00000{i}.bin" for i in range(3)]
    assert read_header(stream.paths[1]) == (np.dtype(np.uint16), 350)
    assert stream.paths[1].stat().st_size == HEADER_BYTES + 2 * 350
    assert len(stream) == 1000 and (stream[0:1000] == ids).all()
    assert (stream[280:700] == ids[280:700]).all()  # across two shard boundaries
    starts = np.array([0, 295, 640, 899, 990])
    assert (stream.windows(starts, 10) == ids[starts[:, None] + np.arange(10)]).all()
    batches = TokenWindows(stream, block_size=16, batch_size=64, seed=0)
    x, y = batches.get_batch(3)
    assert (x[:, 1:] == y[:, :-1]).all() and x.shape == (64, 16)
    with pytest.raises(UserError, match="not an llm_tiny token shard"):
        (tmp_path / "bad.bin").write_bytes(b"\0" * 2000)
        read_header(tmp_path / "bad.bin")


def corpus_jsonl(path: Path, copies: int = 1) -> Path:
    speeches = [s for s in CORPUS.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    with path.open("w") as f:
        for c in range(copies):
            for i, s in enumerate(speeches):
                f.write(json.dumps({"text": f"{c}.{i}\n{s}"}) + "\n")
    return path


def data_cfg(tmp_path: Path, jsonl: Path, **kw) -> DataConfig:
    values = {
        "input": (str(jsonl),),
        "tokenizer": str(tmp_path / "tok.json"),
        "vocab_size": 300,
        "data_dir": str(tmp_path / "data"),
        "shard_tokens": 5000,
    }
    return DataConfig(**{**values, **kw})


def shard_hashes(data_dir: Path) -> dict[str, str]:
    meta = json.loads((data_dir / "meta.json").read_text())
    return {s["file"]: s["sha256"] for split in meta["splits"].values() for s in split["shards"]}


def test_one_or_two_workers_write_the_same_shards(tmp_path):
    jsonl = corpus_jsonl(tmp_path / "c.jsonl")
    one = prepare_data(data_cfg(tmp_path / "a", jsonl, workers=1), log=lambda _: None)
    tok = str(one.data_dir.parent / "tok.json")
    two = prepare_data(
        data_cfg(tmp_path / "b", jsonl, workers=2, tokenizer=tok), log=lambda _: None
    )
    assert len(shard_hashes(one.data_dir)) > 4  # several shards per split
    assert shard_hashes(one.data_dir) == shard_hashes(two.data_dir)
    assert one.meta["splits"] == two.meta["splits"]


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
        "own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; print(own, kids)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    own_kib, child_kib = map(int, done.stdout.split())
    assert own_kib < 600 * 1024 and child_kib < 600 * 1024, (own_kib, child_kib)
