"""Split patterns and the cuts that must never move a chunk, against a plain ``findall``."""

from __future__ import annotations

from itertools import pairwise

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tok.corpus import (
    char_boundary,
    iter_file_blocks,
    iter_split_blocks,
    iter_text_blocks,
    plan_segments,
    read_utf8,
)
from tok.errors import TokenizerError
from tok.patterns import (
    GPT2_PATTERN,
    GPT4_LEGACY_PATTERN,
    GPT4_PATTERN,
    chunk_regular_tails,
    next_safe_cut,
    resolve_pattern,
    safe_cut_in_bytes,
    split_pieces,
)

# Characters chosen to hit every alternative of both patterns and the whitespace corners:
# \x1c is whitespace for str.isspace but not for regex's \s; \x85, \xa0, \u2028, \u3000 are
# Unicode whitespace; contractions, digits, combining marks, CJK, emoji.
_ATOMS = [
    "a", "Z", "é", "e\u0301", "中", "😀", "1", "23", "'", "'s", "'LL", ".", ",", "!", "-", " ",
    "  ", "\t", "\n", "\r", "\r\n", "\x1c", "\x85", "\xa0", "\u2028", "\u3000", "\x00",
]  # fmt: skip
TEXT = st.one_of(
    st.lists(st.sampled_from(_ATOMS), max_size=40).map("".join),
    st.text(max_size=40),
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "gpt4-legacy": GPT4_LEGACY_PATTERN}


def test_resolve_named_and_custom_patterns():
    assert resolve_pattern("gpt4").source == GPT4_PATTERN
    assert resolve_pattern("gpt2").name == "gpt2"
    assert resolve_pattern(GPT2_PATTERN).name == "gpt2"  # the regex itself gets its name
    custom = resolve_pattern(r"\w+|\W")
    assert custom.name is None and not custom.cuts_are_safe and custom.display == r"\w+|\W"
    # A custom pattern never drops a character: unmatched ones become one-character chunks.
    assert resolve_pattern(r"[a-z]+").compiled.findall("ab, c") == ["ab", ",", " ", "c"]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("(", "bad split pattern"), (r"\w*", "can match the empty string"), ("", "non-empty")],
)
def test_bad_patterns_are_refused(pattern, message):
    with pytest.raises(TokenizerError, match=message):
        resolve_pattern(pattern)


def test_split_pieces_example():
    assert split_pieces("Hi there,  you.") == ("Hi", ["there,", " you."], {" you."})
    assert split_pieces("  lead") == ("  lead", [], set())
    assert split_pieces("") == ("", [], set())


@settings(max_examples=400, deadline=None)
@given(text=TEXT)
def test_pieces_have_the_chunks_of_the_whole_text(text):
    head, tails, irregular = split_pieces(text)
    assert head + "".join(" " + t for t in tails) == text
    regular = [t for t in tails if t not in irregular]
    for t in regular:
        assert t and " " not in t and not t[-1].isspace()
    for name, pattern in PATTERNS.items():
        findall = regex.compile(pattern).findall
        whole = findall(text)
        one_by_one = findall(head) + [c for t in tails for c in findall(" " + t)]
        assert one_by_one == whole, name
        # Regular pieces pre-tokenized together give each piece its own chunks.
        ordered, chunks, firsts = chunk_regular_tails(regular, resolve_pattern(name))
        assert sorted(ordered) == sorted(regular)
        bounds = [*firsts, len(chunks)]
        for t, a, b in zip(ordered, bounds, bounds[1:]):
            assert chunks[a:b] == findall(" " + t), name


