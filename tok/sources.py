"""Reading corpora: input paths (files, folders, globs) -> `Document`s, streamed.

`expand_inputs` turns input entries into a list of files; `iter_documents` reads them as
documents, each with the place it came from (`a.txt`, `a.jsonl:3`, `b.parquet:row 0`). Errors
name the caller's options as the caller spells them (`OptionNames`): `python -m tok.bpe train`'s
flags by default, a run config's keys when `llm_tiny` passes its own.

**Which files.** Each entry is a path or, when no such path exists, a glob pattern (``**``
matches any depth). A file is read whatever its name (as plain text unless its extension says
JSON Lines or Parquet). A folder is walked recursively, keeping
only files whose extension is known (`TEXT_EXTENSIONS`, `JSONL_EXTENSIONS`,
`PARQUET_EXTENSIONS`, each optionally followed by `.gz` or `.zst`) and skipping hidden names
(`.git/`, `.cache`); ``.json`` is not JSON Lines and is skipped. A glob match is taken as if it
had been written out (files read, folders walked); glob itself skips hidden names.

**Order.** Entries keep the order they are given (it decides which text is validation); the
files of one folder or glob are sorted by path, component by component, so the result never
depends on the order the filesystem lists them in. A file listed twice is read once, first.

**Formats.** Plain text: the whole file is one document (read whole: a document is never cut,
so one huge document costs its size in memory), or, with `doc_separator`, the pieces between
separators, streamed. JSON Lines: one JSON object per line, its `text_field`; blank lines are
not records. Parquet: the column `text_field` (string, or binary holding UTF-8), read one row group at a
time; Parquet compresses inside, so `.parquet.gz` is refused. Text and JSONL may
be compressed with gzip (`.gz`) or zstd (`.zst`), decompressed as a stream.

**Bad records** (a line that is not JSON, a missing, null or non-string text, bytes that are
not UTF-8) are counted in `BadRecords` and either raise a one-line `TokenizerError` naming the first
(``on_bad_record="error"``) or are skipped (``"skip"``). Empty documents (empty or whitespace
only) carry no tokens: they are counted apart and skipped. Rows count from 0 (as in pyarrow and
pandas), lines from 1 (as in editors).
"""

from __future__ import annotations

import glob
import gzip
import importlib
import io
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tok.errors import TokenizerError, first_line

# fmt: off
TEXT_EXTENSIONS = frozenset({
    ".txt", ".text", ".md", ".markdown", ".rst", ".tex",  # prose
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".cs", ".java", ".kt", ".scala",
    ".go", ".rs", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".rb", ".php", ".swift", ".lua", ".jl",
    ".hs", ".ml", ".sh", ".sql", ".html", ".css", ".yaml", ".yml", ".toml",  # source code
})
# fmt: on
JSONL_EXTENSIONS = frozenset({".jsonl", ".ndjson"})
PARQUET_EXTENSIONS = frozenset({".parquet"})
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
ON_BAD_RECORD = ("error", "skip")
_CHUNK = 1 << 20  # bytes read at a time when splitting a text file by its separator
_BATCH = 1024  # Parquet rows turned into Python strings at a time


@dataclass(frozen=True)
class OptionNames:
    """How the caller spells the options in error messages (``skip``: how to ask for skipping
    bad records). The defaults are the flags of ``python -m tok.bpe train``; a caller with
    other names (a config file's keys) passes its own."""

    input: str = "--input"
    text_field: str = "--text-field"
    on_bad_record: str = "--on-bad-record"
    doc_separator: str = "--doc-separator"
    skip: str = "--on-bad-record skip"


TOKENIZER_CLI = OptionNames()


@dataclass(frozen=True)
class Document:
    """One document's text and where it came from (`a.txt`, `a.jsonl:3`, `a.parquet:row 7`);
    with `iter_documents(check=...)`, `text` holds the checked record (a conversation)."""

    text: Any
    source: str


