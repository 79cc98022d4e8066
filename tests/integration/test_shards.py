"""Parallel preparation gives the same token shards with any number of worker processes. (The
shard format is tests/unit/test_shard_format.py; an interrupted preparation and its memory
are tests/e2e/test_shards_processes.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from llm_tiny.config import DataConfig
from llm_tiny.data import prepare_data

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "tiny.txt"


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
