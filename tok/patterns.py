"""Pre-tokenization: the split patterns, and where text can be cut without moving a chunk.

A split pattern cuts text into chunks (words with their leading space, runs of digits,
punctuation, whitespace); BPE merges never cross a chunk boundary. Three patterns have names:

- ``gpt2``: the pattern of GPT-2 (Radford et al. 2019, `encoder.py` in openai/gpt-2).
- ``gpt4``: the pattern of OpenAI's ``cl100k_base`` as `tiktoken` publishes it now (checked
  against tiktoken 0.14's `cl100k_base` by a test): case-insensitive contractions, letters with
  at most one leading non-letter, numbers of at most 3 digits, punctuation runs that keep their
  trailing newlines, and (``\\s++$``) whitespace that ends the text as one chunk.
- ``gpt4-legacy``: the earlier published ``cl100k_base`` pattern, without ``\\s++$``; it cuts
  whitespace after the text's last newline apart (``"a\\n\\u3000"`` -> ``a``, ``\\n``,
  ``\\u3000`` where ``gpt4`` gives ``a``, ``\\n\\u3000``). It was this module's ``gpt4`` before,
  and a tokenizer file stores its regex, so files saved then load under this name and split
  as they always did. New tokenizers get ``gpt4``.

Any other string is used as a custom regular expression (syntax of the `regex` package). A custom
pattern is wrapped as ``(?:PATTERN)|[\\s\\S]`` so that a character it does not match still becomes
a chunk of its own: every string round-trips whatever the pattern.

Cutting text without changing its chunks (`split_pieces`, `next_safe_cut`) is what makes the
encoder fast on non-ASCII text and lets long inputs be read in blocks; the rules hold for the
two named patterns and are checked against a plain ``findall`` by property tests. ASCII text is
pre-tokenized by an equivalent pattern for the standard library's `re` (`SplitPattern.findall`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from itertools import compress, count, repeat
from typing import NamedTuple

import regex

from tok.errors import TokenizerError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# NOTE: the two cl100k patterns are tiktoken's strings verbatim, not merely equivalent ones: a
# tokenizer file stores the regex, `resolve_pattern` knows a named pattern by its exact text,
# and the tiktoken fast path hands it to tiktoken's own regex engine.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
GPT4_LEGACY_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "gpt4-legacy": GPT4_LEGACY_PATTERN}
DEFAULT_PATTERN = "gpt4"

# Strings a sane split pattern must not match as the empty string: a pattern such as r"\w*"
# is a mistake (it matches nothing at each non-word character, leaving those to the fallback).
_EMPTY_MATCH_PROBES = ("", "a", "A1", " ", "\n", "\r\n", "1", ".", "é", "中", "'s", " x", "\t")

# NOTE: the cuts below use the standard library's `\s`, which is `str.isspace`: a superset of
# the `regex` package's `\s` (it adds U+001C..U+001F). Treating more characters as whitespace
# only makes fewer cuts, so the conservative choice is always the safe one.

# A space that follows whitespace (or starts the text) may belong to a whitespace chunk that
# began earlier, so it is not a cut point for `split_pieces`. (Matches the whitespace before
# such a space: twice as fast as a look-behind.)
_BEFORE_BAD_SPACE = re.compile(r"\s(?= )")


# The named patterns restricted to ASCII text, for the standard library's `re`, which runs
# them about 2.5 times faster than `regex`. On ASCII, \p{L} is [A-Za-z], \p{N} is [0-9] and the
# `regex` package's \s is [\t\n\x0b\x0c\r ] (not \x1c-\x1f, unlike `re`'s \s, hence the explicit
# class). NOTE: GPT-4's possessive quantifiers are dropped (Python 3.10's `re` lacks them): they
# never change a match here, since giving back the optional non-letter before the letters, or a
# punctuation character before `[\r\n]*`, can never let the rest match differently; nor can a
# whitespace run that ends the text (`\Z`, which unlike `re`'s `$` is the very end) be shorter.
# The last `\s` of `gpt4` matches one character where `gpt4-legacy`'s `\s+` may match more, but
# `\s+(?!\S)` before it leaves `\s+` only single characters. A property test checks each
# against `regex` on arbitrary ASCII text.
_WS = r"\t\n\x0b\x0c\r "
_GPT4_ASCII_HEAD = (
    rf"'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{{1,3}}| ?[^{_WS}A-Za-z0-9]+[\r\n]*"
)
_ASCII_PATTERNS = {
    "gpt2": (
        rf"'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+"
        rf"|[{_WS}]+(?![^{_WS}])|[{_WS}]+"
    ),
    "gpt4": (rf"{_GPT4_ASCII_HEAD}|[{_WS}]+\Z|[{_WS}]*[\r\n]|[{_WS}]+(?![^{_WS}])|[{_WS}]"),
    "gpt4-legacy": rf"{_GPT4_ASCII_HEAD}|[{_WS}]*[\r\n]|[{_WS}]+(?![^{_WS}])|[{_WS}]+",
}


@dataclass(frozen=True)
class SplitPattern:
    """A resolved split pattern: its regex source and its name (None for a custom regex)."""

    source: str
    name: str | None

    @cached_property
    def compiled(self) -> regex.Pattern:
        if self.name is not None:
            return regex.compile(self.source)
        # Wrapped so that no character is ever dropped (see the module docstring).
        return regex.compile(f"(?:{self.source})|[\\s\\S]")

    @cached_property
    def _ascii(self) -> re.Pattern | None:
        return re.compile(_ASCII_PATTERNS[self.name]) if self.name is not None else None

    def findall(self, text: str) -> list[str]:
        """The chunks of `text`, in order (their concatenation is `text`)."""
        if text.isascii() and self._ascii is not None:  # isascii() is O(1) on str
            return self._ascii.findall(text)
        return self.compiled.findall(text)

    @property
    def display(self) -> str:
        return self.name if self.name is not None else self.source

    @property
    def cuts_are_safe(self) -> bool:
        """Whether `split_pieces` and the block cuts are exact for this pattern (the named ones)."""
        return self.name is not None


def resolve_pattern(pattern: str) -> SplitPattern:
    """Turn a name of `PATTERNS` (``"gpt4"``) or a regex into a `SplitPattern`, checking that
    it compiles.

    A regex identical to a named pattern gets that name (so a saved file keeps its fast paths);
    any other regex gets none, since only the named patterns have proven cut rules.
    """
    if not isinstance(pattern, str) or not pattern:
        raise TokenizerError(f"the split pattern must be a non-empty string, got {pattern!r}")
    if pattern in PATTERNS:
        return SplitPattern(PATTERNS[pattern], pattern)
    for known, source in PATTERNS.items():
        if pattern == source:
            return SplitPattern(source, known)
    try:
        compiled = regex.compile(pattern)
    except (regex.error, ValueError, TypeError, OverflowError) as e:
        raise TokenizerError(f"bad split pattern {pattern!r}: {e}") from None
    for probe in _EMPTY_MATCH_PROBES:
        m = compiled.match(probe)
        if m is not None and m.end() == 0:
            raise TokenizerError(
                f"bad split pattern {pattern!r}: it can match the empty string "
                f"(at the start of {probe!r}); use + instead of * for the main repetition"
            )
    return SplitPattern(pattern, None)


class Pieces(NamedTuple):
    """`split_pieces`'s result: ``text == head + "".join(" " + t for t in tails)``."""

    head: str
    tails: list[str]
    irregular: set[str]  # tails that may hold spaces or end with whitespace (see below)


