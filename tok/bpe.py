"""A byte-level BPE tokenizer: trainer, encoder, decoder, files (CLI: ``python -m tok.bpe``).

The model:

- Ids 0-255 are the raw bytes; merge ``i`` creates id ``256 + i``; special tokens (such as
  ``<|endoftext|>``) take the ids after the last merge. ``vocab_size = 256 + merges + specials``.
- Text is pre-tokenized by a split pattern (`tok.patterns`: ``gpt2``, ``gpt4`` or a regex) and
  merges never cross chunk boundaries. Every valid Python string round-trips,
  ``decode(encode(s)) == s``; a string holding a lone surrogate is not valid UTF-8 and raises
  `TokenizerError` (a ``ValueError``).
- Encoding applies the merges inside each chunk by rank, lowest rank first (the GPT-2
  algorithm), with a cache chunk -> ids. ASCII text is pre-tokenized whole by the standard
  library's `re` (faster than `regex`); other text is cut at spaces into pieces, cached
  piece -> ids, so that only distinct pieces meet the slower `regex` engine. When `tiktoken` is
  installed (extra ``fast``) and the pattern is a named one, a ``tiktoken.Encoding`` built from
  our own pattern and ranks does the ordinary encoding, after a check that it agrees with our
  merges; the results are identical (tested), and ``fast=False`` turns it off.
- Special tokens follow tiktoken's semantics, with the default of ``encode_ordinary``: see
  `Tokenizer.encode`.
- Decoding joins the tokens' bytes; `decode` turns them into text with ``errors="replace"``
  (an arbitrary id sequence may cut a character), `decode_bytes` returns them raw, and
  `StreamDecoder` yields text token by token without ever splitting a character.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import cached_property
from itertools import accumulate, chain, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tok import serialize
from tok.corpus import file_size, iter_file_blocks, iter_inputs, iter_text_blocks, plan_segments
from tok.errors import TokenizerError
from tok.patterns import (
    DEFAULT_PATTERN,
    SplitPattern,
    chunk_regular_tails,
    resolve_pattern,
    split_pieces,
)
from tok.trainer import count_chunks, learn_merges, paused_gc

if TYPE_CHECKING:
    import numpy as np

DEFAULT_PATH = "tok/bpe.json"  # relative to the directory of the run
CACHE_SIZE = 1 << 18  # entries per cache (pieces, chunks); a full cache is cleared
PARALLEL_THRESHOLD = 16 << 20  # bytes: `encode_file` uses processes from this size on
_ENCODE_BLOCK = 1 << 20  # characters: longer texts are encoded block by block (bounded memory)
_NOT_A_RANK = 1 << 62

AllowedSpecial = Literal["all", "none", "none_raise"] | Collection[str]
TrainingInput = str | os.PathLike | Iterable[str | os.PathLike] | None


class Tokenizer:
    """A byte-level BPE tokenizer: merges in rank order, a split pattern, special tokens.

    Build one with `Tokenizer.train`, `Tokenizer.load` or `Tokenizer.from_json`; the
    constructor takes the merges directly and checks them.

    NOTE: the pure-Python encoder's caches are not locked; share one tokenizer between threads
    only with the fast path, or give each thread its own (`from_json(tok.to_json())`).
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int]] = (),
        pattern: str = DEFAULT_PATTERN,
        special_tokens: Mapping[str, int] | Sequence[str] = (),
        *,
        fast: bool | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._pattern: SplitPattern = resolve_pattern(pattern)
        self.merges: tuple[tuple[int, int], ...] = tuple((int(a), int(b)) for a, b in merges)
        table = [bytes([i]) for i in range(256)]
        seen: dict[tuple[int, int], int] = {}
        for r, (a, b) in enumerate(self.merges):
            top = 255 + r
            for x in (a, b):
                if not 0 <= x <= top:
                    raise TokenizerError(
                        f"merge {r} ([{a}, {b}]) refers to id {x}, which is not defined before "
                        f"it (ids 0-{top})"
                    )
            if (a, b) in seen:
                raise TokenizerError(f"merge {r} repeats merge {seen[a, b]} ([{a}, {b}])")
            seen[a, b] = r
            table.append(table[a] + table[b])
        self._ranks: dict[tuple[int, int], int] = {p: 256 + r for p, r in seen.items()}
        self._special: dict[str, int] = _check_specials(special_tokens, 256 + len(self.merges))
        for name in sorted(self._special, key=self._special.__getitem__):
            table.append(name.encode("utf-8"))
        self._bytes: list[bytes] = table
        self.vocab_size: int = len(table)
        # The same ranks keyed by the int a * vocab_size + b: cheaper to build and hash than a
        # tuple in the encoder's inner loop.
        self._rank_of_key = {a * self.vocab_size + b: i for (a, b), i in self._ranks.items()}
        self._fast_wanted = fast
        self._cache_size = cache_size
        self._piece_cache: dict[str, list[int]] = {}
        self._chunk_cache: dict[str, list[int]] = {}
        self._tiktoken = None  # the tiktoken.Encoding once built; False when not used
        self.fast_path_note = ""  # why the fast path is off, when it is

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        inputs: TrainingInput,
        vocab_size: int,
        *,
        files: Iterable[str | os.PathLike] = (),
        pattern: str = DEFAULT_PATTERN,
        special_tokens: Sequence[str] = (),
        min_frequency: int = 1,
        progress: bool = False,
        fast: bool | None = None,
    ) -> Tokenizer:
        """Train a tokenizer of `vocab_size` tokens (256 bytes + merges + `special_tokens`).

        The input rule: `inputs` is text when it is a ``str``, a file when it is a
        ``pathlib.Path`` (any ``os.PathLike``), or an iterable mixing both (documents: merges
        never cross from one to the next); every entry of `files` is a file path, whether
        ``str`` or ``Path``. Files are UTF-8 and read in blocks, so memory grows with the
        number of distinct chunks, not with the size of the text.

        Training stops before `vocab_size` when no pair occurs `min_frequency` times (or at
        all): check ``tokenizer.vocab_size``. ``vocab_size=256`` gives a pure byte-level
        tokenizer (no merges). `special_tokens` get the ids after the merges, in order. The
        result is deterministic (see `tok.trainer` for the tie-break).
        """
        if not _is_int(vocab_size):
            raise TokenizerError(f"vocab size must be an integer, got {vocab_size!r}")
        if isinstance(special_tokens, str):
            special_tokens = [special_tokens]
        specials = list(special_tokens)
        _check_specials(specials, 256)
        smallest = 256 + len(specials)
        if vocab_size < smallest:
            raise TokenizerError(
                f"vocab size {vocab_size} is below the minimum {smallest} "
                f"(256 byte tokens + {len(specials)} special tokens)"
            )
        if not _is_int(min_frequency) or min_frequency < 1:
            raise TokenizerError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
        if inputs is None and not files:
            raise TokenizerError("no training text: give a text, a file path or files=[...]")
        split = resolve_pattern(pattern)
        counts = count_chunks(iter_inputs(inputs, files), split)
        merges = learn_merges(
            counts, vocab_size - smallest, min_frequency=min_frequency, progress=progress
        )
        return cls(merges, split.source, specials, fast=fast)

    # ------------------------------------------------------------------ properties

    @property
    def pattern(self) -> str:
        """The split pattern's regex."""
        return self._pattern.source

    @property
    def pattern_name(self) -> str | None:
        """``"gpt2"`` or ``"gpt4"`` for the named patterns, else None."""
        return self._pattern.name

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token text -> id (a copy)."""
        return dict(self._special)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 (hex) of the canonical content: pattern, merges and special tokens."""
        canonical = json.dumps(
            {
                "pattern": self.pattern,
                "merges": [list(m) for m in self.merges],
                "special_tokens": sorted([k, v] for k, v in self._special.items()),
            },
            separators=(",", ":"),
            ensure_ascii=True,
        )
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's text as UTF-8)."""
        return self.decode_bytes([token_id])

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, pattern={self._pattern.display!r}, "
            f"special_tokens={self._special!r})"
        )

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        """The token ids of `text`.

        `allowed_special` says what happens to the text of a registered special token:

        - ``"none"`` (default): it is ordinary text, encoded byte by byte like any other
          (tiktoken's ``encode_ordinary``);
        - ``"all"``: every special token's text becomes its id (tiktoken's
          ``allowed_special="all"``);
        - a set of special tokens: those become their ids, the others stay ordinary text
          (tiktoken's ``allowed_special=S, disallowed_special=()``);
        - ``"none_raise"``: `TokenizerError` if any special token's text occurs (tiktoken's
          default ``disallowed_special="all"``).
        """
        allowed = self._allowed(allowed_special)
        if allowed is None:  # none_raise
            found = self._find_special(text, self._special)
            if found is not None:
                raise TokenizerError(
                    f"the text contains the special token {found!r}; pass allowed_special='all' "
                    "(or a set holding it) to encode it as its id, or 'none' to encode it as text"
                )
            return self.encode_ordinary(text)
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for m in self._special_regex(allowed).finditer(text):
            out += self.encode_ordinary(text[start : m.start()])
            out.append(self._special[m.group()])
            start = m.end()
        out += self.encode_ordinary(text[start:])
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        """The token ids of `text`, special tokens' text included as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__}")
        _check_utf8(text)
        enc = self._fast_encoding()
        if enc is not None:
            return enc.encode_ordinary(text)
        if len(text) <= _ENCODE_BLOCK or not self._pattern.cuts_are_safe:
            return self._encode_pure(text)
        out: list[int] = []
        for block in iter_text_blocks(text, block_size=_ENCODE_BLOCK):
            out += self._encode_pure(block)
        return out

    def encode_batch(
        self, texts: Iterable[str], allowed_special: AllowedSpecial = "none"
    ) -> list[list[int]]:
        """`encode` each text (with the fast path, in threads)."""
        texts = list(texts)
        enc = self._fast_encoding()
        if enc is not None and allowed_special == "none":
            for t in texts:
                if not isinstance(t, str):
                    raise TypeError(f"encode_batch() takes str texts, not {type(t).__name__}")
                _check_utf8(t)
            return enc.encode_ordinary_batch(texts)
        return [self.encode(t, allowed_special) for t in texts]

    def encode_file(
        self,
        path: str | os.PathLike,
        allowed_special: AllowedSpecial = "none",
        *,
        workers: int | None = None,
        parallel_threshold: int = PARALLEL_THRESHOLD,
    ) -> np.ndarray:
        """The token ids of a UTF-8 file as a numpy array (uint16 when the vocab fits, else
        uint32), exactly ``encode(text)`` of its contents (line endings kept as they are).

        The file is read in blocks cut at safe newlines; from `parallel_threshold` bytes on,
        its segments are encoded in `workers` processes (default: one per CPU). Both need a
        named pattern and special tokens without newlines; otherwise the file is read whole.
        """
        import numpy as np

        self._allowed(allowed_special)  # a bad value fails before any work
        dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32
        cuttable = self._pattern.cuts_are_safe and not any("\n" in s for s in self._special)
        size = file_size(path)
        workers = (os.cpu_count() or 1) if workers is None else workers
        if cuttable and workers > 1 and size >= parallel_threshold:
            segments = plan_segments(path, size, workers * 4)
            if len(segments) > 1:
                return _encode_segments(self, path, segments, allowed_special, workers, dtype)
        parts = [
            np.array(self.encode(block, allowed_special), dtype=dtype)
            for block in iter_file_blocks(path, cut=cuttable)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    # ------------------------------------------------------------------ decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of the tokens `ids` (which may end in the middle of a character)."""
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
            ids = ids.tolist()
        elif not isinstance(ids, list):
            ids = list(ids)
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join(map(self._bytes.__getitem__, ids))
        except (IndexError, TypeError):
            for i in ids:
                if not _is_int(i):
                    raise TokenizerError(f"token ids must be integers, got {i!r}") from None
                if not 0 <= i < self.vocab_size:
                    raise TokenizerError(
                        f"token id {i} is out of range (vocab size {self.vocab_size}: ids 0-"
                        f"{self.vocab_size - 1})"
                    ) from None
            raise

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """The text of the tokens `ids`. A sequence that cuts a UTF-8 character decodes with
        U+FFFD in its place (``errors="replace"``); ``errors="strict"`` raises instead."""
        data = self.decode_bytes(ids)
        try:
            return data.decode("utf-8", errors=errors)
        except UnicodeDecodeError as e:
            raise TokenizerError(
                f"the tokens do not decode to valid UTF-8 (byte {e.start}: {e.reason})"
            ) from None

    # ------------------------------------------------------------------ files

    def to_json(self) -> str:
        """The tokenizer as the text of a ``bpe.json`` file (see `tok.serialize`)."""
        return serialize.dumps(
            vocab_size=self.vocab_size,
            pattern=self.pattern,
            pattern_name=self.pattern_name,
            special_tokens=self._special,
            merges=list(self.merges),
        )

    @classmethod
    def from_json(cls, text: str, source: str = "<json>", *, fast: bool | None = None) -> Tokenizer:
        """The tokenizer in `text` (a ``bpe.json`` file's content); errors name `source`."""
        try:
            fields = serialize.parse(text)
            return cls(fields["merges"], fields["pattern"], fields["special_tokens"], fast=fast)
        except TokenizerError as e:
            raise TokenizerError(f"{source}: {e}") from None

    def save(self, path: str | os.PathLike = DEFAULT_PATH) -> Path:
        """Write ``path`` (JSON) and the readable listing beside it (``.vocab``), each
        atomically. Returns the path."""
        path = Path(path)
        serialize.write_atomic(path, self.to_json())
        listing = serialize.vocab_listing(self._bytes, list(self.merges), self._special)
        serialize.write_atomic(serialize.vocab_path(path), listing)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_PATH, *, fast: bool | None = None) -> Tokenizer:
        """Read a tokenizer file; any problem is one `TokenizerError` line naming the file."""
        return cls.from_json(serialize.read_text(path), source=str(path), fast=fast)

    # ------------------------------------------------------------------ internals

    def _allowed(self, allowed_special: AllowedSpecial) -> dict[str, int] | None:
        """The allowed special tokens as name -> id; None for "none_raise"."""
        if isinstance(allowed_special, str):
            if allowed_special == "all":
                return self._special
            if allowed_special == "none":
                return {}
            if allowed_special == "none_raise":
                return None
            raise TokenizerError(
                f"allowed_special must be 'all', 'none', 'none_raise' or a set of special "
                f"tokens, got {allowed_special!r}"
            )
        allowed = {}
        for name in allowed_special:
            if name not in self._special:
                raise TokenizerError(f"{name!r} is not a special token of this tokenizer")
            allowed[name] = self._special[name]
        return allowed

    def _special_regex(self, specials: Mapping[str, int]) -> re.Pattern:
        # Longest first: at one position the longest special token wins. (Specials that are
        # prefixes of one another are refused at construction, so this is also leftmost-first.)
        names = sorted(specials, key=lambda s: (-len(s), s))
        return re.compile("|".join(map(re.escape, names)))

    def _find_special(self, text: str, specials: Mapping[str, int]) -> str | None:
        if not specials:
            return None
        m = self._special_regex(specials).search(text)
        return m.group() if m else None

    def _encode_pure(self, text: str) -> list[int]:
        """The ordinary encoding in pure Python, through two caches.

        ASCII text (or any text, with a custom pattern) is pre-tokenized whole, and its chunks
        looked up in the chunk cache. Other text is cut into pieces at spaces (`split_pieces`),
        looked up in the piece cache: only the distinct pieces missing from it are
        pre-tokenized, with the slower `regex` engine.
        """
        pattern = self._pattern
        if text.isascii() or not pattern.cuts_are_safe:
            return self._encode_chunks(pattern.findall(text))
        head, tails, irregular = split_pieces(text)
        out = self._encode_chunks(pattern.findall(head)) if head else []
        n_head = len(out)
        pieces = self._piece_cache
        try:
            out += chain.from_iterable(map(pieces.__getitem__, tails))
        except KeyError:
            del out[n_head:]
            missing = set(tails).difference(pieces)
            if len(pieces) + len(missing) > self._cache_size:
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
        pieces = self._piece_cache
        other = tails & irregular
        for t in other:
            pieces[t] = self._encode_chunks(self._pattern.findall(" " + t))
        regular = list(tails - other)
        if not regular:
            return
        regular, chunks, firsts = chunk_regular_tails(regular, self._pattern)
        self._fill_chunk_cache(chunks)
        id_lists = list(map(self._chunk_cache.__getitem__, chunks))
        flat = list(chain.from_iterable(id_lists))
        starts = [0, *accumulate(map(len, id_lists))]  # chunk i starts at flat[starts[i]]
        bounds = list(map(starts.__getitem__, firsts))  # where each piece starts in flat
        bounds.append(len(flat))
        pieces.update(zip(regular, map(flat.__getitem__, map(slice, bounds, bounds[1:]))))

    def _encode_chunks(self, chunks: list[str]) -> list[int]:
        cache = self._chunk_cache
        try:
            return list(chain.from_iterable(map(cache.__getitem__, chunks)))
        except KeyError:
            self._fill_chunk_cache(chunks)
            return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def _fill_chunk_cache(self, chunks: Iterable[str]) -> None:
        cache = self._chunk_cache
        unique = set(chunks)
        missing = unique.difference(cache)
        if len(cache) + len(missing) > self._cache_size:
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
        K = self.vocab_size
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

    # ------------------------------------------------------------------ fast path

    @property
    def fast_path(self) -> bool:
        """Whether ordinary encoding goes through tiktoken (see `fast_path_note` when not)."""
        return self._fast_encoding() is not None

    def _fast_encoding(self):
        if self._tiktoken is None:
            self._tiktoken = self._build_fast_encoding() or False
        return self._tiktoken or None

    def _build_fast_encoding(self):
        if self._fast_wanted is False:
            self.fast_path_note = "turned off (fast=False)"
            return None
        try:
            import tiktoken
        except ImportError:
            self.fast_path_note = "tiktoken is not installed (pip install 'llm_tiny[fast]')"
            if self._fast_wanted:
                raise TokenizerError(f"fast=True but {self.fast_path_note}") from None
            return None
        reason = self._tiktoken_incompatibility()
        if reason:
            self.fast_path_note = reason
            if self._fast_wanted:
                raise TokenizerError(f"fast=True but {reason}")
            return None
        ranks = {self._bytes[i]: i for i in range(256 + len(self.merges))}
        return tiktoken.Encoding(
            name=f"llm_tiny-{self.fingerprint[:16]}",
            pat_str=self._pattern.source,
            mergeable_ranks=ranks,
            special_tokens={},  # special tokens are handled here, the same way on both paths
        )

    def _tiktoken_incompatibility(self) -> str:
        """Why tiktoken could encode differently from our merges ('' when it cannot).

        tiktoken merges, at each step, the adjacent pair whose concatenated bytes form the
        lowest-ranked token, whichever merge made that token. That is our algorithm when every
        token's bytes are unique and every token splits, under the ranks below its own, into
        exactly the pair it was merged from (the condition minbpe uses to recover merges from
        tiktoken ranks). Our trainer always produces such merges; a hand-edited file may not.
        """
        if not self._pattern.cuts_are_safe:
            return "the split pattern is a custom regex (tiktoken's regex engine may differ)"
        table = self._bytes
        n = 256 + len(self.merges)
        rank = {table[i]: i for i in range(n)}
        if len(rank) != n:
            return "two tokens have the same bytes"
        for r, (a, b) in enumerate(self.merges):
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


