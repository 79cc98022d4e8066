"""Data preparation (text -> .bin), the batch samplers and the evaluation windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_tiny.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from llm_tiny.data import (
    ExampleBatches,
    TokenArray,
    TokenWindows,
    eval_windows,
    open_split,
    prepare_data,
)
from llm_tiny.data.shards import ShardWriter, TokenStream
from llm_tiny.errors import UserError
from tok.bpe import Tokenizer
from tok.corpus import token_dtype
from tok.errors import TokenizerError

CORPUS = Path(__file__).resolve().parents[2] / "data" / "tiny.txt"


def quiet(_: str) -> None:
    """A log function that drops the lines."""


@pytest.fixture(scope="module")
def text() -> str:
    return CORPUS.read_text(encoding="utf-8")[:20_000]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory, text) -> Path:
    """A 300-token tokenizer of the corpus, trained once for the module."""
    path = tmp_path_factory.mktemp("tok") / "bpe.json"
    Tokenizer.train(text, 300).save(path)
    return path


def data_cfg(tmp_path: Path, tokenizer: Path, inputs: list[Path], **kw) -> DataConfig:
    values = {
        "input": tuple(map(str, inputs)),
        "tokenizer": str(tokenizer),
        "vocab_size": 300,
        "data_dir": str(tmp_path / "data"),
        "val_fraction": 0.1,
        # one process: unit tests start none (tests/integration/test_shards.py checks that
        # two workers write the same shards)
        "workers": 1,
    }
    values.update(kw)
    return DataConfig(**values)


def read_split(data, split: str) -> list[int]:
    stream = data.tokens(split)
    return stream[0 : len(stream)].tolist()


# ----------------------------------------------------------------------------- prepare


def test_prepare_writes_exactly_the_encoded_splits(tmp_path, text, tokenizer_file):
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    data = prepare_data(data_cfg(tmp_path, tokenizer_file, [src]), log=quiet)
    tok = Tokenizer.load(tokenizer_file)
    train, val = read_split(data, "train"), read_split(data, "val")
    train_text, val_text = tok.decode(train), tok.decode(val)
    assert train_text + val_text == text
    # The split is the start of a line at or just after 90 % of the bytes.
    n = len(text.encode("utf-8"))
    split = len(train_text.encode("utf-8"))
    assert train_text.endswith("\n") and split >= 0.9 * n
    assert "\n" not in text.encode("utf-8")[int(0.9 * n) : split - 1].decode("utf-8").strip()
    # Each split's ids are the tokenizer's encoding of that split's text, whole.
    assert train == tok.encode(train_text)
    assert val == tok.encode(val_text)
    meta = json.loads((data.data_dir / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 300
    shards = meta["splits"]["train"].pop("shards")
    assert meta["splits"]["train"] == {
        "bytes": split,
        "tokens": len(train),
        "scored_bytes": split - len(tok.token_bytes(train[0])),
    }
    assert [s["tokens"] for s in shards] == [len(train)]  # one shard of 100M tokens at most
    assert meta["splits"]["val"]["bytes"] == n - split
    assert meta["splits"]["val"]["scored_bytes"] == n - split - len(tok.token_bytes(val[0]))
    assert meta["tokenizer_fingerprint"] == tok.fingerprint


def test_streaming_in_small_blocks_gives_the_same_ids(tmp_path, text, tokenizer_file):
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    whole = prepare_data(data_cfg(tmp_path / "a", tokenizer_file, [src]), log=quiet)
    blocks = prepare_data(
        data_cfg(tmp_path / "b", tokenizer_file, [src]), log=quiet, block_bytes=300
    )
    for split in ("train", "val"):
        assert read_split(whole, split) == read_split(blocks, split)


def test_several_inputs_are_concatenated_in_order(tmp_path, text, tokenizer_file):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(text[:9000], encoding="utf-8")
    b.write_text(text[9000:], encoding="utf-8")
    data = prepare_data(data_cfg(tmp_path, tokenizer_file, [a, b]), log=quiet)
    tok = data.tokenizer
    got = tok.decode(read_split(data, "train") + read_split(data, "val"))
    assert got == text


def test_prepare_is_cached_and_notices_changes(tmp_path, text, tokenizer_file):
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    cfg = data_cfg(tmp_path, tokenizer_file, [src])
    first = prepare_data(cfg, log=quiet)
    stamp = {p.name: p.stat().st_mtime_ns for p in first.data_dir.iterdir()}
    lines: list[str] = []
    again = prepare_data(cfg, log=lines.append)
    assert {p.name: p.stat().st_mtime_ns for p in again.data_dir.iterdir()} == stamp
    assert lines == []

    src.write_text(text.replace("the", "THE"), encoding="utf-8")  # same size, new content
    changed = prepare_data(cfg, log=lines.append)
    assert changed.meta["input_sha256"] != first.meta["input_sha256"]
    assert "THE" in changed.tokenizer.decode(read_split(changed, "train"))
    assert any("changed" in line for line in lines)

    other_tok = tmp_path / "byte.json"
    Tokenizer.train(text, 256).save(other_tok)
    bytes_cfg = data_cfg(tmp_path, other_tok, [src], vocab_size=256)
    byte_level = prepare_data(bytes_cfg, log=quiet)
    assert byte_level.meta["tokenizer_fingerprint"] != changed.meta["tokenizer_fingerprint"]
    assert read_split(byte_level, "train") == list(
        src.read_bytes()[: byte_level.split("train")["bytes"]]
    )


def test_token_dtype_widens_past_uint16():
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32


def test_bad_inputs_are_one_line_user_errors(tmp_path, tokenizer_file):
    missing = tmp_path / "nope.txt"
    with pytest.raises(TokenizerError, match=r"nope.txt not found"):
        prepare_data(data_cfg(tmp_path, tokenizer_file, [missing]), log=quiet)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match=r"empty.txt is empty"):
        prepare_data(data_cfg(tmp_path, tokenizer_file, [empty]), log=quiet)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"hello\nworld\n" + b"\xff\xfe" + b"more\n" * 10)
    # The check is tok's (`tok.corpus`), so it raises TokenizerError: one line at the CLI too.
    bad = r"bin.txt: not UTF-8 text \(invalid byte at offset 12\)"
    with pytest.raises(TokenizerError, match=bad):
        prepare_data(data_cfg(tmp_path, tokenizer_file, [binary]), log=quiet)
    ok = tmp_path / "ok.txt"
    ok.write_text("some text\n" * 50)
    with pytest.raises(UserError, match=r"data.vocab_size is 512 but the existing tokenizer"):
        prepare_data(data_cfg(tmp_path, tokenizer_file, [ok], vocab_size=512), log=quiet)
    assert not list((tmp_path / "data").glob("*"))  # nothing was left behind


def test_a_tokenizer_is_trained_when_missing(tmp_path, text):
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    tok_path = tmp_path / "tok" / "new.json"
    lines: list[str] = []
    data = prepare_data(data_cfg(tmp_path, tok_path, [src], vocab_size=260), log=lines.append)
    assert tok_path.is_file() and data.tokenizer.vocab_size == 260
    assert Tokenizer.load(tok_path).fingerprint == data.tokenizer.fingerprint
    assert any("training a 260-token" in line for line in lines)


# ----------------------------------------------------------------------------- batches


def windows_source(tmp_path: Path, tokens: np.ndarray, **kw) -> TokenWindows:
    writer = ShardWriter(tmp_path, "train", np.uint16, shard_tokens=10**9)
    writer.append(tokens)
    stream = TokenStream([tmp_path / s["file"] for s in writer.close()])
    return TokenWindows(stream, **{"block_size": 8, "batch_size": 4, "seed": 7, **kw})


def test_batches_are_shifted_windows_of_the_data(tmp_path):
    tokens = np.arange(1000) % 997
    src = windows_source(tmp_path, tokens)
    x, y = src.get_batch(step=3)
    assert x.shape == y.shape == (4, 8)
    assert (x[:, 1:] == y[:, :-1]).all()
    for row in x.numpy():
        start = int(np.flatnonzero(tokens == row[0])[0])
        assert (tokens[start : start + 8] == row).all()


def test_batches_depend_only_on_seed_and_step(tmp_path):
    src = windows_source(tmp_path, np.arange(5000))
    a = src.get_batch(5)[0]
    src.get_batch(6)
    again = windows_source(tmp_path, np.arange(5000)).get_batch(5)[0]
    assert (a == src.get_batch(5)[0]).all() and (a == again).all()
    assert not (a == src.get_batch(6)[0]).all()
    assert not (a == windows_source(tmp_path, np.arange(5000), seed=8).get_batch(5)[0]).all()


def test_micro_batches_are_slices_of_one_global_batch(tmp_path):
    # batch 8 in one piece == 4 micro-batches of 2 (accumulation) == 2 ranks x 2 micro-steps.
    tokens = np.arange(5000)
    whole = windows_source(tmp_path, tokens, batch_size=8).get_batch(2)[0]
    four = windows_source(tmp_path, tokens, batch_size=2, micro_batches=4)
    parts = [four.get_batch(2, m)[0] for m in range(4)]
    assert (whole == np.concatenate(parts)).all()
    with pytest.raises(ValueError, match="micro"):
        four.get_batch(2, 4)


def test_sampler_state_round_trips(tmp_path):
    src = windows_source(tmp_path, np.arange(5000), seed=11)
    other = windows_source(tmp_path, np.arange(5000), seed=0)
    other.load_state_dict(src.state_dict())
    assert (other.get_batch(9)[0] == src.get_batch(9)[0]).all()
    with pytest.raises(UserError, match=r"data\.kind"):
        other.load_state_dict({"kind": "examples", "seed": 1})


def test_split_shorter_than_a_block_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"has 8 tokens, fewer than model.block_size \+ 1 = 9"):
        windows_source(tmp_path, np.arange(8))


# ----------------------------------------------------------------------------- evaluation windows


def test_eval_windows_examples():
    assert eval_windows(10, 4) == [(0, 4, 0), (4, 8, 0), (5, 9, 3)]
    assert eval_windows(9, 4) == [(0, 4, 0), (4, 8, 0)]
    assert eval_windows(3, 4) == [(0, 2, 0)]
    assert eval_windows(1, 4) == []
    with pytest.raises(ValueError, match="stride"):
        eval_windows(10, 4, stride=5)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 300), st.integers(1, 40), st.data())
def test_eval_windows_score_every_token_once(n, block, data):
    stride = data.draw(st.one_of(st.none(), st.integers(1, block)))
    windows = eval_windows(n, block, stride)
    scored = [b + 1 + j for b, e, first in windows for j in range(first, e - b)]
    assert scored == list(range(1, n))  # each target once, in order; token 0 never
    for k, (b, e, first) in enumerate(windows):
        assert 0 <= b < e <= n - 1 and e - b <= block
        if k > 0 and stride is not None and e - b == block:
            assert first >= block - stride  # at least block - stride tokens of context


def test_window_batches_reproduce_the_stream(tmp_path):
    tokens = np.arange(100) * 3
    src = windows_source(tmp_path, tokens, block_size=16)
    ys = [y[y != -1].numpy() for _, y in src.iter_eval_batches(batch_size=3, stride=5)]
    assert (np.concatenate(ys) == tokens[1:]).all()
    # Ids in memory (`eval --input FILE`) give the same batches as the split's file.
    in_memory = TokenArray(tokens, block_size=16, device="cpu").iter_eval_batches(3, stride=5)
    for (x, y), (x_file, y_file) in zip(in_memory, src.iter_eval_batches(3, stride=5), strict=True):
        assert (x == x_file).all() and (y == y_file).all()
    assert src.eval_targets(batch_size=3) == 99
    # 7 windows (6 of 16 targets, the last scoring 3) in 3 batches of 3: a subset of 2 batches
    # takes the first and the last, the rest is the middle one, and together they are all.
    assert src.eval_batches(3, max_batches=2) == [0, 2]
    assert src.eval_batches(3, max_batches=2, rest=True) == [1]
    got = sum(int((y != -1).sum()) for _, y in src.iter_eval_batches(3, max_batches=2))
    assert got == src.eval_targets(batch_size=3, max_batches=2) == 16 * 3 + 3
    rest = sum(int((y != -1).sum()) for _, y in src.iter_eval_batches(3, 2, rest=True))
    assert rest == src.eval_targets(3, 2, rest=True) == 99 - got
    shards = [list(src.iter_eval_batches(2, rank=r, world_size=2)) for r in range(2)]
    assert sum(int((y != -1).sum()) for s in shards for _, y in s) == 99


# ----------------------------------------------------------------------------- examples


@pytest.fixture()
def examples_data(tmp_path, tokenizer_file):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(40):
        a, b = rng.integers(0, 100, size=2)
        lines.append(f"Max({a},{b})={max(a, b)}")
    src = tmp_path / "max.txt"
    src.write_text("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n")
    cfg = data_cfg(tmp_path, tokenizer_file, [src], kind="examples", val_fraction=0.25)
    return prepare_data(cfg, log=quiet), lines


def test_examples_mask_the_prompt_and_cover_the_answer(examples_data):
    data, lines = examples_data
    tok = data.tokenizer
    assert data.split("train")["examples"] == 30 and data.split("val")["examples"] == 10
    cfg = RunConfig(model=ModelConfig(block_size=24), train=TrainConfig(batch_size=6, seed=0))
    val = open_split(data, "val", cfg, batch_size=4)
    answers = []
    for x, y in val.iter_eval_batches(batch_size=4):
        for xr, yr in zip(x.numpy(), y.numpy()):
            scored = yr != -1
            answers.append(tok.decode(yr[scored].tolist()))
            # The inputs at the scored positions end the prompt and continue the answer.
            first = int(np.flatnonzero(scored)[0])
            assert tok.decode(xr[: first + 1].tolist()).endswith("=")
    assert answers == [line.split("=", 1)[1] + "\n" for line in lines[30:]]
    assert val.eval_targets(4) == data.split("val")["scored_tokens"]
    train = open_split(data, "train", cfg)
    x, y = train.get_batch(0)
    assert x.shape == (6, 24)
    for yr in y.numpy():
        assert tok.decode(yr[yr != -1].tolist()).endswith("\n")
    assert train.state_dict() == {"kind": "examples", "seed": 0}


def test_examples_errors(tmp_path, tokenizer_file, examples_data):
    data, _ = examples_data
    with pytest.raises(UserError, match=r"more than model.block_size \+ 1 = 5"):
        index = np.load(data.data_dir / "train.idx.npy")
        ExampleBatches(data.tokens("train"), index, 4, 2, 0)
    bad = tmp_path / "bad.txt"
    bad.write_text("Max(1,2)=2\nMax(3,4) 4\nMax(5,6)=6\n")
    cfg = data_cfg(tmp_path / "b", tokenizer_file, [bad], kind="examples")
    with pytest.raises(UserError, match=r"bad.txt:2: no answer separator '='"):
        prepare_data(cfg, log=quiet)


def test_ranks_read_disjoint_slices_that_cover_one_process_and_resume_alike(tmp_path):
    # W ranks x A micro-steps (rank r's micro-step m is global micro-batch r * A + m, as the
    # trainer draws them, DDP and FSDP alike) read, step by step, exactly the windows of one
    # process taking all W * A * B rows at once; a source restored from a checkpoint's sampler
    # state at step k reads the same from k on, whatever the number of ranks that saved it.
    tokens, W, A, B = np.arange(5000) % 4999, 2, 2, 3
    for d in ("one", "ranks", "resumed"):
        (tmp_path / d).mkdir()
    one = windows_source(tmp_path / "one", tokens, batch_size=W * A * B)
    ranks = windows_source(tmp_path / "ranks", tokens, batch_size=B, micro_batches=W * A)
    resumed = windows_source(tmp_path / "resumed", tokens, batch_size=B, micro_batches=W * A)
    resumed.load_state_dict(ranks.state_dict())
    for step in range(6):
        whole = one.get_batch(step)[0]
        slices = [ranks.get_batch(step, r * A + m)[0] for r in range(W) for m in range(A)]
        assert (np.concatenate(slices) == whole).all()
        assert sum(len(s) for s in slices) == len(whole)  # each row read by one rank, once
        if step >= 3:
            again = [resumed.get_batch(step, r * A + m)[0] for r in range(W) for m in range(A)]
            assert all((a == b).all() for a, b in zip(again, slices))