@settings(max_examples=400, deadline=None)
@given(text=TEXT)
def test_safe_cuts_do_not_move_chunks(text):
    cuts = []
    at = next_safe_cut(text)
    while at >= 0:
        cuts.append(at)
        at = next_safe_cut(text, at)
    for name, pattern in PATTERNS.items():
        findall = regex.compile(pattern).findall
        whole = findall(text)
        for cut in cuts:
            assert text[cut - 1] == "\n"
            assert findall(text[:cut]) + findall(text[cut:]) == whole, (name, cut)
    # The byte-level search finds the same first cut in the UTF-8 encoding.
    first = len(text[: cuts[0]].encode()) if cuts else -1
    assert safe_cut_in_bytes(text.encode("utf-8")) == first


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(TEXT, max_size=30), block_size=st.integers(1, 64))
def test_text_and_file_blocks_rebuild_the_text(tmp_path_factory, lines, block_size):
    text = "x\n".join(lines)
    blocks = list(iter_text_blocks(text, block_size=block_size))
    assert "".join(blocks) == text
    path = tmp_path_factory.mktemp("blocks") / "in.txt"
    path.write_bytes(text.encode("utf-8"))
    file_blocks = list(iter_file_blocks(path, block_size=block_size))
    assert "".join(file_blocks) == text
    for block in [*blocks[:-1], *file_blocks[:-1]]:
        assert block.endswith("\n") and not block[-2].isspace()
    size = len(text.encode("utf-8"))
    segments = plan_segments(path, size, 4)
    assert "".join(read_utf8(path, a, b) for a, b in segments) == text
    assert read_utf8(path) == "".join(iter_file_blocks(path, cut=False)) == text


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(TEXT, max_size=30), block_size=st.integers(1, 64), data=st.data())
def test_split_blocks_of_several_files(tmp_path_factory, lines, block_size, data):
    whole = "x\n".join(lines).encode("utf-8")
    # Files cut anywhere, even inside a character: they are read as one text.
    bounds = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=3)))
    folder = tmp_path_factory.mktemp("split")
    paths = []
    for i, (a, b) in enumerate(pairwise([0, *bounds, len(whole)])):
        paths.append(folder / f"{i}.txt")
        paths[-1].write_bytes(whole[a:b])
    split_at = data.draw(st.integers(0, len(whole)))
    blocks = list(iter_split_blocks(paths, [split_at], block_size=block_size))
    cut = safe_cut_in_bytes(whole, split_at)
    cut = char_boundary(whole, split_at) if cut < 0 else cut
    parts = [b"".join(t.encode() for k, t, _ in blocks if k == part) for part in (0, 1)]
    assert parts == [whole[:cut], whole[cut:]]
    assert all(t and n == len(t.encode()) for _, t, n in blocks)
    for (k, t, _), (k_next, _, _) in pairwise(blocks):
        assert k == k_next or k_next == k + 1
        if k == k_next:  # inside a part, every block ends at a safe cut
            assert t.endswith("\n") and not t[-2].isspace()


def test_split_blocks_examples(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"ab\ncd\nef\ngh")
    assert list(iter_split_blocks([a], [4], block_size=4)) == [
        (0, "ab\ncd\n", 6),
        (1, "ef\n", 3),
        (1, "gh", 2),
    ]
    # Without a safe cut, `max_bytes` forces one at a character boundary (after "éé").
    a.write_bytes("ééé ééé".encode())
    blocks = list(iter_split_blocks([a], block_size=4, max_bytes=8))
    assert [t for _, t, _ in blocks] == ["éé", "é é", "éé"]
    # A character may straddle two files; a bad byte names its file and its offset there.
    a.write_bytes(b"x\n\xc3")
    b.write_bytes(b"\xa9\nok\n\xff")
    with pytest.raises(TokenizerError, match=r"b.txt: not UTF-8 text \(invalid byte at offset 5\)"):
        list(iter_split_blocks([a, b], [1]))
    b.write_bytes(b"\xa9\nok\n")
    assert [t for _, t, _ in iter_split_blocks([a, b], [1])] == ["x\n", "é\nok\n"]


_ASCII_ATOMS = [
    "'s",
    "'T",
    "'ll",
    "'VE",
    "  ",
    "\r\n",
    "\n\n",
    "1234",
    "ab",
    "Cd",
    " x",
    "?!",
    "\x0b",
]
ASCII_TEXT = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=127), max_size=60),
    st.lists(
        st.one_of(st.sampled_from(_ASCII_ATOMS), st.characters(max_codepoint=127)), max_size=30
    ).map("".join),
)


@settings(max_examples=500, deadline=None)
@given(text=ASCII_TEXT)
def test_ascii_text_uses_stdlib_re_with_the_same_chunks(text):
    for name, pattern in PATTERNS.items():
        assert resolve_pattern(name).findall(text) == regex.findall(pattern, text), name
