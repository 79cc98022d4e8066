"""Tokenizer files: save and load, atomic writes, the readable listing, validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tok.bpe import Tokenizer
from tok.errors import TokenizerError
from tok.serialize import FORMAT, VERSION, render_token

CORPUS = "It's a truth universally acknowledged... 日本語 😀 e\u0301\r\n  spaced   out\n" * 10


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, 300, special_tokens=["<|endoftext|>"], fast=False)


def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "tok" / "bpe.json")
    back = Tokenizer.load(path, fast=False)
    assert back.merges == tok.merges
    assert back.special_tokens == tok.special_tokens
    assert back.pattern == tok.pattern and back.pattern_name == "gpt4"
    assert back.vocab_size == tok.vocab_size == 300
    assert back.fingerprint == tok.fingerprint
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == FORMAT and data["version"] == VERSION
    assert data["merges"][0] == list(tok.merges[0])


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=80))
def test_save_load_gives_identical_encodings(tok, tmp_path_factory, text):
    path = tmp_path_factory.mktemp("t") / "bpe.json"
    tok.save(path)
    for back in (Tokenizer.load(path), Tokenizer.from_json(tok.to_json(), source="ckpt")):
        assert back.encode(text) == tok.encode(text)
        assert back.encode(text, "all") == tok.encode(text, "all")


def test_default_path_is_relative_to_the_run(tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tok.save()
    assert (tmp_path / "tok" / "bpe.json").is_file()
    assert Tokenizer.load().fingerprint == tok.fingerprint


def test_save_is_atomic_and_replaces_the_old_file(tok, tmp_path):
    path = tmp_path / "bpe.json"
    path.write_text("old contents", encoding="utf-8")
    tok.save(path)
    assert Tokenizer.load(path).fingerprint == tok.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe.json", "bpe.vocab"]


def test_vocab_listing_is_readable(tok, tmp_path):
    tok.save(tmp_path / "bpe.json")
    lines = (tmp_path / "bpe.vocab").read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if not line.startswith("#")]
    assert len(body) == tok.vocab_size
    assert body[32] == "32\t' '\tbyte"
    assert body[256].startswith("256\t")
    assert "(" in body[256] and "+" in body[256]
    assert body[-1] == '299\t"<|endoftext|>"\tspecial token'


def test_render_token():
    assert render_token(b" the") == "' the'"
    assert render_token("日本".encode()) == "'日本'"
    assert render_token(b"\n\t") == "'\\n\\t'"
    assert render_token(b"\xe6\x97") == "'\\xe6\\x97'"
    assert render_token(b"it's\\") == "'it\\'s\\\\'"


def test_fingerprint_depends_on_content_only(tok):
    same = Tokenizer(tok.merges, tok.pattern, tok.special_tokens)
    assert same.fingerprint == tok.fingerprint and len(tok.fingerprint) == 64
    assert Tokenizer(tok.merges[:-1], tok.pattern).fingerprint != tok.fingerprint
    assert Tokenizer(tok.merges, "gpt2", tok.special_tokens).fingerprint != tok.fingerprint


def _write(tmp_path: Path, tok: Tokenizer, **changes) -> Path:
    data = json.loads(tok.to_json())
    data.update(changes)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(TokenizerError) as info:
        Tokenizer.load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def test_load_error_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json", encoding="utf-8")
    assert "not valid JSON" in _error(path)
    path.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in _error(path)
    path.write_text("[1, 2]", encoding="utf-8")
    assert "not an object" in _error(path)


def test_load_error_missing_file_and_directory(tmp_path):
    assert "no such file" in _error(tmp_path / "missing.json")
    assert "is a directory" in _error(tmp_path)


def test_load_error_unknown_format_or_version(tok, tmp_path):
    assert "unknown format 'sentencepiece'" in _error(_write(tmp_path, tok, format="sentencepiece"))
    assert "unsupported version 2" in _error(_write(tmp_path, tok, version=2))


def test_load_error_merge_refers_to_undefined_id(tok, tmp_path):
    merges = [list(m) for m in tok.merges]
    merges[3] = [258, 259]  # merge 3 defines id 259: 259 is not defined before it
    path = _write(tmp_path, tok, merges=merges)
    assert "merge 3 ([258, 259]) refers to id 259, which is not defined before it" in _error(path)
    merges[3] = [1, "x"]
    assert "merge 3 must be a pair of integer ids" in _error(_write(tmp_path, tok, merges=merges))


def test_load_error_duplicate_merge(tok, tmp_path):
    merges = [list(m) for m in tok.merges]
    merges[5] = merges[1]
    assert "merge 5 repeats merge 1" in _error(_write(tmp_path, tok, merges=merges))


def test_load_error_duplicate_or_overlapping_special_ids(tok, tmp_path):
    path = _write(tmp_path, tok, vocab_size=301, special_tokens={"<a>": 299, "<b>": 299})
    assert "special tokens '<a>' and '<b>' have the same id 299" in _error(path)
    path = _write(tmp_path, tok, special_tokens={"<a>": 290})
    assert "special token '<a>' has id 290, which overlaps the byte and merge ids" in _error(path)


def test_load_error_vocab_too_large_for_declared_size(tok, tmp_path):
    path = _write(tmp_path, tok, vocab_size=290)
    assert "too large for the declared vocab_size 290: 256 bytes + 43 merges" in _error(path)
    path = _write(tmp_path, tok, vocab_size=400)
    assert "declares vocab_size 400 but defines only 300 tokens" in _error(path)
    path = _write(tmp_path, tok, special_tokens={"<a>": 5000})
    assert "'<a>' has id 5000" in _error(path)


def test_load_error_bad_pattern_and_missing_keys(tok, tmp_path):
    assert "bad split pattern" in _error(_write(tmp_path, tok, pattern="(unclosed"))
    data = json.loads(tok.to_json())
    del data["merges"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert "missing key 'merges'" in _error(path)


def test_from_json_names_its_source(tok):
    with pytest.raises(TokenizerError, match=r"^ckpt\.pt: unsupported version 9 "):
        Tokenizer.from_json(tok.to_json().replace('"version": 1', '"version": 9'), "ckpt.pt")