class StreamDecoder:
    """Decode tokens one at a time, for streaming generation.

    `push` returns the text completed by this token, never half of a character: bytes of a
    character cut between tokens wait for the rest. `flush` returns what is left (an unfinished
    character becomes U+FFFD) and resets. Joining every `push` and the `flush` gives
    ``tokenizer.decode(ids)``.
    """

    def __init__(self, tokenizer: Tokenizer, errors: str = "replace") -> None:
        self._tokenizer = tokenizer
        self._errors = errors
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._tokenizer.decode_bytes([token_id]))

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


# ---------------------------------------------------------------------- helpers


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_specials(specials: Mapping[str, int] | Sequence[str], first_id: int) -> dict[str, int]:
    """Special tokens as name -> id, checked: non-empty UTF-8 names, none a prefix of another,
    ids unique and exactly ``first_id, first_id + 1, ...`` (a sequence gets them in order)."""
    if isinstance(specials, str):
        specials = [specials]
    if isinstance(specials, Mapping):
        out = dict(specials)
    else:
        out = {}
        for name in specials:
            if name in out:
                raise TokenizerError(f"special token {name!r} is given twice")
            out[name] = first_id + len(out)
    by_id: dict[int, str] = {}
    for name, i in out.items():
        if not isinstance(name, str) or not name:
            raise TokenizerError(f"a special token must be a non-empty string, got {name!r}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise TokenizerError(f"special token {name!r} is not valid UTF-8") from None
        if not _is_int(i):
            raise TokenizerError(f"special token {name!r} has a non-integer id {i!r}")
        if i in by_id:
            raise TokenizerError(f"special tokens {by_id[i]!r} and {name!r} have the same id {i}")
        if i < first_id:
            raise TokenizerError(
                f"special token {name!r} has id {i}, which overlaps the byte and merge ids "
                f"0-{first_id - 1}"
            )
        by_id[i] = name
    expected = range(first_id, first_id + len(out))
    for i in sorted(by_id):
        if i not in expected:
            raise TokenizerError(
                f"special token {by_id[i]!r} has id {i}; the {len(out)} special tokens must "
                f"take the ids {first_id}-{first_id + len(out) - 1}, right after the merges"
            )
    names = sorted(out)
    for x, y in pairwise(names):
        if y.startswith(x):
            raise TokenizerError(
                f"special token {x!r} is a prefix of {y!r}; which one a text holds would be "
                "ambiguous"
            )
    return out


def _check_utf8(text: str) -> None:
    """Raise a clear error for a string that holds a lone surrogate (not valid UTF-8)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TokenizerError(
            f"the text holds a lone surrogate U+{ord(text[e.start]):04X} at index {e.start}: "
            "it is not valid UTF-8 and cannot be encoded (clean it first, e.g. with "
            "s.encode('utf-8', 'replace').decode('utf-8'))"
        ) from None


# Parallel encode_file: module-level functions so that worker processes can import them.

_worker_tokenizer: Tokenizer | None = None


def _init_worker(json_text: str, fast: bool | None) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer.from_json(json_text, source="<parent>", fast=fast)


def _encode_segment(args) -> np.ndarray:
    import numpy as np

    from tok.corpus import read_segment

    path, start, end, allowed_special, dtype = args
    assert _worker_tokenizer is not None
    text = read_segment(path, start, end)
    return np.array(_worker_tokenizer.encode(text, allowed_special), dtype=dtype)


def _encode_segments(tok: Tokenizer, path, segments, allowed_special, workers: int, dtype):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    # NOTE: fork where there is one. "spawn" re-runs the caller's main module in every worker,
    # which breaks (or repeats the work of) any script without an `if __name__ == "__main__"`
    # guard; the workers only run this module's code, which takes no locks a fork could break.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    if not isinstance(allowed_special, str):
        allowed_special = sorted(allowed_special)
    jobs = [(str(path), a, b, allowed_special, dtype) for a, b in segments]
    with ProcessPoolExecutor(
        max_workers=min(workers, len(segments)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(tok.to_json(), tok._fast_wanted),
    ) as pool:
        return np.concatenate(list(pool.map(_encode_segment, jobs)))


if __name__ == "__main__":
    from tok.cli import main

    sys.exit(main())
