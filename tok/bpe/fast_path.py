"""The fast path: a ``tiktoken.Encoding`` fed our own pattern and ranks, once it is known to
agree with our merges (the results are then identical, as tests check)."""

from __future__ import annotations

from collections.abc import Sequence

from tok.errors import TokenizerError
from tok.patterns import SplitPattern


def tiktoken_encoding(
    wanted: bool | None,
    table: Sequence[bytes],
    merges: Sequence[tuple[int, int]],
    pattern: SplitPattern,
    name: str,
):
    """``(encoding, "")``: a ``tiktoken.Encoding`` named `name` whose token ``i`` has the bytes
    ``table[i]`` (the 256 bytes, then the merges); or ``(False, why)`` when the fast path
    cannot be used. `wanted` is the ``fast`` flag: with True, a reason is an error."""
    why = why_no_fast_path(wanted, table, merges, pattern)
    if why and wanted:
        raise TokenizerError(f"fast=True but {why}")
    if why:
        return False, why
    import tiktoken  # optional, so imported only here

    return tiktoken.Encoding(
        name=name,
        pat_str=pattern.source,
        mergeable_ranks={table[i]: i for i in range(256 + len(merges))},
        special_tokens={},  # special tokens are handled by the tokenizer, the same on both paths
    ), ""


def why_no_fast_path(
    wanted: bool | None,
    table: Sequence[bytes],
    merges: Sequence[tuple[int, int]],
    pattern: SplitPattern,
) -> str:
    """Why the fast path cannot be used ('' when it can): turned off, tiktoken missing, or
    tiktoken could encode differently from our merges (`table` holds the bytes of each token).

    tiktoken merges, at each step, the adjacent pair whose concatenated bytes form the
    lowest-ranked token, whichever merge made that token. That is our algorithm when every
    token's bytes are unique and every token splits, under the ranks below its own, into
    exactly the pair it was merged from (the condition minbpe uses to recover merges from
    tiktoken ranks). Our trainer always produces such merges; a hand-edited file may not.
    """
    if wanted is False:
        return "turned off (fast=False)"
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return "tiktoken is not installed (pip install 'llm_tiny[fast]')"
    if not pattern.cuts_are_safe:
        return "the split pattern is a custom regex (tiktoken's regex engine may differ)"
    n = 256 + len(merges)
    rank = {table[i]: i for i in range(n)}
    if len(rank) != n:
        return "two tokens have the same bytes"
    for r, (a, b) in enumerate(merges):
        token = 256 + r
        parts = [bytes([c]) for c in table[token]]
        while len(parts) > 2:
            best, at = token, -1
            for i in range(len(parts) - 1):
                k = rank.get(parts[i] + parts[i + 1], token)
                if k < best:
                    best, at = k, i
            if at < 0:
                break
            parts[at : at + 2] = [parts[at] + parts[at + 1]]
        if parts != [table[a], table[b]]:
            return f"merge {r} ({a} + {b}) is not how tiktoken would split token {token}"
    return ""
