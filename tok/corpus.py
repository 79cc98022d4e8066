"""Reading text for training and encoding: files and long strings, in blocks.

Blocks are cut just after a newline between two non-whitespace characters (see
`tok.patterns.next_safe_cut`), where the named split patterns always end a chunk, so that
pre-tokenizing block by block gives exactly the chunks of the whole text while memory stays
bounded by the block size. Files are read as bytes and decoded as strict UTF-8 block by block;
an invalid byte is reported with its file and its offset in that file. Several files can be read
as one text, split into consecutive parts (say train and validation) at safe cuts
(`iter_split_blocks`).

Training reads its inputs as *pieces* (`iter_pieces`): text blocks and byte ranges of files cut
at the same safe points, each small enough to hand to a worker process, which reads a file's
range itself (`piece_text`). With a byte budget, the pieces are an evenly spaced sample.

Token ids are stored as `token_dtype(vocab_size)`: uint16 when every id fits, else uint32.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from itertools import accumulate, pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from tok.errors import TokenizerError
from tok.patterns import next_safe_cut, safe_cut_in_bytes

if TYPE_CHECKING:
    import numpy as np

BLOCK_SIZE = 1 << 20  # bytes (files) or characters (strings) per block, before the cut

Inputs = str | os.PathLike | Iterable[str | os.PathLike] | None  # texts and files: `iter_inputs`


def token_dtype(vocab_size: int) -> np.dtype:
    """The dtype that stores the ids of a `vocab_size` vocabulary: uint16 when every id fits
    (vocab_size <= 65536), else uint32."""
    import numpy as np

    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def iter_inputs(
    inputs: Inputs, files: Iterable[str | os.PathLike] = (), *, block_size: int = BLOCK_SIZE
) -> Iterator[str]:
    """Blocks of text from `inputs` and `files`, in order.

    The rule: a plain ``str`` is text; a ``pathlib.Path`` (any ``os.PathLike``) is a file to
    read; an iterable may mix both; every entry of `files` is a path, ``str`` or not.
    """
    for source in iter_sources(inputs, files):
        if isinstance(source, str):
            yield from iter_text_blocks(source, block_size=block_size)
        else:
            yield from iter_file_blocks(source, block_size=block_size)


def iter_sources(
    inputs: Inputs, files: Iterable[str | os.PathLike] = ()
) -> Iterator[str | os.PathLike]:
    """The texts (``str``) and files (``os.PathLike``) of `inputs` and `files`, in order, by
    the rule of `iter_inputs` (a ``str`` entry of `files` comes out as a ``pathlib.Path``)."""
    if isinstance(inputs, (bytes, bytearray)):
        raise TypeError("training input must be str text or a path, not bytes")
    if inputs is None or isinstance(inputs, (str, os.PathLike)):
        inputs = () if inputs is None else [inputs]
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(
                f"training inputs must be str (text) or pathlib.Path (file), got {type(item)}"
            )
        yield item
    for path in [files] if isinstance(files, (str, os.PathLike)) else files:
        yield Path(path) if isinstance(path, str) else path


def iter_text_blocks(text: str, *, block_size: int = BLOCK_SIZE) -> Iterator[str]:
    """`text` in blocks of about `block_size` characters cut at safe newlines (whole if none)."""
    start = 0
    while len(text) - start > block_size:
        at = next_safe_cut(text, start + block_size // 2)
        if at < 0:
            break
        yield text[start:at]
        start = at
    yield text[start:]


def open_input(path: str | os.PathLike):
    """Open `path` for binary reading, turning OS errors into one-line `TokenizerError`s."""
    try:
        return open(path, "rb")  # the caller closes it
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TokenizerError(f"{path}: is a directory, not a text file") from None
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read ({e.strerror})") from None


def decode_utf8(data: bytes, path: str | os.PathLike, offset: int) -> str:
    """`data` (read from `path` at byte `offset`) as text; invalid UTF-8 names its offset."""
    return _decode_at(data, offset, [(0, path)])


def _decode_at(data: bytes, offset: int, starts: list[tuple[int, str | os.PathLike]]) -> str:
    """`data`, found at byte `offset` of files read one after the other (`starts`: the offset
    where each file begins), as text; invalid UTF-8 names the file and the offset in it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = offset + e.start
        begin, path = next((b, p) for b, p in reversed(starts) if b <= at)
        raise TokenizerError(
            f"{path}: not UTF-8 text (invalid byte at offset {at - begin})"
        ) from None


def char_boundary(data: bytes | bytearray, i: int) -> int:
    """The first UTF-8 character boundary at or after byte `i` (at most ``len(data)``)."""
    i = min(i, len(data))
    while i < len(data) and (data[i] & 0xC0) == 0x80:  # 0b10xxxxxx: a continuation byte
        i += 1
    return i


