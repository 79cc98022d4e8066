"""The BPE trainer: worked example, equality with the slow obvious algorithm, inputs, parallel
counting and sampling."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tok import trainer
from tok.bpe import Tokenizer
from tok.corpus import iter_inputs, iter_pieces, piece_text
from tok.errors import TokenizerError
from tok.patterns import GPT2_PATTERN, GPT4_PATTERN, next_safe_cut, resolve_pattern
from tok.trainer import (
    ascii_runs,
    count_chunks,
    learn_merges,
    merge_pair,
    pair_counts,
)

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "data" / "tiny.txt"


def slow_reference_merges(
    texts: list[str], num_merges: int, pattern: str, min_frequency: int = 1
) -> list[tuple[int, int]]:
    """The obvious algorithm, written independently of `tok.trainer`: pre-tokenize every
    text, then for each merge recount every adjacent pair of every chunk, take the highest
    count (ties: the smallest pair), and merge it everywhere, left to right."""
    chunks = [list(c.encode("utf-8")) for t in texts for c in regex.findall(pattern, t)]
    merges = []
    for r in range(num_merges):
        counts: Counter[tuple[int, int]] = Counter()
        for ids in chunks:
            for i in range(len(ids) - 1):
                counts[ids[i], ids[i + 1]] += 1
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if counts[best] < min_frequency:
            break
        new = 256 + r
        merged = []
        for ids in chunks:
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            merged.append(out)
        chunks = merged
        merges.append(best)
    return merges


def test_pair_counts_and_merge_pair_examples():
    assert pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert pair_counts([7, 7, 7]) == {(7, 7): 2}
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 256) == [256, 3, 256]
    assert merge_pair([7, 7, 7, 7], (7, 7), 256) == [256, 256]
    assert merge_pair([7, 7, 7], (7, 7), 256) == [256, 7]


def test_classic_worked_example_aaabdaaabac():
    # Wikipedia's example: aa -> Z, then ab -> Y (ties with Za at 2: (97, 98) < (256, 97)),
    # then ZY -> X, leaving "XdXac".
    tok = Tokenizer.train("aaabdaaabac", 256 + 3)
    a, b = ord("a"), ord("b")
    assert tok.merges == ((a, a), (a, b), (256, 257))
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, a, ord("c")]
    assert tok.decode([258]) == "aaab"


def test_vocab_size_256_is_pure_bytes():
    tok = Tokenizer.train("hello hello hello", 256)
    assert tok.merges == () and tok.vocab_size == 256
    assert tok.encode("hé") == list("hé".encode())


@pytest.mark.parametrize("pattern", [GPT4_PATTERN, GPT2_PATTERN], ids=["gpt4", "gpt2"])
def test_trainer_equals_slow_reference_on_tiny_corpus(pattern):
    if not TINY.exists():
        pytest.skip("data/tiny.txt is not there")
    text = TINY.read_text(encoding="utf-8")[:15_000]
    tok = Tokenizer.train(text, 256 + 150, pattern=pattern)
    assert list(tok.merges) == slow_reference_merges([text], 150, pattern)


_ALPHABET = st.sampled_from(
    ["a", "b", "c", " ", "  ", "\n", "ab", "'s", "é", "😀", "1", ".", "\r\n"]
)


@settings(max_examples=80, deadline=None)
@given(
    texts=st.lists(st.lists(_ALPHABET, max_size=40).map("".join), min_size=1, max_size=4),
    num_merges=st.integers(0, 30),
    min_frequency=st.integers(1, 3),
    name=st.sampled_from(["gpt2", "gpt4"]),
)
def test_trainer_equals_slow_reference_property(texts, num_merges, min_frequency, name):
    pattern = resolve_pattern(name).source
    tok = Tokenizer.train(texts, 256 + num_merges, pattern=name, min_frequency=min_frequency)
    assert list(tok.merges) == slow_reference_merges(texts, num_merges, pattern, min_frequency)


def test_ties_break_to_the_smallest_pair():
    # Every pair occurs once: the smallest (a, b) by ids goes first, (32, 120) = " x"; then
    # the pairs left are (122, 121) = "zy" and (256, 119) = " x" + "w".
    tok = Tokenizer.train("zy xw", 258)
    assert tok.merges == ((ord(" "), ord("x")), (ord("z"), ord("y")))


def test_min_frequency_stops_training_early():
    tok = Tokenizer.train("abab cd", 300, min_frequency=2)
    assert tok.merges == ((ord("a"), ord("b")),)
    assert tok.vocab_size == 257


def test_training_stops_when_no_pairs_are_left():
    tok = Tokenizer.train("ab", 1000)
    assert tok.merges == ((ord("a"), ord("b")),)


def test_special_tokens_come_after_the_merges():
    tok = Tokenizer.train("aaaa", 256 + 2 + 2, special_tokens=["<|endoftext|>", "<|pad|>"])
    assert tok.vocab_size == 260
    assert tok.special_tokens == {"<|endoftext|>": 258, "<|pad|>": 259}
    assert len(tok.merges) == 2


def test_vocab_size_below_bytes_and_specials_is_refused():
    with pytest.raises(TokenizerError, match="below the minimum 257"):
        Tokenizer.train("abc", 256, special_tokens=["<|endoftext|>"])
    with pytest.raises(TokenizerError, match="must be an integer"):
        Tokenizer.train("abc", "300")  # type: ignore[arg-type]


def test_training_is_deterministic_and_files_are_byte_identical(tmp_path):
    text = "the cat sat on the mat; the dog sat on the log.\n" * 20 + "zebra quagga\n"
    a = Tokenizer.train(text, 300, special_tokens=["<|endoftext|>"])
    b = Tokenizer.train(text, 300, special_tokens=["<|endoftext|>"])
    a.save(tmp_path / "a" / "bpe.json")
    b.save(tmp_path / "b" / "bpe.json")
    for name in ("bpe.json", "bpe.vocab"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a.fingerprint == b.fingerprint


def test_input_rule_str_is_text_path_is_file(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("banana bandana\n", encoding="utf-8")
    from_text = Tokenizer.train("banana bandana\n", 270)
    assert Tokenizer.train(f, 270).merges == from_text.merges
    assert Tokenizer.train(None, 270, files=[str(f)]).merges == from_text.merges
    assert Tokenizer.train([f], 270).merges == from_text.merges
    # A str in the inputs is text, even when it names an existing file.
    assert Tokenizer.train(str(f), 270).merges != from_text.merges
    # Texts are separate documents: merges never cross from one to the next.
    both = Tokenizer.train(["ab", "ab"], 260)
    assert both.merges == ((ord("a"), ord("b")),)


def test_no_training_input_is_an_error():
    with pytest.raises(TokenizerError, match="no training text"):
        Tokenizer.train(None, 300)


def test_bad_training_files_are_one_line_errors(tmp_path):
    with pytest.raises(TokenizerError, match=r"missing\.txt: no such file"):
        Tokenizer.train(None, 300, files=[tmp_path / "missing.txt"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok text\n\xff\xfe more")
    with pytest.raises(TokenizerError, match=r"bad.txt: not UTF-8 text .* at offset 8"):
        Tokenizer.train(bad, 300)
    with pytest.raises(TokenizerError, match="lone surrogate"):
        Tokenizer.train("abc \ud800 def", 300)


def test_reading_in_blocks_counts_the_same_chunks(tmp_path):
    lines = [f"Line {i}: some words, and\tsome more {i * 7}!" for i in range(300)]
    text = "\n".join(lines) + "\n\n  trailing  \n"
    f = tmp_path / "big.txt"
    f.write_bytes(text.encode("utf-8"))
    for name in ("gpt2", "gpt4"):
        pattern = resolve_pattern(name)
        whole = Counter(regex.findall(pattern.source, text))
        for inputs, files in ((text, ()), (None, [f])):
            blocks = list(iter_inputs(inputs, files, block_size=256))
            assert len(blocks) > 10 and "".join(blocks) == text
            assert count_chunks(blocks, pattern) == whole


def test_learn_merges_progress_bar(capsys):
    merges = learn_merges({"abcabc": 3, "abd": 2}, 5, progress=True)
    assert merges[0] == (ord("a"), ord("b"))
    assert "merge" in capsys.readouterr().err


def test_custom_pattern_training_and_round_trip():
    tok = Tokenizer.train("one two  three\n" * 3, 280, pattern=r"\w+|\s+")
    assert tok.pattern_name is None and tok.pattern == r"\w+|\s+"
    # The pattern does not match punctuation: such characters become chunks of their own.
    text = "one, two! three?"
    assert tok.decode(tok.encode(text)) == text


# Parallel counting and sampling (`tok.trainer.count_pieces`, `tok.corpus.iter_pieces`).

MIXED = "".join(
    f"Line {i}: naïve café {'日本語 ' * (i % 3 == 0)}x = {i * 37 % 101}\n    indented {i}!\n"
    for i in range(400)
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "é", " ", "\n", "\t", "\x1c", ".", "日", "\r\n"])))
def test_ascii_runs_cut_where_next_safe_cut_does(parts):
    text = "".join(parts)
    cuts, at = [], next_safe_cut(text, 1)
    while at > 0:
        cuts.append(at)
        at = next_safe_cut(text, at)
    assert [m.end() for m in trainer._SAFE_CUT.finditer(text)] == cuts
    runs = list(ascii_runs(text, run=1))
    assert "".join(runs) == text
    kinds = [r.isascii() for r in runs]
    assert all(x != y for x, y in pairwise(kinds))  # ASCII and not, in turn
    ends = [len("".join(runs[: i + 1])) for i in range(len(runs) - 1)]
    assert set(ends) <= set(cuts)
    for name in ("gpt2", "gpt4"):
        pattern = resolve_pattern(name)
        assert count_chunks([text], pattern) == Counter(regex.findall(pattern.source, text))
        split = Counter(c for r in runs for c in pattern.findall(r))
        assert split == Counter(regex.findall(pattern.source, text))


def test_max_bytes_takes_evenly_spaced_windows(tmp_path):
    lines = [f"{word} {i}\n" for word in ("alpha", "bravo", "delta") for i in range(100)]
    f = tmp_path / "three.txt"
    f.write_text("".join(lines), encoding="utf-8")
    pieces = list(iter_pieces(f, max_bytes=600, block_size=200))
    assert pieces == list(iter_pieces(f, max_bytes=600, block_size=200))  # deterministic
    texts = [piece_text(p) for p in pieces]
    assert len(texts) == 3 and all(t.endswith("\n") for t in texts)
    assert all(t in "".join(lines) for t in texts)
    assert [t.split()[0] for t in texts] == ["alpha", "bravo", "delta"]
    assert 500 <= sum(map(len, texts)) <= 700
    # The same windows of the same text given as a str.
    assert [
        piece_text(p) for p in iter_pieces("".join(lines), max_bytes=600, block_size=200)
    ] == texts
    # A budget at least the size of the input takes it whole.
    assert "".join(map(piece_text, iter_pieces(f, max_bytes=10**6))) == "".join(lines)


def test_max_bytes_of_an_iterator_is_its_first_bytes():
    docs = ["one two\nthree\n", "four five\nsix seven\neight\n", "nine\n"]
    pieces = list(iter_pieces(iter(docs), max_bytes=20))
    assert pieces == ["one two\nthree\n", "four five\n"]


def test_training_on_a_sample_is_deterministic(tmp_path):
    f = tmp_path / "mixed.txt"
    f.write_text(MIXED, encoding="utf-8")
    a = Tokenizer.train(f, 300, max_bytes=5000)
    assert a.merges == Tokenizer.train(f, 300, max_bytes=5000, workers=2).merges
    assert a.merges != Tokenizer.train(f, 300).merges
    assert Tokenizer.train(f, 300, max_bytes=10**9).merges == Tokenizer.train(f, 300).merges
    with pytest.raises(TokenizerError, match="max_bytes must be an integer >= 1, got 0"):
        Tokenizer.train(f, 300, max_bytes=0)
    with pytest.raises(TokenizerError, match="workers must be an integer >= 1, got 0"):
        Tokenizer.train(f, 300, workers=0)
