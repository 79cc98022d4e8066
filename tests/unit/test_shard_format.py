"""The shard file format: a header, and shards that read back as one stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm_tiny.data.batches import TokenWindows
from llm_tiny.data.shards import HEADER_BYTES, ShardWriter, TokenStream, read_header
from llm_tiny.errors import UserError


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