@dataclass
class BadRecords:
    """What `iter_documents` did not yield: bad records (the first few kept as `examples`,
    ``"a.jsonl:3: not JSON (...)"``) and empty documents."""

    count: int = 0
    empty: int = 0
    examples: list[str] = field(default_factory=list)
    keep: int = 5

    def add(self, source: str, why: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(f"{source}: {why}")

    def summary(self) -> str:
        """One line for the log, e.g. ``2 bad records skipped (first: a.jsonl:3: not JSON),
        1 empty document``."""
        parts = []
        if self.count:
            s = "" if self.count == 1 else "s"
            parts.append(f"{self.count} bad record{s} skipped (first: {self.examples[0]})")
        if self.empty:
            parts.append(f"{self.empty} empty document{'' if self.empty == 1 else 's'}")
        return ", ".join(parts) or "no bad records"


# ----------------------------------------------------------------------------- which files


def file_format(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) from the name: ``a.jsonl.gz -> ("jsonl", "gzip")``,
    ``a.bin -> (None, None)``."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    ext = (suffixes[:-1] if compression else suffixes)[-1:] or [""]
    for name, exts in (("text", TEXT_EXTENSIONS), ("jsonl", JSONL_EXTENSIONS)):
        if ext[0] in exts:
            return name, compression
    return ("parquet" if ext[0] in PARQUET_EXTENSIONS else None), compression


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """The non-hidden files under `folder`, sorted: those of known formats, and the others
    (unknown extensions, such as ``README`` or ``img.png``), which are skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # prune: never enter .git/
        found += [Path(root, f) for f in files if not f.startswith(".")]
    known = [p for p in found if file_format(p)[0]]
    return sorted(known), sorted(set(found) - set(known))


def skipped_notice(entry: str, skipped: list[Path], shown: int = 3) -> str:
    """One line about the files of a folder that were left out for their extension, and how to
    read them anyway (a file named directly, or matched by a glob, is read as text).

    skipped_notice("docs", [Path("docs/README"), Path("docs/a.png")])
    -> "note: docs: skipped 2 files with unknown extensions (docs/README, docs/a.png); ..."
    """
    names = ", ".join(map(str, skipped[:shown])) + (", ..." if len(skipped) > shown else "")
    files = "file" if len(skipped) == 1 else "files"
    return (
        f"note: {entry}: skipped {len(skipped)} {files} with unknown extensions ({names}); "
        f"to read them as text, name them or match them with a glob, e.g. '{entry}/**/README*'"
    )


def expand_inputs(
    patterns: Sequence[str],
    names: OptionNames = TOKENIZER_CLI,
    note: Callable[[str], None] | None = None,
) -> list[Path]:
    """The files that the input entries name, in order (see the module doc). A folder's files
    of unknown extensions are left out, with one `skipped_notice` per folder sent to `note`.

    With ``docs/b.md``, ``docs/a.txt``, ``docs/.hidden.txt`` and ``docs/img.png``:

    >>> expand_inputs(["docs", "docs/a.txt"])
    [PosixPath('docs/a.txt'), PosixPath('docs/b.md')]
    """
    if not patterns:
        raise TokenizerError(f"{names.input}: no input given")
    files: list[Path] = []
    seen: set[Path] = set()
    for entry in map(str, patterns):
        if Path(entry).exists():  # an existing path wins, even with glob characters in it
            matches = [Path(entry)]
        elif any(c in entry for c in "*?["):
            matches = sorted(map(Path, glob.glob(entry, recursive=True)))
            if not matches:
                raise TokenizerError(f"{names.input}: no files match {entry}")
        else:
            raise TokenizerError(f"{names.input}: {entry} not found")
        found, skipped = [], []
        for p in matches:
            known, unknown = _walk(p) if p.is_dir() else ([p], [])
            found += known
            skipped += unknown
        if skipped and note is not None:
            note(skipped_notice(entry.rstrip("/") or entry, skipped))
        if not found:
            raise TokenizerError(
                f"{names.input}: no text, JSONL or Parquet files in {entry} "
                "(hidden names and unknown extensions are skipped)"
            )
        for p in sorted(found):
            if (key := p.resolve()) not in seen:
                seen.add(key)
                files.append(p)
    return files


# ----------------------------------------------------------------------------- reading


def _require(module: str, package: str, what: str):
    """Import `module` now that a `what` file is read, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TokenizerError(
            f"reading {what} files needs {package}: pip install {package} "
            "(or pip install 'llm_tiny[data]')"
        ) from None


@contextmanager
def _open(path: Path, compression: str | None) -> Iterator[BinaryIO]:
    """`path` opened for binary reading, decompressed as a stream; read errors (an unreadable
    file, a corrupt or truncated stream) become one-line TokenizerErrors."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
    if compression == "zstd":
        zstd = _require("zstandard", "zstandard", ".zst")
        errors += (zstd.ZstdError,)
    try:
        with path.open("rb") as raw:
            if compression == "gzip":
                f = gzip.GzipFile(fileobj=raw)
            elif compression == "zstd":  # across frames: concatenated .zst files are one stream
                reader = zstd.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
                f = io.BufferedReader(reader)  # adds readline, for JSON Lines
            else:
                f = raw
            with f:
                yield f
    except errors as e:
        if getattr(e, "strerror", None):  # the OS refused (permission, I/O), not corruption
            raise TokenizerError(f"{path}: cannot read ({e.strerror})") from None
        what = f"{compression} data" if compression else "file"
        raise TokenizerError(f"{path}: corrupt or truncated {what} ({first_line(e)})") from None


def _split_stream(chunks: Iterable[bytes], sep: bytes) -> Iterator[tuple[int, int, bytes]]:
    r"""``(line, offset, piece)`` for the pieces of a byte stream between separators, with the
    line and byte offset where each piece starts.

    >>> list(_split_stream([b"a\n--\nb", b"c--d"], b"--"))
    [(1, 0, b'a\n'), (2, 4, b'\nbc'), (3, 9, b'd')]
    """
    buf, line, offset = bytearray(), 1, 0
    for chunk in chunks:
        pos, start = 0, max(0, len(buf) - len(sep) + 1)  # a separator may straddle two chunks
        buf += chunk
        while (at := buf.find(sep, start)) >= 0:
            yield line, offset, bytes(buf[pos:at])
            line += buf.count(b"\n", pos, at + len(sep))
            offset += at + len(sep) - pos
            pos = start = at + len(sep)
        del buf[:pos]  # once per chunk: deleting per piece would be quadratic
    yield line, offset, bytes(buf)


def _text_records(path: Path, compression: str | None, sep: str | None):
    """``(source, text or None, why)`` for a plain-text file: whole, or split at `sep`."""
    with _open(path, compression) as f:
        if sep is None:
            pieces: Iterable[tuple[int, int, bytes]] = [(0, 0, f.read())]
        else:
            pieces = _split_stream(iter(lambda: f.read(_CHUNK), b""), sep.encode("utf-8"))
        for line, offset, data in pieces:
            source = f"{path}:{line}" if line else str(path)
            try:
                yield source, data.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield source, None, f"not UTF-8 text (invalid byte at offset {offset + e.start})"


def _jsonl_records(path: Path, compression: str | None, text_field: str, check: Check):
    """``(source, text or None, why)`` for each non-blank line of a JSON Lines file."""
    with _open(path, compression) as f:
        for lineno, line in enumerate(f, 1):
            if line.isspace():
                continue
            source = f"{path}:{lineno}"
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield source, None, f"not UTF-8 (invalid byte at column {e.start + 1})"
                continue
            except ValueError as e:
                yield source, None, f"not JSON ({first_line(e, 80)})"
                continue
            if not isinstance(record, dict):
                yield source, None, f"not a JSON object but {type(record).__name__}"
                continue
            text, why = check(record.get(text_field), text_field, record)
            # NOTE: JSON can escape lone surrogates ("\ud800"), which no tokenizer can encode.
            if isinstance(text, str) and text and b"\\u" in line:
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    text, why = None, f"{text_field!r} holds a lone surrogate (not UTF-8)"
            yield source, text, why


def _check_text(
    value, text_field: str, record: dict | None = None
) -> tuple[str | None, str | None]:
    """``(text, None)`` for a usable value, else ``(None, why)``."""
    if isinstance(value, bytes):  # Parquet binary columns often hold UTF-8 text
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"not UTF-8 (invalid byte at offset {e.start})"
    if value is None:
        keys = f" (keys: {', '.join(list(record)[:8])})" if record is not None else ""
        return None, f"no {text_field!r} value{keys}"
    if not isinstance(value, str):
        return None, f"{text_field!r} is {type(value).__name__}, not a string"
    return value, None


# A record's value -> (what to yield, None) or (None, why it is bad): `_check_text` for text.
Check = Callable[[object, str, "dict | None"], tuple[object, "str | None"]]


def _parquet_records(path: Path, text_field: str, names: OptionNames, check: Check):
    """``(source, text or None, why)`` for each row of a Parquet file, one row group at a time
    (never the whole file: a row group is what Parquet writers size to fit in memory)."""
    pa = _require("pyarrow", "pyarrow", ".parquet")
    pq = _require("pyarrow.parquet", "pyarrow", ".parquet")
    errors = (pa.ArrowException, OSError)
    try:
        pf = pq.ParquetFile(path)
        columns = pf.schema_arrow.names
    except errors as e:
        raise TokenizerError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
    if text_field not in columns:
        raise TokenizerError(
            f"{path}: no column {text_field!r} (columns: {', '.join(columns)}); "
            f"set {names.text_field}"
        )
    row = 0
    for group in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(group, columns=[text_field])
        except errors as e:
            raise TokenizerError(
                f"{path}: corrupt Parquet row group {group} ({first_line(e)})"
            ) from None
        for batch in table.to_batches(max_chunksize=_BATCH):
            for value in batch.column(0).to_pylist():
                yield (f"{path}:row {row}", *check(value, text_field, None))
                row += 1


def iter_documents(
    paths: Iterable[str | os.PathLike],
    *,
    text_field: str = "text",
    doc_separator: str | None = None,
    on_bad_record: str = "error",
    stats: BadRecords | None = None,
    names: OptionNames = TOKENIZER_CLI,
    check: Check | None = None,
) -> Iterator[Document]:
    """The documents of the files in `paths`, in order, streamed (see the module doc).

    `check` reads records that are not text (conversations): each JSONL / Parquet value goes
    through it instead of the text check, and `Document.text` holds what it returned; plain
    text files are then refused.

    Bad records and empty documents are counted in `stats` (pass one to read the counts).
    No document at all in the input is a TokenizerError.

    >>> [d.source for d in iter_documents(["a.txt", "b.jsonl"])]  # b.jsonl: two records
    ['a.txt', 'b.jsonl:1', 'b.jsonl:2']
    """
    if on_bad_record not in ON_BAD_RECORD:
        raise TokenizerError(
            f"{names.on_bad_record} must be one of {ON_BAD_RECORD}, not {on_bad_record!r}"
        )
    if doc_separator == "":
        raise TokenizerError(
            f"{names.doc_separator} must not be empty (leave it unset for one per file)"
        )
    stats = BadRecords() if stats is None else stats
    paths = [Path(p) for p in paths]
    yielded = 0
    for path in paths:
        kind, compression = file_format(path)
        if kind == "parquet" and compression:
            raise TokenizerError(
                f"{path}: compressed Parquet is not supported (it compresses inside)"
            )
        if check is not None and kind not in ("parquet", "jsonl"):
            raise TokenizerError(
                f"{path}: these records come from JSON Lines (.jsonl) or Parquet files only"
            )
        if kind == "parquet":
            records = _parquet_records(path, text_field, names, check or _check_text)
        elif kind == "jsonl":
            records = _jsonl_records(path, compression, text_field, check or _check_text)
        else:  # text, and files named explicitly whatever their extension
            records = _text_records(path, compression, doc_separator)
        for source, text, why in records:
            if why is not None:
                stats.add(source, why)
                if on_bad_record == "error":
                    raise TokenizerError(f"{source}: {why}; set {names.skip} to skip such records")
            elif not text or (isinstance(text, str) and text.isspace()):
                stats.empty += 1
            else:
                yielded += 1
                yield Document(text, source)
    if not yielded:
        more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
        listed = ", ".join(map(str, paths[:3])) + more
        skipped = f" ({stats.summary()})" if stats.count or stats.empty else ""
        raise TokenizerError(f"{names.input}: no documents in {listed}{skipped}")
