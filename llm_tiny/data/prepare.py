"""Preparing data: inputs -> tokenizer -> token shards (`train_000000.bin`, ...) and `meta.json`.

`prepare_data` reads the inputs (`sources`), tokenizes them with the config's tokenizer (trained
first with `tok` if its file does not exist yet, on the whole input) in `data.workers`
processes (`pipeline`), and writes the ids into shards with a header (`shards`) as
`tok.corpus.token_dtype` of the vocabulary (uint16 when it fits, else uint32). `meta.json`
records the input hash, the tokenizer fingerprint, the shards with their token counts and
sha256, and the byte and token counts. A second call with the same input and tokenizer does
nothing; a changed input or tokenizer is noticed by hash and prepared again; an interrupted
preparation continues from its last complete shard (`progress.json`). `load_prepared` opens
such a directory without its input text (for evaluation). `python -m llm_tiny prepare CONFIG`
runs it on its own.

**Documents** (folders, globs, JSON Lines, Parquet, compressed files, or `data.doc_separator`):
each document ends with the end-of-text token `data.eot`, and a document is validation when a
hash of its text falls below `data.val_fraction` (`is_validation`), or, with `data.val_input`,
when it comes from those files (a file of them that `data.input` also names, say through a
folder, is left out of training: `held_out`; the tokenizer is trained on the training files).

**Text** (data.kind `text`): the last `val_fraction` of the bytes is the validation split, cut
just after the first cut-safe newline at or after that point. Inputs stream through in blocks of
about `block_bytes` (`tok.corpus.iter_split_blocks`), so memory stays bounded; blocks end where
the GPT-2 and GPT-4 split patterns always end a pre-token, so the ids are the same as tokenizing
the whole text at once (a test checks this).

**Examples** (data.kind `examples`): each non-empty line is one example such as `Max(3,7,5)=7`.
The prompt (up to and including the first `answer_sep`) and the answer (the rest of the line
plus its newline) are tokenized separately, so the boundary is always a token boundary and a
sampler can feed exactly the prompt tokens (`examples`).
**Conversations** (data.kind `chat`): `messages` rows rendered with their mask (`chat`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_tiny.config import DataConfig
from llm_tiny.data.chat import conversation_texts, prepare_chat
from llm_tiny.data.examples import prepare_examples
from llm_tiny.data.inputs import CONFIG_NAMES, check_inputs, hash_inputs
from llm_tiny.data.pipeline import encoded, new_counts, write_items
from llm_tiny.data.shards import SPLITS, ShardWriter, TokenStream, read_header
from llm_tiny.errors import UserError
from tok.corpus import iter_split_blocks, token_dtype
from tok.sources import (
    BadRecords,
    Document,
    file_format,
    iter_documents,
)

META_FORMAT = "llm_tiny.data"
META_VERSION = 2  # 2: token shards with headers (1: one headerless .bin per split)
BLOCK_BYTES = 4 << 20  # bytes of text tokenized at a time


# ----------------------------------------------------------------------------- input files


def as_documents(cfg: DataConfig, files: list[Path]) -> bool:
    """Whether the input is read as documents (each ending with `cfg.eot`, validation by
    document) rather than as one text: anything but plain text files named one by one, or
    any input when the validation documents come from `data.val_input`."""
    if cfg.kind != "text":  # examples and conversations have their own readers
        return False
    if cfg.val_input:
        return True
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
        names=CONFIG_NAMES,
    )


# ----------------------------------------------------------------------------- tokenizer


def load_or_train_tokenizer(
    cfg: DataConfig, files: list[Path], progress: bool, log: Callable, documents: bool = False
):
    """The tokenizer at `cfg.tokenizer`, trained on `files` first if the file does not exist
    (on their documents, with `cfg.eot` as a special token, when `documents`)."""
    from tok.bpe import Tokenizer
    from tok.chat import CHAT_TOKENS

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
    if cfg.kind == "chat":  # trained on the messages' text, with the turn tokens
        specials, texts = specials + CHAT_TOKENS, conversation_texts(cfg, files)
    tok = Tokenizer.train(
        texts,
        cfg.vocab_size,
        files=() if texts is not None else [str(p) for p in files],
        pattern=cfg.pattern,
        special_tokens=specials,
        progress=progress,
        workers=cfg.workers,
        max_bytes=cfg.tokenizer_train_bytes,
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

    def tokens(self, split: str) -> TokenStream:
        """The split's token ids, all its shards read as one sequence."""
        return TokenStream([self.data_dir / s["file"] for s in self.split(split)["shards"]])


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _files_match(data_dir: Path, meta: dict[str, Any]) -> bool:
    """The shards exist with the headers and sizes meta.json promises."""
    try:
        for name, split in meta.get("splits", {}).items():
            for shard in split["shards"]:
                if read_header(data_dir / shard["file"])[1] != shard["tokens"]:
                    return False
            sides = {"examples": ("idx",), "chat": ("idx", "mask")}.get(meta["kind"], ())
            if not all((data_dir / f"{name}.{x}.npy").is_file() for x in sides):
                return False
    except (UserError, KeyError, TypeError, FileNotFoundError):
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
        raise UserError(f"{data_dir}: the token shards do not match meta.json; prepare again")
    return PreparedData(data_dir, meta, tokenizer)


