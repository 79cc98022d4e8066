"""Token shards: numbered files of token ids with a header, written in bounded memory, read
back as one stream through memory maps.

A shard is a header of `HEADER_INTS` little-endian int64s (magic number, format version, bytes
per token, token count; the rest zero, room to grow), then the token ids as uint16 or uint32.
llm.c's `.bin` shards carry a header the same way; ours also says how wide a token is, so one
reader serves every vocabulary. A split's shards are `{split}_000000.bin`, `{split}_000001.bin`,
... and meta.json lists them with their token counts and sha256.

`ShardWriter` appends ids and starts a new shard once the current one holds `shard_tokens`
(between two appends: an appended piece is never cut). The shard being written is
`NAME.bin.tmp`; it gets its real header, is fsync'ed and renamed when it is complete, so a
`.bin` file is always whole. `state()` / `ShardWriter(..., resume=state)` let an interrupted
preparation continue: the open shard is cut back to the length recorded with the last
progress, and everything after that is written again.

`TokenStream` reads a split's shards as one sequence: `stream[a:b]` and `stream.windows(starts,
n)` copy out only what is asked for, across shard boundaries.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_tiny.errors import UserError

MAGIC = 0x6C6C6D5F74696E79  # "llm_tiny" in ASCII
VERSION = 1
HEADER_INTS = 128  # 1 KiB
HEADER_BYTES = HEADER_INTS * 8
SPLITS = ("train", "val")  # the shard sets of a data directory: train_000000.bin, val_...


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def header(dtype: np.dtype, n_tokens: int) -> bytes:
    h = np.zeros(HEADER_INTS, dtype="<i8")
    h[:4] = (MAGIC, VERSION, np.dtype(dtype).itemsize, n_tokens)
    return h.tobytes()


def read_header(path: Path) -> tuple[np.dtype, int]:
    """(token dtype, token count) of a shard, checked against the file's size."""
    try:
        with path.open("rb") as f:
            h = np.frombuffer(f.read(HEADER_BYTES), dtype="<i8")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if len(h) < 4 or h[0] != MAGIC:
        raise UserError(f"{path}: not an llm_tiny token shard; prepare the data again")
    if h[1] != VERSION:
        raise UserError(f"{path}: shard format version {h[1]} is not {VERSION}; prepare again")
    dtype = np.dtype({2: np.uint16, 4: np.uint32}[int(h[2])])
    n = int(h[3])
    if path.stat().st_size != HEADER_BYTES + n * dtype.itemsize:
        raise UserError(f"{path}: {n} tokens promised, the file holds otherwise; prepare again")
    return dtype, n


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _Open:
    index: int
    tokens: int = 0


class ShardWriter:
    """Write one split's shards into `directory` (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        split: str,
        dtype: np.dtype,
        shard_tokens: int,
        resume: dict[str, Any] | None = None,
    ) -> None:
        self.directory, self.split, self.dtype = Path(directory), split, np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.done: list[dict[str, Any]] = []
        self.current = _Open(0)
        if resume is not None:
            self.done = list(resume["done"])
            self.current = _Open(int(resume["open"]), int(resume["tokens"]))
        self._file = self._open_current(truncate_to=self.current.tokens if resume else None)

    def _tmp(self, index: int) -> Path:
        return self.directory / (shard_name(self.split, index) + ".tmp")

    def _open_current(self, truncate_to: int | None):
        path = self._tmp(self.current.index)
        if truncate_to is None:
            f = path.open("wb")
            f.write(header(self.dtype, 0))
            return f
        # What was written after the recorded progress goes: later shards, and the open one's
        # tail (it may even have been completed and renamed since).
        index = self.current.index
        for later in self.directory.glob(f"{self.split}_*.bin*"):
            if int(later.name[len(self.split) + 1 :].split(".")[0]) > index:
                later.unlink()
        final = self.directory / shard_name(self.split, index)
        if not path.is_file() and final.is_file():
            os.replace(final, path)
        size = HEADER_BYTES + truncate_to * self.dtype.itemsize
        if not path.is_file() or path.stat().st_size < size:
            raise UserError(f"{path}: shorter than its recorded progress; prepare from scratch")
        f = path.open("r+b")
        f.truncate(size)
        f.seek(size)
        return f

    def append(self, ids: np.ndarray) -> None:
        """Write `ids`; first close the current shard if it is full."""
        if self.current.tokens >= self.shard_tokens:
            self._close_current()
            self.current = _Open(self.current.index + 1)
            self._file = self._open_current(None)
        np.asarray(ids, dtype=self.dtype).tofile(self._file)
        self.current.tokens += len(ids)

    def _close_current(self) -> None:
        f, n = self._file, self.current.tokens
        f.seek(0)
        f.write(header(self.dtype, n))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        final = self.directory / shard_name(self.split, self.current.index)
        os.replace(self._tmp(self.current.index), final)
        self.done.append({"file": final.name, "tokens": n, "sha256": file_sha256(final)})

    def state(self) -> dict[str, Any]:
        """What `resume` needs to continue from here (the open shard flushed to disk first)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return {"done": list(self.done), "open": self.current.index, "tokens": self.current.tokens}

    def close(self) -> list[dict[str, Any]]:
        """Finish the last shard; the list of shards as meta.json records them."""
        self._close_current()
        return self.done

    def abort(self) -> None:
        """Close the open file, leaving the `.tmp` shard for a resumed preparation."""
        self._file.close()


class TokenStream:
    """A split's shards read as one token sequence through memory maps."""

    def __init__(self, paths: list[Path]) -> None:
        if not paths:
            raise UserError("a split with no shards; prepare the data again")
        headers = [read_header(p) for p in paths]
        self.dtype = headers[0][0]
        self.paths = paths
        self.counts = np.array([n for _, n in headers], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])  # global offset of each

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _map(self, i: int) -> np.ndarray:
        # A fresh read-only memmap per call: cheap, and it lets the OS drop pages between calls.
        return np.memmap(
            self.paths[i],
            dtype=self.dtype,
            mode="r",
            offset=HEADER_BYTES,
            shape=(int(self.counts[i]),),
        )

    def __getitem__(self, s: slice) -> np.ndarray:
        """Tokens [a, b) as an array (a copy), across shard boundaries."""
        a, b, _ = s.indices(len(self))
        first = int(np.searchsorted(self.starts, a, side="right")) - 1
        parts, pos = [], a
        for i in range(max(first, 0), len(self.paths)):
            if pos >= b:
                break
            lo, hi = (
                pos - int(self.starts[i]),
                min(b, int(self.starts[i + 1])) - int(self.starts[i]),
            )
            if hi > lo:
                parts.append(np.array(self._map(i)[lo:hi]))
                pos += hi - lo
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def windows(self, starts: np.ndarray, n: int) -> np.ndarray:
        """(len(starts), n) int64 array: the `n` tokens from each start."""
        out = np.empty((len(starts), n), dtype=np.int64)
        if len(self.paths) == 1:  # the common case, one gather
            return self._map(0)[np.asarray(starts)[:, None] + np.arange(n)].astype(np.int64)
        for row, a in enumerate(np.asarray(starts).tolist()):
            out[row] = self[a : a + n]
        return out
