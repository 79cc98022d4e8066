"""The tokenizer file: versioned JSON, a human-readable vocab listing, atomic writes.

Both the writer (`save`, `dumps`) and the reader (`load`, `loads`) of the format live here.

``tok/bpe.json`` (version 1)::

    {
      "format": "llm_tiny.tok.bpe",
      "version": 1,
      "vocab_size": 4097,
      "pattern_name": "gpt4",
      "pattern": "'(?i:[sdmt]|ll|ve|re)|...",
      "special_tokens": {"<|endoftext|>": 4096},
      "merges": [
        [32, 116],
        ...
      ]
    }

Merges are listed in rank order: merge ``i`` joins the pair of ids into the new id ``256 + i``.
Special tokens take the ids after the last merge. ``pattern`` is the regex itself (a file never
depends on this code's idea of a name); ``pattern_name`` is informative.

Beside it, ``tok/bpe.vocab`` lists every token as readable text (never read back).
"""

from __future__ import annotations

import json
import os
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from tok.corpus import read_utf8
from tok.errors import TokenizerError, is_int

FORMAT = "llm_tiny.tok.bpe"
VERSION = 1
DEFAULT_PATH = "tok/bpe.json"  # relative to the directory of the run

T = TypeVar("T")


class Vocabulary(Protocol):
    """What the writer reads of a `tok.bpe.Tokenizer` (which imports this module)."""

    vocab_size: int
    pattern: str
    pattern_name: str | None
    special_tokens: dict[str, int]
    merges: Sequence[tuple[int, int]]

    def token_bytes(self, token_id: int) -> bytes: ...


def save(tok: Vocabulary, path: str | os.PathLike = DEFAULT_PATH) -> Path:
    """Write `path` (JSON) and the readable listing beside it (``.vocab``), each atomically.
    Returns the path."""
    path = Path(path)
    write_atomic(path, dumps(tok))
    write_atomic(vocab_path(path), vocab_listing(tok))
    return path


def load(path: str | os.PathLike, build: Callable[..., T]) -> T:
    """The tokenizer in the file at `path` (see `loads`); any problem is one error naming it."""
    return loads(read_utf8(path), str(path), build)


def loads(text: str, source: str, build: Callable[..., T]) -> T:
    """The tokenizer in `text`, made by ``build(merges, pattern, special_tokens)``, which checks
    them; any problem, in the file's structure or in `build`, is one error naming `source`."""
    try:
        return build(*parse(text))
    except TokenizerError as e:
        raise TokenizerError(f"{source}: {e}") from None


