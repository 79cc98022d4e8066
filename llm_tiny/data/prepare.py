"""Preparing data: input text files -> tokenizer -> `train.bin`, `val.bin` and `meta.json`.

`prepare_data` concatenates the input files in order and tokenizes them with the config's
tokenizer (trained first with `tok` if its file does not exist yet, on the whole input). Token
ids go to `train.bin` and `val.bin` as `tok.corpus.token_dtype` of the vocabulary (uint16 when
it fits, else uint32), and `meta.json` records the input hash, the tokenizer fingerprint and
the byte and token counts. A second call with the same input and tokenizer does nothing; a
changed input or tokenizer is noticed by hash and prepared again. `load_prepared` opens such a
directory without its input text (for evaluation).

**Text** (data.kind `text`): the last `val_fraction` of the bytes is the validation split, cut
just after the first cut-safe newline at or after that point. Inputs stream through in blocks of
about `block_bytes` (`tok.corpus.iter_split_blocks`), so memory stays bounded; blocks end where
the GPT-2 and GPT-4 split patterns always end a pre-token, so the ids are the same as tokenizing
the whole text at once (a test checks this).

**Examples** (data.kind `examples`): each non-empty line is one example such as `Max(3,7,5)=7`.
The prompt (up to and including the first `answer_sep`) and the answer (the rest of the line
plus its newline) are tokenized separately, so the boundary is always a token boundary and a
sampler can feed exactly the prompt tokens; `{split}.idx.npy` holds each example's start,
prompt length and total length in tokens. The last `val_fraction` of the lines are
validation. Examples are read into memory (they are small).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from llm_tiny.config import DataConfig
from llm_tiny.data.sources import BadRecords, Document, expand_inputs, file_format, iter_documents
from llm_tiny.errors import UserError
from tok.corpus import decode_utf8, iter_split_blocks, token_dtype

META_FORMAT = "llm_tiny.data"
META_VERSION = 1
BLOCK_BYTES = 4 << 20  # bytes of text tokenized at a time
_HASH_CHUNK = 1 << 20
SPLITS = ("train", "val")


# ----------------------------------------------------------------------------- input files


def check_inputs(paths: tuple[str, ...] | list[str]) -> list[Path]:
    """The input files (`sources.expand_inputs`); a missing or (all) empty input is a UserError."""
    files = expand_inputs(paths)
    if sum(p.stat().st_size for p in files) == 0:
        names = ", ".join(map(str, files))
        raise UserError(f"data.input: {names} {'is' if len(files) == 1 else 'are'} empty")
    return files


def as_documents(cfg: DataConfig, files: list[Path]) -> bool:
    """Whether the input is read as documents (each ending with `cfg.eot`, validation by
    document) rather than as one text: anything but plain text files named one by one."""
    named = all(Path(p).is_file() for p in cfg.input) and len(files) == len(cfg.input)
    plain = all(file_format(p)[0] in ("text", None) and not file_format(p)[1] for p in files)
    return cfg.kind == "text" and not (named and plain and cfg.doc_separator is None)


def iter_texts(cfg: DataConfig, files: list[Path], stats: BadRecords) -> Iterator[Document]:
    """The documents of the input (`sources.iter_documents` with the config's options)."""
    return iter_documents(
        files,
        text_field=cfg.text_field,
        doc_separator=cfg.doc_separator,
        on_bad_record=cfg.on_bad_record,
        stats=stats,
    )


def hash_inputs(files: list[Path]) -> str:
    """sha256 over the inputs' bytes in order (with each file's length, so that moving text
    from one file to the next changes the hash)."""
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.stat().st_size}\n".encode())
        with p.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- tokenizer


