"""The `gpt4` split pattern against tiktoken's own splitting with its `cl100k_base` pattern, and
the older pattern kept as `gpt4-legacy` for tokenizers saved with it.

tiktoken never shows its chunks, but it shows its tokens, and a token never crosses a chunk.
Given as ranks every byte string found in a text (shorter ones first), BPE merges each chunk
of that text into one token, so the tokens tiktoken returns are exactly its chunks.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tok.bpe import Tokenizer
from tok.patterns import GPT4_LEGACY_PATTERN, GPT4_PATTERN, resolve_pattern

HAS_TIKTOKEN = importlib.util.find_spec("tiktoken") is not None
pytestmark = pytest.mark.skipif(not HAS_TIKTOKEN, reason="tiktoken is not installed")

# Whitespace of every kind (a final newline followed by more whitespace is where the two
# cl100k patterns differ), letters, digits, punctuation, contractions.
_ATOMS = [
    "a", "Z", "é", "中", "1", "234", "'", "'s", "!", ".", " ", "  ", "\t", "\n", "\r", "\r\n",
    "\x0b", "\x85", "\xa0", "\u3000", "\u2028", "E", "sVe",
]  # fmt: skip
# NOTE: characters unassigned in this Python's Unicode database are left out: the `regex`
# package and tiktoken's Rust regex each follow their own, later, Unicode version, and a
# character one of them knows as a letter and the other does not is no question of pattern.
TEXT = st.one_of(
    st.lists(st.sampled_from(_ATOMS), max_size=12).map("".join),
    st.text(st.characters(exclude_categories=("Cn", "Cs")), max_size=12),
)


def tiktoken_chunks(text: str, pattern: str) -> list[str]:
    """tiktoken's split of `text` by `pattern` (see the module docstring)."""
    import tiktoken

    data = text.encode("utf-8")
    pieces = {bytes([b]) for b in range(256)}
    pieces |= {data[i:j] for i in range(len(data)) for j in range(i + 1, len(data) + 1)}
    ranks = {p: r for r, p in enumerate(sorted(pieces, key=lambda p: (len(p), p)))}
    enc = tiktoken.Encoding("chunks", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    return [t.decode("utf-8") for t in enc.decode_tokens_bytes(enc.encode_ordinary(text))]


def test_gpt4_is_the_pattern_tiktoken_publishes_for_cl100k_base():
    import tiktoken_ext.openai_public as public

    source = Path(public.__file__).read_text(encoding="utf-8")
    cl100k = source[source.index("def cl100k_base") :]
    published = re.search(r'"pat_str": r"""(.*?)"""', cl100k).group(1)
    assert published == GPT4_PATTERN
    assert GPT4_LEGACY_PATTERN != GPT4_PATTERN


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
@example(text="!EsVe\n\u3000")  # where the legacy pattern splits differently
@example(text="a \n ")
def test_gpt4_splits_as_tiktoken_does(text):
    assert resolve_pattern("gpt4").findall(text) == tiktoken_chunks(text, GPT4_PATTERN)
    legacy = resolve_pattern("gpt4-legacy").findall(text)
    assert legacy == tiktoken_chunks(text, GPT4_LEGACY_PATTERN)


def test_the_patterns_differ_after_a_final_newline():
    text = "!EsVe\n\u3000"
    assert resolve_pattern("gpt4").findall(text) == ["!EsVe", "\n\u3000"]
    assert resolve_pattern("gpt4-legacy").findall(text) == ["!EsVe", "\n", "\u3000"]


def test_a_tokenizer_saved_with_the_legacy_pattern_keeps_splitting_as_before(tmp_path):
    text = "to be\nor not\n\u3000 \n  " * 20
    old = Tokenizer.train(text, vocab_size=300, pattern=GPT4_LEGACY_PATTERN)
    path = old.save(tmp_path / "bpe.json")
    back = Tokenizer.load(path)
    assert back.pattern == GPT4_LEGACY_PATTERN and back.pattern_name == "gpt4-legacy"
    assert back.fingerprint == old.fingerprint
    assert back.encode(text) == old.encode(text)
    assert Tokenizer.train(text, vocab_size=300).pattern_name == "gpt4"  # new ones: the current