def dumps(tok: Vocabulary) -> str:
    """The file's text: one merge per line so that files diff well; byte-identical per input."""
    specials = dict(sorted(tok.special_tokens.items(), key=lambda kv: kv[1]))
    lines = [
        "{",
        f'  "format": {json.dumps(FORMAT)},',
        f'  "version": {VERSION},',
        f'  "vocab_size": {tok.vocab_size},',
        f'  "pattern_name": {json.dumps(tok.pattern_name)},',
        f'  "pattern": {json.dumps(tok.pattern, ensure_ascii=False)},',
        f'  "special_tokens": {json.dumps(specials, ensure_ascii=False)},',
    ]
    if tok.merges:
        body = ",\n".join(f"    [{a}, {b}]" for a, b in tok.merges)
        lines.append(f'  "merges": [\n{body}\n  ]')
    else:
        lines.append('  "merges": []')
    lines.append("}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> tuple[list[tuple[int, int]], str, dict[str, int]]:
    """The merges, pattern and special tokens of a tokenizer file's text, its structure checked
    (`vocab_size` included); a `TokenizerError` does not name the file (`loads` adds it)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(
            f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    if not isinstance(data, dict):
        raise TokenizerError(f"not a tokenizer file (a JSON {type(data).__name__}, not an object)")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise TokenizerError(f"unknown format {fmt!r} (expected {FORMAT!r})")
    version = data.get("version")
    if version != VERSION or isinstance(version, bool):
        raise TokenizerError(
            f"unsupported version {version!r} of {FORMAT} (this version of tok reads {VERSION})"
        )
    for key in ("vocab_size", "pattern", "special_tokens", "merges"):
        if key not in data:
            raise TokenizerError(f"missing key {key!r}")
    vocab_size = data["vocab_size"]
    if not is_int(vocab_size):
        raise TokenizerError(f"vocab_size must be an integer, got {vocab_size!r}")
    pattern = data["pattern"]  # checked by `build` (`tok.patterns.resolve_pattern`)
    name = data.get("pattern_name")
    if name is not None and not isinstance(name, str):
        raise TokenizerError(f"pattern_name must be a string or null, got {name!r}")
    specials = data["special_tokens"]
    if not isinstance(specials, dict) or not all(is_int(v) for v in specials.values()):
        raise TokenizerError("special_tokens must map each token's text to an integer id")
    merges = data["merges"]
    if not isinstance(merges, list):
        raise TokenizerError("merges must be a list of [id, id] pairs")
    for i, m in enumerate(merges):
        if not (isinstance(m, list) and len(m) == 2 and is_int(m[0]) and is_int(m[1])):
            raise TokenizerError(f"merge {i} must be a pair of integer ids, got {m!r}")
    merges = [(a, b) for a, b in merges]
    defined = 256 + len(merges) + len(specials)
    if defined > vocab_size:
        raise TokenizerError(
            f"the vocabulary is too large for the declared vocab_size {vocab_size}: 256 bytes + "
            f"{len(merges)} merges + {len(specials)} special tokens = {defined} tokens"
        )
    if defined < vocab_size:
        raise TokenizerError(
            f"declares vocab_size {vocab_size} but defines only {defined} tokens (256 bytes + "
            f"{len(merges)} merges + {len(specials)} special tokens)"
        )
    return merges, pattern, specials


def default_mode(directory: bool = False) -> int:
    """The permissions a plain `open` or `mkdir` would give under this process's umask
    (0o644 and 0o755 for the usual 022). Temporary files and folders are made owner-only
    (0o600, 0o700); what is renamed into place from them is given these instead, so that what a
    user shares (a tokenizer, an export) is readable by whoever may read their other files."""
    # NOTE: the umask can only be read by setting it; set it straight back.
    umask = os.umask(0o022)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def make_shareable(path: str | os.PathLike) -> None:
    """Give `path`, and everything under it if it is a folder, `default_mode`'s permissions."""
    path = Path(path)
    if path.is_dir():
        for sub in path.rglob("*"):
            os.chmod(sub, default_mode(sub.is_dir()))
    os.chmod(path, default_mode(path.is_dir()))


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename, so that
    a reader never sees half a file and a crash never leaves one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise TokenizerError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())  # mkstemp's file is owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def vocab_path(path: str | os.PathLike) -> Path:
    """The readable vocab listing beside a tokenizer file: ``bpe.json`` -> ``bpe.vocab``."""
    return Path(path).with_suffix(".vocab")


def render_token(data: bytes) -> str:
    """A token's bytes as readable text in quotes: valid UTF-8 as itself, control characters
    and whitespace other than the space escaped, bytes that are not UTF-8 as ``\\xNN``.

    >>> render_token(b" the")
    "' the'"
    >>> render_token(b"\\n\\xe4\\xb8")
    "'\\\\n\\\\xe4\\\\xb8'"
    """
    text = data.decode("utf-8", errors="surrogateescape")
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not part of valid UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in "\\'":
            out.append("\\" + ch)
        elif ch == " " or (ch.isprintable() and not unicodedata.category(ch).startswith("Z")):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "'" + "".join(out) + "'"


def vocab_listing(tok: Vocabulary) -> str:
    """The ``.vocab`` file: one token per line, ``id<TAB>token<TAB>how it was made``."""
    shown = [render_token(tok.token_bytes(i)) for i in range(256 + len(tok.merges))]
    lines = [
        "# llm_tiny BPE vocabulary (for reading only; the .json file is the tokenizer)",
        "# id\ttoken\tmade from",
    ]
    lines += [f"{i}\t{shown[i]}\tbyte" for i in range(256)]
    for i, (a, b) in enumerate(tok.merges, start=256):
        lines.append(f"{i}\t{shown[i]}\t{shown[a]} + {shown[b]}  ({a} + {b})")
    for name, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1]):
        lines.append(f"{i}\t{json.dumps(name, ensure_ascii=False)}\tspecial token")
    return "\n".join(lines) + "\n"
