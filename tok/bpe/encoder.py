"""The pure-Python ordinary encoder: BPE merges by rank, behind a piece cache and a chunk cache
(see `CachedEncoder._encode_block`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import accumulate, chain

from tok.corpus import iter_text_blocks
from tok.patterns import SplitPattern, chunk_regular_tails, split_pieces
from tok.trainer import paused_gc

CACHE_SIZE = 1 << 18  # entries per cache (pieces, chunks); a full cache is cleared
_ENCODE_BLOCK = 1 << 20  # characters: longer texts are encoded block by block (bounded memory)
_NOT_A_RANK = 1 << 62


class CachedEncoder:
    """Encodes text with `merges` (in rank order: merge ``r`` makes id ``256 + r``) and `pattern`.

    NOTE: the caches are not locked; give each thread its own encoder.
    """

    def __init__(
        self, pattern: SplitPattern, merges: Sequence[tuple[int, int]], vocab_size: int
    ) -> None:
        self._pattern = pattern
        self._vocab_size = vocab_size
        # The ranks (ids) keyed by the int a * vocab_size + b: cheaper to build and hash than a
        # tuple in the inner loop of `_bpe`.
        self._rank_of_key = {a * vocab_size + b: 256 + r for r, (a, b) in enumerate(merges)}
        self.cache_size = CACHE_SIZE  # a test shrinks it to watch the caches being cleared
        self.piece_cache: dict[str, list[int]] = {}
        self.chunk_cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """The token ids of `text` (valid UTF-8); with a named pattern, a text over
        `_ENCODE_BLOCK` characters is encoded block by block (bounded memory)."""
        if len(text) <= _ENCODE_BLOCK or not self._pattern.cuts_are_safe:
            return self._encode_block(text)
        out: list[int] = []
        for block in iter_text_blocks(text, block_size=_ENCODE_BLOCK):
            out += self._encode_block(block)
        return out

    def _encode_block(self, text: str) -> list[int]:
        """The ordinary encoding, through two caches.

        ASCII text (or any text, with a custom pattern) is pre-tokenized whole, and its chunks
        looked up in the chunk cache. Other text is cut into pieces at spaces (`split_pieces`),
        looked up in the piece cache: only the distinct pieces missing from it are
        pre-tokenized, with the slower `regex` engine (ASCII gets the standard library's `re`).
        """
        pattern = self._pattern
        if text.isascii() or not pattern.cuts_are_safe:
            return self._encode_chunks(pattern.findall(text))
        head, tails, irregular = split_pieces(text)
        out = self._encode_chunks(pattern.findall(head)) if head else []
        n_head = len(out)
        pieces = self.piece_cache
        try:
            out += chain.from_iterable(map(pieces.__getitem__, tails))
        except KeyError:
            del out[n_head:]
            missing = set(tails).difference(pieces)
            if len(pieces) + len(missing) > self.cache_size:
                pieces.clear()
                missing = set(tails)
            with paused_gc():
                self._fill_piece_cache(missing, irregular)
            out += chain.from_iterable(map(pieces.__getitem__, tails))
        return out

    def _fill_piece_cache(self, tails: set[str], irregular: set[str]) -> None:
        """Encode the pieces ``" " + t`` into the piece cache.

        NOTE: written so that only the merges of new chunks run as a Python loop: the regular
        tails are pre-tokenized together (`chunk_regular_tails`), and the flat list of their ids
        is sliced back into pieces with C-level map/accumulate.
        """
        pieces = self.piece_cache
        other = tails & irregular
        for t in other:
            pieces[t] = self._encode_chunks(self._pattern.findall(" " + t))
        regular = list(tails - other)
        if not regular:
            return
        regular, chunks, firsts = chunk_regular_tails(regular, self._pattern)
        self._fill_chunk_cache(chunks)
        id_lists = list(map(self.chunk_cache.__getitem__, chunks))
        flat = list(chain.from_iterable(id_lists))
        starts = [0, *accumulate(map(len, id_lists))]  # chunk i starts at flat[starts[i]]
        bounds = list(map(starts.__getitem__, firsts))  # where each piece starts in flat
        bounds.append(len(flat))
        pieces.update(zip(regular, map(flat.__getitem__, map(slice, bounds, bounds[1:]))))

    def _encode_chunks(self, chunks: list[str]) -> list[int]:
        cache = self.chunk_cache
        try:
            return list(chain.from_iterable(map(cache.__getitem__, chunks)))
        except KeyError:
            self._fill_chunk_cache(chunks)
            return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def _fill_chunk_cache(self, chunks: Iterable[str]) -> None:
        cache = self.chunk_cache
        unique = set(chunks)
        missing = unique.difference(cache)
        if len(cache) + len(missing) > self.cache_size:
            cache.clear()
            missing = unique
        bpe = self._bpe
        with paused_gc():
            for chunk in missing:
                cache[chunk] = bpe(chunk.encode("utf-8"))

    def _bpe(self, data: bytes) -> list[int]:
        """Merge the bytes of one chunk: repeatedly the lowest-rank pair present, leftmost
        first (the GPT-2 algorithm). Ranks are ids: a lower id is an earlier merge.

        Merging one occurrence at a time equals merging all of them in one left-to-right pass:
        the pairs a merge creates contain the new token, so their ranks are higher and the
        remaining occurrences stay the lowest. Only the two neighbouring ranks change.
        """
        ids = list(data)
        n = len(ids)
        if n < 2:
            return ids
        K = self._vocab_size
        rank = self._rank_of_key.get
        none = _NOT_A_RANK
        ranks = [rank(ids[j] * K + ids[j + 1], none) for j in range(n - 1)]
        ranks.append(none)  # a sentinel, so that the list is never empty
        while True:
            best = min(ranks)
            if best == none:
                return ids
            i = ranks.index(best)
            ids[i] = best
            del ids[i + 1]
            del ranks[i]
            n -= 1
            if i:
                ranks[i - 1] = rank(ids[i - 1] * K + best, none)
            if i + 1 < n:
                ranks[i] = rank(best * K + ids[i + 1], none)
