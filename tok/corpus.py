"""Reading text for training and encoding: files and long strings, in blocks.

Blocks are cut just after a newline between two non-whitespace characters (see
`tok.patterns.next_safe_cut`), where the named split patterns always end a chunk, so that
pre-tokenizing block by block gives exactly the chunks of the whole text while memory stays
bounded by the block size. Files are read as bytes and decoded as strict UTF-8 block by block;
an invalid byte is reported with its offset in the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import pairwise
from pathlib import Path

from tok.errors import TokenizerError
from tok.patterns import next_safe_cut, safe_cut_in_bytes

BLOCK_SIZE = 1 << 20  # bytes (files) or characters (strings) per block, before the cut


def iter_inputs(
    inputs: str | os.PathLike | Iterable[str | os.PathLike] | None,
    files: Iterable[str | os.PathLike] = (),
    *,
    cut: bool = True,
    block_size: int = BLOCK_SIZE,
) -> Iterator[str]:
    """Blocks of text from `inputs` and `files`, in order.

    The rule: a plain ``str`` is text; a ``pathlib.Path`` (any ``os.PathLike``) is a file to
    read; an iterable may mix both; every entry of `files` is a path, ``str`` or not.
    With ``cut=False`` every text and file comes whole, as one block.
    """
    for kind, item in _entries(inputs, files):
        if kind == "text":
            yield from iter_text_blocks(item, cut=cut, block_size=block_size)
        else:
            yield from iter_file_blocks(item, cut=cut, block_size=block_size)


def _entries(inputs, files) -> Iterator[tuple[str, object]]:
    if inputs is None:
        pass
    elif isinstance(inputs, str):
        yield "text", inputs
    elif isinstance(inputs, os.PathLike):
        yield "file", inputs
    elif isinstance(inputs, (bytes, bytearray)):
        raise TypeError("training input must be str text or a path, not bytes")
    else:
        for item in inputs:
            if isinstance(item, str):
                yield "text", item
            elif isinstance(item, os.PathLike):
                yield "file", item
            else:
                raise TypeError(
                    f"training inputs must be str (text) or pathlib.Path (file), got {type(item)}"
                )
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    for f in files:
        yield "file", f


def iter_text_blocks(text: str, *, cut: bool = True, block_size: int = BLOCK_SIZE) -> Iterator[str]:
    """`text` in blocks of about `block_size` characters cut at safe newlines (whole if none)."""
    if not cut or len(text) <= block_size:
        yield text
        return
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
    """`data` (read from `path` at byte `offset`) as text; invalid UTF-8 names the byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(
            f"{path}: not UTF-8 text (invalid byte {data[e.start]:#04x} at offset {offset + e.start})"
        ) from None


def iter_file_blocks(
    path: str | os.PathLike, *, cut: bool = True, block_size: int = BLOCK_SIZE
) -> Iterator[str]:
    """The UTF-8 text of the file at `path`, in blocks cut at safe newlines.

    Line endings are kept as they are (no newline translation): encoding a file is encoding
    its exact contents.
    """
    with open_input(path) as f:
        if not cut:
            yield decode_utf8(f.read(), path, 0)
            return
        buf = bytearray()
        offset = 0  # file offset of buf[0]
        scan = block_size // 2  # where to look for the next cut: none lies before it
        while True:
            data = f.read(block_size)
            if not data:
                if buf:
                    yield decode_utf8(bytes(buf), path, offset)
                return
            buf += data
            while len(buf) > block_size:
                at = safe_cut_in_bytes(buf, scan)
                if at < 0:  # read more; resume near the end (a newline may wait for its next byte)
                    scan = max(block_size // 2, len(buf) - 8)
                    break
                yield decode_utf8(bytes(buf[:at]), path, offset)
                offset += at
                del buf[:at]
                scan = block_size // 2


def file_size(path: str | os.PathLike) -> int:
    """The size of the file at `path` in bytes, with a one-line error when it is unreadable."""
    p = Path(path)
    try:
        if p.is_dir():
            raise TokenizerError(f"{path}: is a directory, not a text file")
        return p.stat().st_size
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such file") from None
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read ({e.strerror})") from None


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


def read_segment(path: str | os.PathLike, start: int, end: int) -> str:
    """The text of bytes ``[start, end)`` of the file (a segment from `plan_segments`)."""
    with open_input(path) as f:
        f.seek(start)
        return decode_utf8(f.read(end - start), path, start)