def iter_file_blocks(
    path: str | os.PathLike, *, cut: bool = True, block_size: int = BLOCK_SIZE
) -> Iterator[str]:
    """The UTF-8 text of the file at `path`, in blocks cut at safe newlines (whole with
    ``cut=False``).

    Line endings are kept as they are (no newline translation): encoding a file is encoding
    its exact contents.
    """
    if not cut:
        yield read_utf8(path)
        return
    for _, text, _ in iter_split_blocks([path], block_size=block_size):
        yield text


def iter_split_blocks(
    paths: Sequence[str | os.PathLike],
    split_at: Sequence[int] = (),
    *,
    block_size: int = BLOCK_SIZE,
    max_bytes: int | None = None,
) -> Iterator[tuple[int, str, int]]:
    r"""The text of the files read one after the other, as ``(part, text, n_bytes)`` blocks.

    Blocks hold about `block_size` bytes, end at safe cuts and are never empty (`n_bytes`: the
    UTF-8 length of `text`). Part ``k > 0`` starts just after the first cut-safe newline at or
    after byte ``split_at[k - 1]`` (increasing offsets), or at a character boundary if the text
    has no safe cut left. A buffer of `max_bytes` (if given) without a safe cut is cut at a
    character boundary: memory stays bounded, and only there can pre-tokens change.

    A file `f` holding ``ab\ncd\nef\ngh``, split at byte 4 (just after the "c"):

    >>> list(iter_split_blocks([f], [4], block_size=4))
    [(0, 'ab\ncd\n', 6), (1, 'ef\n', 3), (1, 'gh', 2)]
    """
    buf = bytearray()
    base = 0  # offset of buf[0] in the files
    part = 0
    starts = list(zip(accumulate(map(file_size, paths), initial=0), paths))  # file offsets
    scanned = (-1, 0)  # (search start, end): no safe cut from that start up to that end
    for chunk in _read_chunks(paths, block_size):
        buf += chunk
        while True:
            splitting = part < len(split_at) and base + len(buf) > split_at[part]
            if splitting:
                start = split_at[part] - base
                fallback = max(start, 1)  # a cut at 0 would not move on
            elif len(buf) > block_size:
                start, fallback = block_size // 2, block_size
            else:
                break
            cut = safe_cut_in_bytes(buf, scanned[1] if scanned[0] == start else start)
            if cut < 0 and max_bytes is not None and len(buf) >= max_bytes:
                cut = char_boundary(buf, fallback)
            if cut < 0:  # read more; a newline in the last bytes may wait for its next character
                scanned = (start, max(start, len(buf) - 8))
                break
            yield part, _decode_at(bytes(buf[:cut]), base, starts), cut
            del buf[:cut]
            base += cut
            part += splitting
            scanned = (-1, 0)
    for split in split_at[part:]:
        cut = safe_cut_in_bytes(buf, split - base)
        cut = char_boundary(buf, max(split - base, 0)) if cut < 0 else cut
        if cut:
            yield part, _decode_at(bytes(buf[:cut]), base, starts), cut
        del buf[:cut]
        base += cut
        part += 1
    if buf:
        yield part, _decode_at(bytes(buf), base, starts), len(buf)


def _read_chunks(paths: Sequence[str | os.PathLike], size: int) -> Iterator[bytes]:
    """The bytes of the files one after the other, `size` at a time."""
    for path in paths:
        with open_input(path) as f:
            yield from iter(partial(f.read, size), b"")


def file_size(path: str | os.PathLike) -> int:
    """The size of the file at `path` in bytes, with a one-line error when it is unreadable."""
    with open_input(path) as f:
        return os.fstat(f.fileno()).st_size


