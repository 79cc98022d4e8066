"""The tokenizer file: versioned JSON, a human-readable vocab listing, atomic writes.

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
from pathlib import Path
from typing import Any

from tok.errors import TokenizerError

FORMAT = "llm_tiny.tok.bpe"
VERSION = 1


def dumps(
    *,
    vocab_size: int,
    pattern: str,
    pattern_name: str | None,
    special_tokens: dict[str, int],
    merges: list[tuple[int, int]],
) -> str:
    """The file's text: one merge per line so that files diff well; byte-identical per input."""
    specials = dict(sorted(special_tokens.items(), key=lambda kv: kv[1]))
    lines = [
        "{",
        f'  "format": {json.dumps(FORMAT)},',
        f'  "version": {VERSION},',
        f'  "vocab_size": {vocab_size},',
        f'  "pattern_name": {json.dumps(pattern_name)},',
        f'  "pattern": {json.dumps(pattern, ensure_ascii=False)},',
        f'  "special_tokens": {json.dumps(specials, ensure_ascii=False)},',
    ]
    if merges:
        body = ",\n".join(f"    [{a}, {b}]" for a, b in merges)
        lines.append(f'  "merges": [\n{body}\n  ]')
    else:
        lines.append('  "merges": []')
    lines.append("}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, Any]:
    """Parse and check the structure of a tokenizer file's text.

    Returns ``{"vocab_size", "pattern", "pattern_name", "special_tokens", "merges"}``; raises
    `TokenizerError` with a message (without the file name: the caller adds it).
    """
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
    if not _is_int(vocab_size):
        raise TokenizerError(f"vocab_size must be an integer, got {vocab_size!r}")
    pattern = data["pattern"]
    if not isinstance(pattern, str):
        raise TokenizerError(f"pattern must be a string, got {pattern!r}")
    name = data.get("pattern_name")
    if name is not None and not isinstance(name, str):
        raise TokenizerError(f"pattern_name must be a string or null, got {name!r}")
    specials = data["special_tokens"]
    if not isinstance(specials, dict) or not all(_is_int(v) for v in specials.values()):
        raise TokenizerError("special_tokens must map each token's text to an integer id")
    merges = data["merges"]
    if not isinstance(merges, list):
        raise TokenizerError("merges must be a list of [id, id] pairs")
    for i, m in enumerate(merges):
        if not (isinstance(m, list) and len(m) == 2 and _is_int(m[0]) and _is_int(m[1])):
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
    return {
        "vocab_size": vocab_size,
        "pattern": pattern,
        "pattern_name": name,
        "special_tokens": specials,
        "merges": merges,
    }


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of a tokenizer file, with one-line errors naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TokenizerError(f"{path}: is a directory, not a tokenizer file") from None
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: not a tokenizer file (not UTF-8 text)") from None
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read ({e.strerror})") from None


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


def vocab_listing(
    token_bytes: list[bytes], merges: list[tuple[int, int]], special_tokens: dict[str, int]
) -> str:
    """The ``.vocab`` file: one token per line, ``id<TAB>token<TAB>how it was made``."""
    lines = [
        "# llm_tiny BPE vocabulary (for reading only; the .json file is the tokenizer)",
        "# id\ttoken\tmade from",
    ]
    for i in range(256):
        lines.append(f"{i}\t{render_token(token_bytes[i])}\tbyte")
    for r, (a, b) in enumerate(merges):
        i = 256 + r
        made = f"{render_token(token_bytes[a])} + {render_token(token_bytes[b])}  ({a} + {b})"
        lines.append(f"{i}\t{render_token(token_bytes[i])}\t{made}")
    for name, i in sorted(special_tokens.items(), key=lambda kv: kv[1]):
        lines.append(f"{i}\t{json.dumps(name, ensure_ascii=False)}\tspecial token")
    return "\n".join(lines) + "\n"