def load_or_train_tokenizer(
    cfg: DataConfig, files: list[Path], progress: bool, log: Callable, documents: bool = False
):
    """The tokenizer at `cfg.tokenizer`, trained on `files` first if the file does not exist
    (on their documents, with `cfg.eot` as a special token, when `documents`)."""
    from tok.bpe import Tokenizer

    path = Path(cfg.tokenizer)
    eot = cfg.eot if documents else None
    if path.exists():
        tok = Tokenizer.load(path)
        if tok.vocab_size != cfg.vocab_size:
            raise UserError(
                f"data.vocab_size is {cfg.vocab_size} but the existing tokenizer {path} has "
                f"{tok.vocab_size} tokens; set data.vocab_size={tok.vocab_size} or delete "
                f"{path} to train a new one"
            )
        if eot and eot not in tok.special_tokens:
            raise UserError(
                f"{path} has no special token {eot} to end documents with; set data.eot: null "
                "or delete the file to train a tokenizer that has it"
            )
        return tok
    names = ", ".join(map(str, files[:3])) + (
        f" and {len(files) - 3} more" if len(files) > 3 else ""
    )
    log(f"training a {cfg.vocab_size}-token BPE tokenizer on {names}")
    specials = tuple(cfg.special_tokens) + ((eot,) if eot and eot not in cfg.special_tokens else ())
    texts = (d.text for d in iter_texts(cfg, files, BadRecords())) if documents else None
    tok = Tokenizer.train(
        texts,
        cfg.vocab_size,
        files=() if documents else [str(p) for p in files],
        pattern=cfg.pattern,
        special_tokens=specials,
        progress=progress,
    )
    if tok.vocab_size != cfg.vocab_size:
        # Training stops early when no pair is left to merge. Saving the smaller tokenizer
        # would make the next run fail the size check above, so say it now.
        raise UserError(
            f"data.input only supports a {tok.vocab_size}-token vocabulary (no pair left to "
            f"merge); set data.vocab_size={tok.vocab_size} or use more text"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.tokenizer: cannot create {path.parent} ({e.strerror})") from None
    tok.save(path)
    log(f"saved tokenizer to {path}")
    return tok


def _encode(tok: Any, text: str) -> list[int]:
    # A registered special token written in the corpus (e.g. <|endoftext|> between documents)
    # becomes its id; without special tokens this is plain encoding.
    return tok.encode(text, allowed_special="all")


# ----------------------------------------------------------------------------- prepare


@dataclass(frozen=True)
class PreparedData:
    """A prepared data directory: where it is, its meta.json and the tokenizer."""

    data_dir: Path
    meta: dict[str, Any]
    tokenizer: Any

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def split(self, name: str) -> dict[str, Any]:
        return self.meta["splits"][name]


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _files_match(data_dir: Path, meta: dict[str, Any]) -> bool:
    """The .bin files exist with the sizes meta.json promises (no half-written leftovers)."""
    itemsize = np.dtype(meta.get("dtype", "uint16")).itemsize
    for name, split in meta.get("splits", {}).items():
        path = data_dir / f"{name}.bin"
        if not path.is_file() or path.stat().st_size != split["tokens"] * itemsize:
            return False
        if meta["kind"] == "examples" and not (data_dir / f"{name}.idx.npy").is_file():
            return False
    return bool(meta.get("splits"))


def load_prepared(data_dir: str | Path, tokenizer: Any) -> PreparedData:
    """Open a data directory prepared earlier, without its input text (for evaluation).

    The directory must hold a complete preparation made with this very tokenizer.
    """
    data_dir = Path(data_dir)
    meta = _read_meta(data_dir / "meta.json")
    if meta is None or meta.get("format") != META_FORMAT:
        raise UserError(f"{data_dir}: no prepared data here (meta.json missing or unreadable)")
    if meta.get("tokenizer_fingerprint") != tokenizer.fingerprint:
        raise UserError(
            f"{data_dir}: prepared with a different tokenizer than the checkpoint's; "
            "re-run training to prepare it again, or pass --input FILE"
        )
    if not _files_match(data_dir, meta):
        raise UserError(f"{data_dir}: the .bin files do not match meta.json; prepare again")
    return PreparedData(data_dir, meta, tokenizer)


def prepare_data(
    cfg: DataConfig,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
    block_bytes: int = BLOCK_BYTES,
) -> PreparedData:
    """Tokenize `cfg.input` into `cfg.data_dir` (or reuse what is there); see the module doc.

    Text that is not UTF-8 raises `tok.errors.TokenizerError` naming the file and offset.
    """
    if cfg.tokenizer is None or cfg.data_dir is None:
        raise ValueError("the data paths are not resolved: pass RunConfig.run_data")  # a bug
    files = check_inputs(cfg.input)
    documents = as_documents(cfg, files)
    tok = load_or_train_tokenizer(cfg, files, progress, log, documents)
    data_dir = Path(cfg.data_dir)
    key = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "kind": cfg.kind,
        "input_sha256": hash_inputs(files),
        "tokenizer_fingerprint": tok.fingerprint,
        "val_fraction": cfg.val_fraction,
    }
    if cfg.kind == "examples":
        key["answer_sep"] = cfg.answer_sep
    if documents:
        key["documents"] = {
            k: getattr(cfg, k) for k in ("text_field", "doc_separator", "on_bad_record", "eot")
        }
    meta_path = data_dir / "meta.json"
    meta = _read_meta(meta_path)
    fresh = meta is not None and all(meta.get(k) == v for k, v in key.items())
    if fresh and _files_match(data_dir, meta):
        return PreparedData(data_dir, meta, tok)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.data_dir: cannot create {data_dir} ({e.strerror})") from None
    if meta is not None:
        log(f"{data_dir}: input or tokenizer changed; preparing the data again")
    dtype = token_dtype(tok.vocab_size)
    # Each split is written to `{split}.bin.tmp`, renamed only once both are complete.
    outs = {s: (data_dir / f"{s}.bin.tmp").open("wb") for s in SPLITS}
    try:
        if documents:
            splits = _prepare_documents(cfg, files, tok, outs, dtype, progress, log)
        elif cfg.kind == "text":
            splits = _prepare_text(files, tok, outs, dtype, cfg.val_fraction, block_bytes, progress)
        else:
            splits = _prepare_examples(files, tok, outs, dtype, cfg)
    except BaseException:
        for f in outs.values():
            f.close()
            os.unlink(f.name)
        raise
    for s, f in outs.items():
        f.close()
        os.replace(f.name, data_dir / f"{s}.bin")
    meta = {
        **key,
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        "tokenizer": str(cfg.tokenizer),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "splits": splits,
    }
    tmp = meta_path.with_name("meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, meta_path)  # written last: a meta.json means the .bin files are complete
    counts = ", ".join(
        f"{n} {s['tokens']:,} tokens / {s['bytes']:,} bytes" for n, s in splits.items()
    )
    log(f"prepared {data_dir}: {counts}")
    return PreparedData(data_dir, meta, tok)


def _prepare_text(
    files: list[Path],
    tok: Any,
    outs: dict[str, BinaryIO],
    dtype: np.dtype,
    val_fraction: float,
    block_bytes: int,
    progress: bool,
) -> dict[str, dict[str, int]]:
    from tqdm import tqdm

    total = sum(p.stat().st_size for p in files)
    split_at = math.floor(total * (1.0 - val_fraction))
    counts = {s: {"bytes": 0, "tokens": 0, "scored_bytes": 0} for s in SPLITS}
    if not tok.cuts_are_safe:
        block_bytes = total + 1  # one block per split: exact, at the cost of memory
    # A line 4x longer than a block with no safe cut in it is cut at a character boundary to
    # keep memory bounded; only there can the ids differ from tokenizing the text whole.
    blocks = iter_split_blocks(files, [split_at], block_size=block_bytes, max_bytes=4 * block_bytes)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress
    ) as bar:
        for part, text, n_bytes in blocks:
            split = SPLITS[part]
            ids = _encode(tok, text)
            np.asarray(ids, dtype=dtype).tofile(outs[split])
            c = counts[split]
            if ids and not c["tokens"]:
                # Evaluation scores every token but the first of a split (it has no context),
                # so bits per byte divide by the bytes of the scored tokens only.
                c["scored_bytes"] -= len(tok.token_bytes(ids[0]))
            c["bytes"] += n_bytes
            c["scored_bytes"] += n_bytes
            c["tokens"] += len(ids)
            bar.update(n_bytes)
    return counts


