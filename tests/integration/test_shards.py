"""Parallel preparation gives the same token shards with any number of worker processes. (The
shard format is tests/unit/test_shard_format.py; an interrupted preparation and its memory
are tests/e2e/test_shards_processes.py.)"""

from __future__ import annotations

from helpers import corpus_jsonl, data_cfg, shard_hashes

from llm_tiny.data import prepare_data


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
