"""The encoder and decoder: round trips, special tokens, the tiktoken fast path, files."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tok.bpe import StreamDecoder, Tokenizer
from tok.errors import TokenizerError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "data" / "tiny.txt"
HAS_TIKTOKEN = importlib.util.find_spec("tiktoken") is not None
needs_tiktoken = pytest.mark.skipif(not HAS_TIKTOKEN, reason="tiktoken is not installed")

# Text that stresses pre-tokenization: emoji (with modifiers), CJK, combining marks, \r\n,
# long whitespace runs, contractions, digits, Unicode spaces and separators.
_PIECES = [
    "a", "The", " cat", "'s", "'LL", "don't", "123", "4567", ".", ",!?", " ", "   ", "\t",
    "\n", "\n\n", "\r\n", "  \n  ", "é", "e\u0301", "n\u0303\u0303", "中文", "日本語", "😀",
    "👍🏽", "👨‍👩‍👧", "\u00a0", "\u2028", "\u3000", "\x1c", "\x00", "ǅ", "١٢٣",
]  # fmt: skip
# NOTE: characters unassigned in this Python's Unicode database are left out: the `regex`
# package (the pure path) and tiktoken's Rust regex (the fast path) each follow their own, later,
# Unicode version, and may disagree on whether such a character is a letter.
ASSIGNED = st.characters(exclude_categories=("Cn", "Cs"))
TEXT = st.one_of(
    st.text(ASSIGNED, max_size=60),
    st.lists(st.sampled_from(_PIECES), max_size=30).map("".join),
    st.lists(st.one_of(st.sampled_from(_PIECES), st.text(ASSIGNED, max_size=3)), max_size=20).map(
        "".join
    ),
)
MIXED_CORPUS = (
    "Hello world! It's 2024, isn't it?\r\n"
    "日本語のテキストと中文文本。 Ça va? Über naïve café — “quotes”.\n"
    "    indented code(x, y) = x**2 + y**2  # comment\n"
    "emoji 😀😀 👍🏽 and e\u0301 combining, tabs\tand\ttabs.\n\n\n"
) * 8


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = TINY.read_text(encoding="utf-8")[:60_000] if TINY.exists() else ""
    return Tokenizer.train(
        [text, MIXED_CORPUS], 700, special_tokens=["<|endoftext|>", "<|pad|>"], fast=False
    )


def _fast_twin(tok: Tokenizer) -> Tokenizer:
    return Tokenizer.from_json(tok.to_json(), fast=True)


@pytest.fixture(scope="module")
def fast_tok(tok) -> Tokenizer:
    return _fast_twin(tok)


# ------------------------------------------------------------------------ round trips


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=TEXT)
def test_round_trip_any_text(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < 256 + len(tok.merges) for i in ids)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", r"\p{L}+|\p{N}"])
def test_round_trip_per_pattern(pattern):
    tok = Tokenizer.train(MIXED_CORPUS, 400, pattern=pattern, fast=False)
    assert tok.decode(tok.encode(MIXED_CORPUS)) == MIXED_CORPUS


def test_lone_surrogate_is_a_clear_value_error(tok):
    with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at index 3"):
        tok.encode("abc\ud800def")
    with pytest.raises(TokenizerError, match="lone surrogate"):
        Tokenizer.from_json(tok.to_json()).encode_batch(["ok", "\udfff"])


def test_decode_of_a_cut_character_replaces_it_by_default(tok):
    ids = list("é".encode())  # two byte tokens: each alone is half a character
    assert tok.decode(ids[:1]) == "\ufffd"
    assert tok.decode_bytes(ids[:1]) == b"\xc3"
    with pytest.raises(TokenizerError, match="not decode to valid UTF-8"):
        tok.decode(ids[:1], errors="strict")


def test_decode_rejects_ids_out_of_range(tok):
    with pytest.raises(TokenizerError, match=r"token id 700 is out of range \(vocab size 700"):
        tok.decode([1, 700])
    with pytest.raises(TokenizerError, match="token id -1 is out of range"):
        tok.decode_bytes([-1])
    with pytest.raises(TokenizerError, match="must be integers"):
        tok.decode([1.5])  # type: ignore[list-item]


def test_decode_accepts_numpy_arrays(tok):
    ids = tok.encode("numpy arrays too")
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "numpy arrays too"


# ------------------------------------------------------------------------ special tokens


def test_special_tokens_default_is_ordinary_text(tok):
    text = "a<|endoftext|>b"
    ids = tok.encode(text)
    assert tok.special_tokens["<|endoftext|>"] not in ids and tok.decode(ids) == text
    assert tok.encode(text, allowed_special="none") == ids


def test_special_tokens_all_set_and_raise(tok):
    eot, pad = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|pad|>"]
    text = "x<|pad|>y<|endoftext|>"
    assert tok.encode(text, allowed_special="all") == [
        *tok.encode("x"), pad, *tok.encode("y"), eot,
    ]  # fmt: skip
    only_eot = tok.encode(text, allowed_special={"<|endoftext|>"})
    assert only_eot == [*tok.encode("x<|pad|>y"), eot]
    with pytest.raises(TokenizerError, match=re.escape("contains the special token '<|pad|>'")):
        tok.encode(text, allowed_special="none_raise")
    assert tok.encode("plain", allowed_special="none_raise") == tok.encode("plain")
    with pytest.raises(TokenizerError, match="is not a special token"):
        tok.encode(text, allowed_special={"<|nope|>"})
    with pytest.raises(TokenizerError, match="allowed_special must be"):
        tok.encode(text, allowed_special="some")
    assert tok.decode([eot, pad]) == "<|endoftext|><|pad|>"


@needs_tiktoken
def test_special_tokens_match_tiktoken_semantics(tok):
    import tiktoken

    ranks = {tok.token_bytes(i): i for i in range(256 + len(tok.merges))}
    enc = tiktoken.Encoding(
        name="ref", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=tok.special_tokens
    )
    text = "Hi<|endoftext|> there<|pad|><|pad|> end"
    assert tok.encode(text, "all") == enc.encode(text, allowed_special="all")
    assert tok.encode(text, {"<|pad|>"}) == enc.encode(
        text, allowed_special={"<|pad|>"}, disallowed_special=()
    )
    assert tok.encode(text) == enc.encode_ordinary(text)
    with pytest.raises(ValueError):
        enc.encode(text)  # tiktoken's default raises, as our "none_raise" does


def test_special_token_validation():
    with pytest.raises(TokenizerError, match="is a prefix of"):
        Tokenizer([], "gpt4", ["<|a|>", "<|a|>x"])
    with pytest.raises(TokenizerError, match="given twice"):
        Tokenizer([], "gpt4", ["<s>", "<s>"])
    with pytest.raises(TokenizerError, match="non-empty string"):
        Tokenizer([], "gpt4", [""])
    with pytest.raises(TokenizerError, match="have the same id 256"):
        Tokenizer([], "gpt4", {"<a>": 256, "<b>": 256})
    with pytest.raises(TokenizerError, match="overlaps the byte and merge ids 0-255"):
        Tokenizer([], "gpt4", {"<a>": 100})


# ------------------------------------------------------------------------ fast path


@needs_tiktoken
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=TEXT)
def test_fast_path_equals_pure_path(tok, fast_tok, text):
    assert fast_tok.fast_path and not tok.fast_path
    assert fast_tok.encode(text) == tok.encode(text)
    assert fast_tok.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


@needs_tiktoken
@settings(max_examples=60, deadline=None)
@given(
    corpus=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=60).map("".join),
    probe=TEXT,
    name=st.sampled_from(["gpt2", "gpt4"]),
    merges=st.integers(1, 60),
)
def test_fast_path_equals_pure_path_for_any_trained_vocab(corpus, probe, name, merges):
    pure = Tokenizer.train([corpus, corpus[::-1]], 256 + merges, pattern=name, fast=False)
    fast = _fast_twin(pure)
    for text in (probe, corpus, corpus + probe):
        assert fast.encode(text) == pure.encode(text)


@needs_tiktoken
@pytest.mark.parametrize("name", ["gpt2", "gpt4"])
def test_fast_path_equals_pure_path_on_the_reference_corpus(name):
    if not TINY.exists():
        pytest.skip("data/tiny.txt is not there")
    text = TINY.read_text(encoding="utf-8")
    pure = Tokenizer.train(text, 1024, pattern=name, fast=False)
    fast = _fast_twin(pure)
    assert fast.fast_path
    ids = pure.encode(text)
    assert fast.encode(text) == ids
    assert pure.encode(text) == ids  # warm caches give the same ids
    assert fast.encode_batch([text[:5000], MIXED_CORPUS]) == [
        pure.encode(text[:5000]), pure.encode(MIXED_CORPUS),
    ]  # fmt: skip


def test_fast_flag_turns_the_fast_path_off(tok):
    off = Tokenizer.from_json(tok.to_json(), fast=False)
    assert not off.fast_path and "fast=False" in off.fast_path_note


@needs_tiktoken
def test_merges_tiktoken_would_apply_differently_keep_the_pure_path():
    # Merging ab first means "a bc" never meets in our algorithm, but tiktoken would merge
    # "ab" + "c" into the token "abc" (bytes rank 258): the fast path must refuse this vocab.
    a, b, c = map(ord, "abc")
    merges = [(a, b), (b, c), (a, 257)]
    auto = Tokenizer(merges)
    assert not auto.fast_path and "tiktoken" in auto.fast_path_note
    assert auto.encode("abc") == [256, c]
    with pytest.raises(TokenizerError, match="fast=True but merge 2"):
        Tokenizer(merges, fast=True).encode("abc")


def test_custom_patterns_use_the_pure_path():
    tok = Tokenizer([], r"\w+|\s+")
    assert not tok.fast_path and "custom" in tok.fast_path_note


# ------------------------------------------------------------------------ batch, stream, files


def test_encode_batch(tok):
    texts = ["one", "two <|pad|>", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, "all") == [tok.encode(t, "all") for t in texts]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=st.lists(st.integers(0, 699), max_size=40))
def test_stream_decoder_never_splits_a_character(tok, ids):
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    tail = dec.flush()
    assert "".join(pieces) + tail == tok.decode(ids)
    for p in pieces:
        # A piece may hold U+FFFD for bytes that can never be valid, but never ends with a
        # character still waiting for its continuation bytes.
        assert p.encode("utf-8").decode("utf-8") == p


def test_stream_decoder_holds_back_half_characters(tok):
    dec = StreamDecoder(tok)
    emoji = "😀".encode()
    assert [dec.push(b) for b in emoji] == ["", "", "", "😀"]
    assert dec.push(emoji[0]) == ""
    assert dec.flush() == "\ufffd"
    assert dec.push(ord("x")) == "x"


def test_encode_file_equals_encode(tok, tmp_path):
    text = MIXED_CORPUS + "last line without newline <|endoftext|>"
    path = tmp_path / "in.txt"
    path.write_bytes(text.encode("utf-8"))
    arr = tok.encode_file(path)
    assert arr.dtype == np.uint16
    assert arr.tolist() == tok.encode(text)
    assert tok.encode_file(path, "all").tolist() == tok.encode(text, "all")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert tok.encode_file(empty).tolist() == []


def test_encode_file_uses_uint32_for_big_vocabularies(tmp_path):
    pairs = [(a, b) for a in range(256) for b in range(256)][: 65_536 - 256 + 1]
    big = Tokenizer(pairs, fast=False)
    assert big.vocab_size == 65_537
    path = tmp_path / "in.txt"
    path.write_text("hi there", encoding="utf-8")
    arr = big.encode_file(path)
    assert arr.dtype == np.uint32
    assert big.decode(arr) == "hi there"


def test_encode_file_errors_name_the_file(tok, tmp_path):
    with pytest.raises(TokenizerError, match=r"nope\.txt: no such file"):
        tok.encode_file(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xc3(")
    with pytest.raises(TokenizerError, match=r"bad.txt: not UTF-8 text .* at offset 5"):
        tok.encode_file(bad)


def test_long_texts_are_encoded_in_blocks_with_the_same_result(tok, monkeypatch):
    import tok.bpe.encoder as bpe

    text = MIXED_CORPUS * 3
    expected = tok.encode(text)
    monkeypatch.setattr(bpe, "_ENCODE_BLOCK", 200)
    fresh = Tokenizer.from_json(tok.to_json(), fast=False)
    assert fresh.encode(text) == expected


def test_small_caches_give_the_same_result(tok):
    small = Tokenizer.from_json(tok.to_json(), fast=False)
    small._encoder.cache_size = 8  # forces the caches to be cleared again and again
    text = MIXED_CORPUS
    assert small.encode(text) == tok.encode(text)
    assert small.encode(text[::-1]) == tok.encode(text[::-1])
    assert len(small._encoder.chunk_cache) <= 200


def test_tok_package_exports_tokenizer():
    import tok as tok_package

    assert tok_package.Tokenizer is Tokenizer
    assert tok_package.StreamDecoder is StreamDecoder
    with pytest.raises(AttributeError):
        tok_package.Nope  # noqa: B018