def split_pieces(text: str) -> Pieces:
    """Cut `text` at spaces that follow a non-whitespace character: chunk boundaries for the
    GPT-2 and GPT-4 patterns, found at C speed with ``str.split``.

    The chunks of `text` are the chunks of `head` followed by those of each ``" " + t`` taken
    alone. Every tail ends with a non-whitespace character and holds no space, except the
    tails in `irregular`: those where spaces that are not boundaries were joined back, and the
    last one.

    >>> split_pieces("Hi there,  you.")
    Pieces(head='Hi', tails=['there,', ' you.'], irregular={' you.'})
    """
    parts = text.split(" ")
    # Space number k (counting from 0) separates parts[k] and parts[k + 1]. A space that is not
    # a chunk boundary joins its two parts back; runs of such spaces are joined in one go.
    runs: list[list[int]] = [[0, 0]] if text.startswith(" ") else []
    k = 0  # the number of the space at `pos`: how many spaces come before it
    last_pos = 0
    for m in _BEFORE_BAD_SPACE.finditer(text):
        pos = m.end()
        k += text.count(" ", last_pos, pos)
        last_pos = pos
        if runs and runs[-1][1] >= k - 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    irregular = set()
    if runs:
        out: list[str] = []
        done = 0  # parts[:done] are already in `out`
        for first, last in runs:
            out.extend(parts[done:first])
            joined = " ".join(parts[first : last + 2])
            out.append(joined)
            if first:
                irregular.add(joined)
            done = last + 2
        out.extend(parts[done:])
        parts = out
    if len(parts) > 1:
        irregular.add(parts[-1])
    return Pieces(parts[0], parts[1:], irregular)