def is_validation(text: str, val_fraction: float) -> bool:
    """Whether a document belongs to the validation split: a hash of its text, read as a
    number in [0, 1), falls below `val_fraction`. Streaming needs no document count; the same
    text always lands in the same split (duplicates never straddle it); about `val_fraction`
    of the documents are chosen, whatever their order."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def _prepare_documents(
    cfg: DataConfig,
    files: list[Path],
    tok: Any,
    outs: dict[str, BinaryIO],
    dtype: np.dtype,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, dict[str, int]]:
    """Each document's ids, then the end-of-text token, into the split its text hashes to."""
    from tqdm import tqdm

    eot = [tok.special_tokens[cfg.eot]] if cfg.eot else []
    counts = {s: {"bytes": 0, "tokens": 0, "scored_bytes": 0, "documents": 0} for s in SPLITS}
    stats = BadRecords()
    for doc in tqdm(
        iter_texts(cfg, files, stats), unit="doc", desc="tokenizing", disable=not progress
    ):
        split = "val" if is_validation(doc.text, cfg.val_fraction) else "train"
        ids = tok.encode(doc.text) + eot  # a literal "<|endoftext|>" in a text stays text
        np.asarray(ids, dtype=dtype).tofile(outs[split])
        c = counts[split]
        n_bytes = len(doc.text.encode("utf-8"))
        if not c["tokens"]:
            c["scored_bytes"] -= len(tok.token_bytes(ids[0]))  # the first token is not scored
        c["bytes"] += n_bytes
        c["scored_bytes"] += n_bytes
        c["tokens"] += len(ids)
        c["documents"] += 1
    if stats.count or stats.empty:
        log(f"note: {stats.summary()}")
    for split, c in counts.items():
        if not c["documents"]:
            total = sum(x["documents"] for x in counts.values())
            raise UserError(
                f"data.input: none of its {total} documents fell in the {split} split (each "
                f"is validation with probability data.val_fraction = {cfg.val_fraction}); use "
                "more documents or another data.val_fraction"
            )
    return counts


