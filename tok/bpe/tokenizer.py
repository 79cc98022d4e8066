"""The `Tokenizer`: merges, special tokens, vocabulary, fingerprint, encoding and decoding,
and `StreamDecoder` (see the package docstring for the model)."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING

import tok.serialize as serialize
from tok.bpe.encoder import CachedEncoder
from tok.bpe.fast_path import tiktoken_encoding
from tok.bpe.specials import AllowedSpecial, allowed_specials, check_specials, special_regex
from tok.bpe.workers import encode_segments
from tok.corpus import (
    Inputs,
    file_size,
    iter_file_blocks,
    iter_pieces,
    plan_segments,
    token_dtype,
)
from tok.errors import TokenizerError, is_int
from tok.patterns import DEFAULT_PATTERN, SplitPattern, resolve_pattern
from tok.serialize import DEFAULT_PATH
from tok.trainer import count_pieces, learn_merges

if TYPE_CHECKING:
    import numpy as np

PARALLEL_THRESHOLD = 16 << 20  # bytes: `encode_file` uses processes from this size on


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
        self._special: dict[str, int] = check_specials(special_tokens, 256 + len(self.merges))
        for name in sorted(self._special, key=self._special.__getitem__):
            table.append(name.encode("utf-8"))
        self._bytes: list[bytes] = table
        self.vocab_size: int = len(table)
        self._encoder = CachedEncoder(self._pattern, self.merges, self.vocab_size)
        self._fast_wanted = fast
        self._tiktoken = None  # the tiktoken.Encoding once built; False when not used
        self.fast_path_note = ""  # why the fast path is off, when it is

    @classmethod
    def train(
        cls,
        inputs: Inputs,
        vocab_size: int,
        *,
        files: Iterable[str | os.PathLike] = (),
        pattern: str = DEFAULT_PATTERN,
        special_tokens: Sequence[str] = (),
        min_frequency: int = 1,
        progress: bool = False,
        fast: bool | None = None,
        workers: int | None = None,
        max_bytes: int | None = None,
    ) -> Tokenizer:
        """Train a tokenizer of `vocab_size` tokens (256 bytes + merges + `special_tokens`).

        The input rule (`tok.corpus.iter_inputs`): `inputs` is text when it is a ``str``, a file
        when it is a ``pathlib.Path``, or an iterable mixing both (documents: merges never cross
        from one to the next); every entry of `files` is a file path, ``str`` or not. Files are
        UTF-8 and read in blocks: memory grows with the number of distinct chunks.

        The chunks are counted in `workers` processes (default: one per CPU) once the text
        exceeds `tok.trainer.TASK_BYTES`; workers read their own ranges of the files. With
        `max_bytes`, training reads a deterministic sample of about that many bytes: evenly
        spaced windows of the inputs, or the first `max_bytes` of an iterator of texts (see
        `tok.corpus.iter_pieces`).

        Training stops before `vocab_size` when no pair occurs `min_frequency` times (or at
        all): check ``tokenizer.vocab_size``. ``vocab_size=256`` gives a pure byte-level
        tokenizer (no merges). `special_tokens` get the ids after the merges, in order. The
        result is deterministic, the same file whatever `workers` (see `tok.trainer` for the
        tie-break).
        """
        if not is_int(vocab_size):
            raise TokenizerError(f"vocab size must be an integer, got {vocab_size!r}")
        specials = list(check_specials(special_tokens, 256))
        smallest = 256 + len(specials)
        if vocab_size < smallest:
            raise TokenizerError(
                f"vocab size {vocab_size} is below the minimum {smallest} "
                f"(256 byte tokens + {len(specials)} special tokens)"
            )
        if not is_int(min_frequency) or min_frequency < 1:
            raise TokenizerError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
        if inputs is None and not files:
            raise TokenizerError("no training text: give a text, a file path or files=[...]")
        workers = (os.cpu_count() or 1) if workers is None else workers
        if not is_int(workers) or workers < 1:
            raise TokenizerError(f"workers must be an integer >= 1, got {workers!r}")
        if max_bytes is not None and (not is_int(max_bytes) or max_bytes < 1):
            raise TokenizerError(f"max_bytes must be an integer >= 1, got {max_bytes!r}")
        split = resolve_pattern(pattern)
        pieces = iter_pieces(inputs, files, max_bytes=max_bytes)
        counts = count_pieces(pieces, split, workers=workers, progress=progress)
        merges = learn_merges(
            counts, vocab_size - smallest, min_frequency=min_frequency, progress=progress
        )
        return cls(merges, split.source, specials, fast=fast)

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
        allowed = allowed_specials(allowed_special, self._special)
        if allowed is None:  # none_raise
            found = special_regex(self._special).search(text) if self._special else None
            if found:
                raise TokenizerError(
                    f"the text contains the special token {found.group()!r}; pass "
                    "allowed_special='all' (or a set holding it) to encode it as its id, or "
                    "'none' to encode it as text"
                )
        if not allowed:  # none to let through ("none_raise" found none in the text)
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for m in special_regex(allowed).finditer(text):
            out += self.encode_ordinary(text[start : m.start()])
            out.append(self._special[m.group()])
            start = m.end()
        out += self.encode_ordinary(text[start:])
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        """The token ids of `text`, special tokens' text included as ordinary text."""
        _check_text(text, "encode() takes str")
        enc = self._fast_encoding()
        if enc is not None:
            return enc.encode_ordinary(text)
        return self._encoder.encode(text)

    def encode_batch(
        self, texts: Iterable[str], allowed_special: AllowedSpecial = "none"
    ) -> list[list[int]]:
        """`encode` each text (with the fast path, in threads)."""
        texts = list(texts)
        enc = self._fast_encoding()
        if enc is None or allowed_special != "none":
            return [self.encode(t, allowed_special) for t in texts]
        for t in texts:
            _check_text(t, "encode_batch() takes str texts")
        return enc.encode_ordinary_batch(texts)

    @property
    def cuts_are_safe(self) -> bool:
        """Whether text cut into blocks at safe newlines (`tok.corpus`) encodes to exactly the
        ids of the whole text: a named split pattern, and no special token with a newline
        that a cut could split."""
        return self._pattern.cuts_are_safe and not any("\n" in s for s in self._special)

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

        allowed_specials(allowed_special, self._special)  # a bad value fails before any work
        dtype = token_dtype(self.vocab_size)
        cuttable = self.cuts_are_safe
        size = file_size(path)
        workers = (os.cpu_count() or 1) if workers is None else workers
        if cuttable and workers > 1 and size >= parallel_threshold:
            segments = plan_segments(path, size, workers * 4)
            if len(segments) > 1:
                return encode_segments(self, path, segments, allowed_special, workers, dtype)
        parts = [
            np.array(self.encode(block, allowed_special), dtype=dtype)
            for block in iter_file_blocks(path, cut=cuttable)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

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
                if not is_int(i):
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

    def to_json(self) -> str:
        """The tokenizer as the text of a ``bpe.json`` file (see `tok.serialize`)."""
        return serialize.dumps(self)

    @classmethod
    def from_json(cls, text: str, source: str = "<json>", *, fast: bool | None = None) -> Tokenizer:
        """The tokenizer in `text` (a ``bpe.json`` file's content); errors name `source`."""
        return serialize.loads(text, source, partial(cls, fast=fast))

    def save(self, path: str | os.PathLike = DEFAULT_PATH) -> Path:
        """Write ``path`` (JSON) and the readable listing beside it (``.vocab``), each
        atomically. Returns the path."""
        return serialize.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_PATH, *, fast: bool | None = None) -> Tokenizer:
        """Read a tokenizer file; any problem is one `TokenizerError` line naming the file."""
        return serialize.load(path, partial(cls, fast=fast))

    @property
    def fast_path(self) -> bool:
        """Whether ordinary encoding goes through tiktoken (see `fast_path_note` when not)."""
        return self._fast_encoding() is not None

    def _fast_encoding(self):
        if self._tiktoken is None:
            name = f"llm_tiny-{self.fingerprint[:16]}"
            self._tiktoken, self.fast_path_note = tiktoken_encoding(
                self._fast_wanted, self._bytes, self.merges, self._pattern, name
            )
        return self._tiktoken or None


class StreamDecoder:
    """Decode tokens one at a time, for streaming generation.

    `push` returns the text completed by this token, never half of a character: bytes of a
    character cut between tokens wait for the rest. `flush` returns what is left (an unfinished
    character becomes U+FFFD) and resets. Joining every `push` and the `flush` gives
    ``tokenizer.decode(ids)``.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._tokenizer.decode_bytes([token_id]))

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


def _check_text(text: str, takes: str) -> None:
    """Raise a clear error for what is not a string (`takes`: what the caller takes) or holds a
    lone surrogate (not valid UTF-8)."""
    if not isinstance(text, str):
        raise TypeError(f"{takes}, not {type(text).__name__}")
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