def prepare_data(
    cfg: DataConfig,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
    block_bytes: int = BLOCK_BYTES,
    before_replacing: Callable[[Path], None] | None = None,
) -> PreparedData:
    """Tokenize `cfg.input` into shards in `cfg.data_dir` (or reuse what is there, or continue
    an interrupted preparation); see the module doc. `before_replacing(data_dir)` is called
    before finished data prepared from other input is removed: it may refuse (a run's data).

    Text that is not UTF-8 raises `tok.errors.TokenizerError` naming the file and offset.
    """
    if cfg.tokenizer is None or cfg.data_dir is None:
        raise ValueError("the data paths are not resolved: pass RunConfig.run_data")  # a bug
    files = check_inputs(cfg.input, note=log)
    val_files = check_inputs(cfg.val_input, "data.val_input", log) if cfg.val_input else []
    files = held_out(files, val_files)
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
        "shard_tokens": cfg.shard_tokens,
    }
    if cfg.kind == "examples":
        key["answer_sep"] = cfg.answer_sep
    elif cfg.kind == "chat":
        key["messages_field"] = cfg.messages_field
    if val_files:
        key["val_input_sha256"] = hash_inputs(val_files)
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
    progress_path = data_dir / "progress.json"
    resume = _read_meta(progress_path)
    resume = resume if resume is not None and resume.get("key") == key else None
    if resume is not None:
        log(f"{data_dir}: continuing an interrupted preparation")
    else:
        if meta is not None and before_replacing is not None:
            before_replacing(data_dir)
        if meta is not None:
            log(f"{data_dir}: input or tokenizer changed; preparing the data again")
        _remove_prepared(data_dir)
    meta_path.unlink(missing_ok=True)  # from here until the end the directory is incomplete
    dtype = token_dtype(tok.vocab_size)
    writers = {
        s: ShardWriter(data_dir, s, dtype, cfg.shard_tokens, resume and resume["writers"][s])
        for s in SPLITS
    }
    try:
        if cfg.kind == "examples":
            splits = prepare_examples(files, tok, writers, cfg)
        elif cfg.kind == "chat":
            splits = prepare_chat(files, val_files, tok, writers, cfg, is_validation, log)
        else:
            splits = _prepare_stream(
                cfg, files, val_files, tok, writers, documents, block_bytes, progress, log, key,
                resume,
            )  # fmt: skip
    except BaseException as e:
        for w in writers.values():
            w.abort()
        # An interruption leaves the open shards for a resumed preparation (progress.json); an
        # error in the input leaves nothing: the input has to change, so nothing can resume.
        if not isinstance(e, KeyboardInterrupt):
            _remove_prepared(data_dir)
        raise
    for s, w in writers.items():
        splits[s]["shards"] = w.close()
    meta = {
        **key,
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        "val_inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in val_files],
        "tokenizer": str(cfg.tokenizer),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "splits": splits,
    }
    tmp = meta_path.with_name("meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, meta_path)  # written last: a meta.json means the shards are complete
    progress_path.unlink(missing_ok=True)
    counts = ", ".join(
        f"{n} {s['tokens']:,} tokens / {s['bytes']:,} bytes" for n, s in splits.items()
    )
    log(f"prepared {data_dir}: {counts}")
    return PreparedData(data_dir, meta, tok)


def _remove_prepared(data_dir: Path) -> None:
    """Delete what an earlier preparation left (shards, old single files, progress)."""
    for pattern in ("*_[0-9]*.bin", "*_[0-9]*.bin.tmp", "train.bin", "val.bin", "progress.json"):
        for p in data_dir.glob(pattern):
            p.unlink()


def held_out(files: list[Path], val_files: list[Path]) -> list[Path]:
    """The training files: `files` without those of `val_files` (`data.val_input`), so that a
    folder or ``stdlib:`` entry in `data.input` can hold the validation files back whole."""
    val = {p.resolve() for p in val_files}
    train = [p for p in files if p.resolve() not in val]
    if not train:
        raise UserError("data.input: all its files are in data.val_input; none is left to train on")
    return train


def is_validation(text: str, val_fraction: float) -> bool:
    """Whether a document belongs to the validation split: a hash of its text, read as a
    number in [0, 1), falls below `val_fraction`. Streaming needs no document count; the same
    text always lands in the same split (duplicates never straddle it); about `val_fraction`
    of the documents are chosen, whatever their order."""
    return _hashes_below(text.encode("utf-8", "surrogatepass"), val_fraction)


def _hashes_below(raw: bytes, fraction: float) -> bool:
    digest = hashlib.blake2b(raw, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def _items(
    cfg: DataConfig,
    files: list[Path],
    val_files: list[Path],
    tok: Any,
    documents: bool,
    block_bytes: int,
    stats: BadRecords,
) -> Iterator[tuple[str, str, int]]:
    """The stream to tokenize: documents, or blocks of the one text (see the module doc)."""
    if val_files:  # the split is the file the document came from
        for split, paths in (("train", files), ("val", val_files)):
            for doc in iter_texts(cfg, paths, stats):
                yield split, doc.text, len(doc.text.encode("utf-8"))
        return
    if documents:
        for doc in iter_texts(cfg, files, stats):
            raw = doc.text.encode("utf-8")  # once: for the split and the byte count
            yield ("val" if _hashes_below(raw, cfg.val_fraction) else "train"), doc.text, len(raw)
        return
    total = sum(p.stat().st_size for p in files)
    split_at = math.floor(total * (1.0 - cfg.val_fraction))
    if not tok.cuts_are_safe:
        block_bytes = total + 1  # one block per split: exact, at the cost of memory
    # A line 4x longer than a block with no safe cut in it is cut at a character boundary to
    # keep memory bounded; only there can the ids differ from tokenizing the text whole.
    blocks = iter_split_blocks(files, [split_at], block_size=block_bytes, max_bytes=4 * block_bytes)
    for part, text, n_bytes in blocks:
        yield SPLITS[part], text, n_bytes


def _prepare_stream(
    cfg: DataConfig,
    files: list[Path],
    val_files: list[Path],
    tok: Any,
    writers: dict[str, ShardWriter],
    documents: bool,
    block_bytes: int,
    progress: bool,
    log: Callable[[str], None],
    key: dict[str, Any],
    resume: dict[str, Any] | None,
) -> dict[str, dict[str, int]]:
    """Text or documents through `pipeline`: tokenized in `data.workers` processes, written
    to the shards, resumable."""
    from tqdm import tqdm

    stats = BadRecords()
    items: Iterator[tuple[str, str, int]] = _items(
        cfg, files, val_files, tok, documents, block_bytes, stats
    )
    counts = resume["counts"] if resume else new_counts(documents)
    done = resume["items"] if resume else 0
    skipped = sum(n for _, _, n in itertools.islice(items, done))  # already in the shards
    if documents:  # each document ends with the end-of-text token; a literal one stays text
        eot, allowed = ([tok.special_tokens[cfg.eot]] if cfg.eot else []), "none"
    else:  # a special token written in the text (e.g. <|endoftext|>) becomes its id
        eot, allowed = [], "all"
    workers = cfg.workers or os.cpu_count() or 1
    total = sum(p.stat().st_size for p in files + val_files)
    with tqdm(
        total=total, initial=skipped, unit="B", unit_scale=True, desc="tokenizing",
        disable=not progress,
    ) as bar:  # fmt: skip
        write_items(
            encoded(items, tok, eot, allowed, workers, writers["train"].dtype), writers, counts,
            lambda t: len(tok.token_bytes(t)), writers["train"].directory / "progress.json",
            key, done, bar.update,
        )  # fmt: skip
    if stats.count or stats.empty:
        log(f"note: {stats.summary()}")
    if documents:
        for split, c in counts.items():
            if not c["documents"] and not val_files:
                total_docs = sum(x["documents"] for x in counts.values())
                raise UserError(
                    f"data.input: none of its {total_docs} documents fell in the {split} split "
                    f"(each is validation with probability data.val_fraction = "
                    f"{cfg.val_fraction}); use more documents or another data.val_fraction"
                )
    return counts


def main(argv: list[str] | None = None) -> int:
    """`python -m llm_tiny prepare CONFIG [--section.key=value ...]`: prepare a run's data."""
    import sys

    from llm_tiny.config import load_config, split_overrides
    from llm_tiny.errors import ArgumentParser, run_cli

    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = ArgumentParser(
        prog="llm_tiny prepare",
        description="Train the tokenizer if needed and tokenize the input into shards, as "
        "training would (it then finds them ready). Interrupted, it continues where it stopped.",
    )
    parser.add_argument("config", help="YAML run config, e.g. configs/tiny.yaml")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the data of a run in OUT_DIR prepared from other input (train.overwrite)",
    )
    args = parser.parse_args(rest)

    def run() -> int:
        from llm_tiny.train.rundir import BEST, LAST

        cfg = load_config(args.config, overrides + ["--train.overwrite=true"] * args.overwrite)
        out_dir = Path(cfg.train.out_dir)
        trained = [n for n in (BEST, LAST) if (out_dir / n).exists()]

        def refuse(data_dir: Path) -> None:
            raise UserError(
                f"{data_dir} holds the data the run in {out_dir} was trained on "
                f"({', '.join(trained)}), prepared from other input; preparing again would "
                "replace it: pass --overwrite (with make: ARGS=--overwrite) to replace it, or "
                "choose another train.out_dir"
            )

        guard = refuse if trained and not cfg.train.overwrite else None
        prepare_data(cfg.run_data, progress=sys.stderr.isatty(), before_replacing=guard)
        return 0

    return run_cli(run, "llm_tiny prepare")