def _prepare_examples(
    files: list[Path], tok: Any, outs: dict[str, BinaryIO], dtype: np.dtype, cfg: DataConfig
) -> dict[str, dict[str, int]]:
    lines: list[tuple[Path, int, str]] = []
    for p in files:
        text = decode_utf8(p.read_bytes(), p, 0)
        lines += [(p, i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    n_val = max(1, round(len(lines) * cfg.val_fraction))
    if len(lines) - n_val < 1:
        raise UserError(
            f"data.input has {len(lines)} example line(s); need at least 2 to have both a "
            "train and a validation split"
        )
    sep = cfg.answer_sep
    out: dict[str, dict[str, int]] = {}
    for split, chunk in zip(SPLITS, (lines[:-n_val], lines[-n_val:])):
        ids_all: list[int] = []
        index = np.zeros((len(chunk), 3), dtype=np.int64)  # start, prompt tokens, total tokens
        n_bytes = scored_bytes = scored_tokens = 0
        for row, (path, lineno, line) in enumerate(chunk):
            cut = line.find(sep)
            if cut < 0:
                raise UserError(f"{path}:{lineno}: no answer separator {sep!r} in {line[:60]!r}")
            prompt, answer = line[: cut + len(sep)], line[cut + len(sep) :] + "\n"
            p_ids, a_ids = _encode(tok, prompt), _encode(tok, answer)
            if not p_ids or not a_ids:
                raise UserError(f"{path}:{lineno}: empty prompt in {line[:60]!r}")
            index[row] = (len(ids_all), len(p_ids), len(p_ids) + len(a_ids))
            ids_all += p_ids + a_ids
            n_bytes += len((line + "\n").encode("utf-8"))
            scored_bytes += len(answer.encode("utf-8"))
            scored_tokens += len(a_ids)
        np.asarray(ids_all, dtype=dtype).tofile(outs[split])
        np.save(Path(cfg.data_dir) / f"{split}.idx.npy", index)
        out[split] = {
            "bytes": n_bytes,
            "tokens": len(ids_all),
            "examples": len(chunk),
            "scored_bytes": scored_bytes,
            "scored_tokens": scored_tokens,
            "max_example_tokens": int(index[:, 2].max()),
        }
    return out