def next_safe_cut(text: str, start: int = 0) -> int:
    """The position just after the first newline at or after `start` that sits between two
    non-whitespace characters, or -1 when there is none.

    Both named patterns always end a chunk after such a newline, and no chunk before it looks
    past it, so the text can be cut there into blocks that are pre-tokenized separately.

    >>> next_safe_cut("a\\n\\nb\\nc")
    5
    """
    while True:
        nl = text.find("\n", max(start, 1))
        if nl < 0 or nl + 1 >= len(text):
            return -1
        if not text[nl - 1].isspace() and not text[nl + 1].isspace():
            return nl + 1
        start = nl + 1


def safe_cut_in_bytes(data: bytes | bytearray, start: int = 0) -> int:
    """The position just after the first newline at or after `start` in UTF-8 `data` that sits
    between two non-whitespace characters (a safe block cut), or -1 when there is none."""
    while True:
        nl = data.find(b"\n", max(start, 1))
        if nl < 0 or nl + 1 >= len(data):
            return -1
        # The characters on each side (at most 4 bytes each; bytes that are not UTF-8 are
        # skipped, as that text fails to decode anyway). No character after: it is cut off at
        # the end of `data` and may yet be whitespace.
        before = data[max(nl - 4, 0) : nl].decode("utf-8", "ignore")[-1:]
        after = data[nl + 1 : nl + 5].decode("utf-8", "ignore")[:1]
        if before and after and not before.isspace() and not after.isspace():
            return nl + 1
        start = nl + 1


def chunk_regular_tails(
    tails: list[str], pattern: SplitPattern
) -> tuple[list[str], list[str], list[int]]:
    """Pre-tokenize the pieces ``" " + t`` of regular tails (from `split_pieces`: no inner
    space, a non-whitespace last character). Returns the tails in the order used, their chunks
    one piece after the other, and the index of each piece's first chunk.

    The pieces are joined and pre-tokenized with one call per kind of text (one regex call per
    piece would dominate the cost): each space between them is a chunk boundary, and each piece
    holds exactly one chunk that starts with a space, its first. ASCII pieces go together, so
    that they get the faster ASCII pattern.

    >>> chunk_regular_tails(["日本", "cat."], resolve_pattern("gpt4"))
    (['cat.', '日本'], [' cat', '.', ' 日本'], [0, 2])
    """
    ascii_tails = [t for t in tails if t.isascii()]
    others = [t for t in tails if not t.isascii()]
    chunks: list[str] = []
    for group in (ascii_tails, others):
        if group:
            chunks += pattern.findall(" " + " ".join(group))
    firsts = list(compress(count(), map(str.startswith, chunks, repeat(" "))))
    return ascii_tails + others, chunks, firsts