def plan_segments(path: str | os.PathLike, size: int, count: int) -> list[tuple[int, int]]:
    """Byte ranges that split the file into about `count` segments at safe newline cuts."""
    cuts = [0]
    window = 1 << 16
    with open_input(path) as f:
        for i in range(1, count):
            target = max(size * i // count, cuts[-1] + 1)
            f.seek(target)
            data = f.read(window)
            at = safe_cut_in_bytes(data, 1)
            if at < 0 or target + at >= size:
                continue
            cuts.append(target + at)
    cuts.append(size)
    return [(a, b) for a, b in pairwise(cuts) if b > a]


def read_utf8(path: str | os.PathLike, start: int = 0, end: int | None = None) -> str:
    """The text of bytes ``[start, end)`` of the file (a segment from `plan_segments`; by
    default the whole file)."""
    with open_input(path) as f:
        if start:  # a pipe (such as /dev/stdin) cannot seek, even to 0
            f.seek(start)
        return decode_utf8(f.read(-1 if end is None else end - start), path, start)


# A piece of training text (`iter_pieces`): a text block, or the bytes ``[start, end)`` of the
# file at a path. Pieces are what goes to worker processes: a file's range is read by the worker.
Piece = str | tuple[str, int, int]

SNAP_WINDOW = 1 << 16  # bytes searched for a safe cut when a sample window starts or ends


def iter_pieces(
    inputs: Inputs,
    files: Iterable[str | os.PathLike] = (),
    *,
    max_bytes: int | None = None,
    block_size: int = BLOCK_SIZE,
) -> Iterator[Piece]:
    """The text of `inputs` and `files` (the rule of `iter_inputs`) as pieces of about
    `block_size` bytes (characters for texts) cut at safe newlines, in order; pieces never span
    two inputs. Their chunks are exactly those of the whole text.

    With `max_bytes`, a deterministic sample of about that many bytes: ``ceil(max_bytes /
    block_size)`` equal windows at evenly spaced offsets of the inputs taken end to end, each
    moved to the next safe cut (within `SNAP_WINDOW`, else to the next character) at both ends.
    Evenly spaced, because a corpus is often made of sources laid one after the other, and its
    beginning would stand for only the first of them. `inputs` that are an iterator (such as a
    generator of documents) can only be read once, in order: their sample is the first
    `max_bytes` instead. The whole text when it is no larger than `max_bytes`.
    """
    sources = iter_sources(inputs, files)
    if max_bytes is None:
        for source in sources:
            yield from _source_pieces(source, _source_size(source), block_size)
    elif isinstance(inputs, Iterator):
        yield from _first_bytes(sources, max_bytes, block_size)
    else:
        yield from _spaced_windows(list(sources), max_bytes, block_size)


def _first_bytes(
    sources: Iterable[str | os.PathLike], max_bytes: int, block_size: int
) -> Iterator[Piece]:
    """The pieces of about the first `max_bytes` of `sources`, read once, in order."""
    budget = max_bytes
    for source in sources:
        size = _source_size(source)
        if size >= budget:
            yield from _source_pieces(source, _snap(source, budget, size), block_size)
            return
        yield from _source_pieces(source, size, block_size)
        budget -= size


def _spaced_windows(
    sources: list[str | os.PathLike], max_bytes: int, block_size: int
) -> Iterator[Piece]:
    """``ceil(max_bytes / block_size)`` windows of ``max_bytes / count`` at evenly spaced
    offsets of `sources` taken end to end, moved to safe cuts (all of it if it is smaller)."""
    sizes = [_source_size(s) for s in sources]
    total = sum(sizes)
    if total <= max_bytes:
        for source, size in zip(sources, sizes):
            yield from _source_pieces(source, size, block_size)
        return
    count = -(-max_bytes // block_size)
    windows = [(w * total // count, w * total // count + max_bytes // count) for w in range(count)]
    for source, size, base in zip(sources, sizes, accumulate(sizes, initial=0)):
        done = 0  # the end of the last window taken: moved windows must not overlap
        for a, b in windows:
            a, b = max(a - base, 0), min(b - base, size)
            if a >= b:
                continue
            a = max(_snap(source, a, size), done)
            b = _snap(source, b, size)
            if b > a:
                yield source[a:b] if isinstance(source, str) else (os.fspath(source), a, b)
                done = b


def piece_text(piece: Piece) -> str:
    """The text of a piece from `iter_pieces` (reading the file's range for a file piece)."""
    return piece if isinstance(piece, str) else read_utf8(*piece)


def piece_size(piece: Piece) -> int:
    """The size of a piece: characters of a text block, bytes of a file range."""
    return len(piece) if isinstance(piece, str) else piece[2] - piece[1]


def _source_size(source: str | os.PathLike) -> int:
    return len(source) if isinstance(source, str) else file_size(source)


def _source_pieces(source: str | os.PathLike, end: int, block_size: int) -> Iterator[Piece]:
    """The pieces of the first `end` characters or bytes of a text or file (`end` at a cut)."""
    if isinstance(source, str):
        yield from iter_text_blocks(source[:end] if end < len(source) else source,
                                    block_size=block_size)  # fmt: skip
        return
    path = os.fspath(source)
    for a, b in plan_segments(path, end, -(-end // block_size)):
        yield path, a, b


def _snap(source: str | os.PathLike, offset: int, size: int) -> int:
    """The first safe cut just after a newline after `offset` (searched within `SNAP_WINDOW`)
    in a text or file of `size`, else the first character boundary at or after `offset`."""
    if offset <= 0 or offset >= size:
        return min(max(offset, 0), size)
    if isinstance(source, str):
        at = next_safe_cut(source[offset : offset + SNAP_WINDOW], 1)
        return offset + at if at > 0 else offset
    with open_input(source) as f:
        f.seek(offset)
        data = f.read(SNAP_WINDOW)
    at = safe_cut_in_bytes(data, 1)
    return offset + (at if at > 0 else char_boundary(data, 0))
