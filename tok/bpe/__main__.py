"""The tokenizer's command line, ``python -m tok.bpe``.

    python -m tok.bpe train --input PATH... --vocab-size 512 [--pattern gpt4]
                            [--special '<|endoftext|>'] [--out tok/bpe.json]
                            [--workers N] [--max-bytes N] [--text-field text]
                            [--doc-separator STR] [--on-bad-record error|skip]
    python -m tok.bpe encode --tokenizer tok/bpe.json --text "Hello" [--json]
    python -m tok.bpe decode --tokenizer tok/bpe.json --ids "72 101 108"
    python -m tok.bpe info --tokenizer tok/bpe.json

`encode` and `decode` read ``--input FILE`` or standard input when neither ``--text`` nor
``--ids`` is given. A mistake (missing file, bad vocab size, bad ids, bad pattern) prints one
line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tok.bpe.tokenizer import Tokenizer
from tok.corpus import decode_utf8, file_size, read_utf8
from tok.errors import EXIT_USAGE, ArgumentParser, TokenizerError, is_int
from tok.patterns import DEFAULT_PATTERN, PATTERNS
from tok.serialize import DEFAULT_PATH, render_token
from tok.sources import ON_BAD_RECORD, TOKENIZER_CLI, expand_inputs, file_format, iter_documents

PROG = "python -m tok.bpe"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except TokenizerError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Byte-level BPE tokenizer: train, encode, decode.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    t = sub.add_parser("train", help="train a tokenizer on text files, folders, JSONL or Parquet")
    t.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files, folders (recursive) or glob patterns: text, .jsonl, .parquet, .gz, .zst",
    )
    t.add_argument("--text-field", default="text", help="JSONL field / Parquet column (text)")
    t.add_argument(
        "--doc-separator", metavar="STR", help="split plain text files into documents at STR"
    )
    t.add_argument(
        "--on-bad-record",
        default="error",
        choices=ON_BAD_RECORD,
        help="a bad JSONL line or Parquet row: stop (default) or count and skip",
    )
    t.add_argument("--vocab-size", type=int, required=True, metavar="N")
    t.add_argument(
        "--pattern",
        default=DEFAULT_PATTERN,
        help=f"{', '.join(PATTERNS)} (default {DEFAULT_PATTERN}) or a regex",
    )
    t.add_argument("--special", nargs="*", default=[], metavar="TOKEN", help="special tokens")
    t.add_argument("--min-frequency", type=int, default=1, metavar="K")
    t.add_argument("--out", default=DEFAULT_PATH, help=f"tokenizer file (default {DEFAULT_PATH})")
    t.add_argument("--progress", action="store_true", help="show a progress bar")
    t.add_argument(
        "--workers", type=int, metavar="N", help="processes counting the text (default: all CPUs)"
    )
    t.add_argument(
        "--max-bytes",
        type=int,
        metavar="N",
        help="train on an evenly spaced sample of about N bytes of the input (default: all)",
    )
    t.set_defaults(run=_train)

    e = sub.add_parser("encode", help="print the token ids of a text")
    _tokenizer_arg(e)
    src = e.add_mutually_exclusive_group()
    src.add_argument("--text", help="the text to encode")
    src.add_argument("--input", metavar="FILE", help="a UTF-8 file to encode")
    e.add_argument("--json", action="store_true", help="print a JSON list")
    e.add_argument(
        "--allowed-special",
        default="none",
        choices=["none", "all", "none_raise"],
        help="what special tokens' text becomes (default: ordinary text)",
    )
    e.set_defaults(run=_encode)

    d = sub.add_parser("decode", help="print the text of token ids")
    _tokenizer_arg(d)
    src = d.add_mutually_exclusive_group()
    src.add_argument("--ids", help='ids separated by spaces or commas, or a JSON list: "1 2 3"')
    src.add_argument("--input", metavar="FILE", help="a file holding ids")
    d.set_defaults(run=_decode)

    i = sub.add_parser("info", help="describe a tokenizer file")
    _tokenizer_arg(i)
    i.add_argument("--merges", type=int, default=5, metavar="K", help="first/last K merges")
    i.set_defaults(run=_info)
    return p


def _tokenizer_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=DEFAULT_PATH, metavar="PATH", help="tokenizer file")
    p.add_argument("--no-fast", action="store_true", help="do not use tiktoken")


def _load(args) -> Tokenizer:
    return Tokenizer.load(args.tokenizer, fast=False if args.no_fast else None)


def _train(args) -> None:
    # A missing file fails before any work; what a folder skips is said on stderr.
    files = expand_inputs(args.input, TOKENIZER_CLI, lambda m: print(m, file=sys.stderr))
    n_bytes = sum(map(file_size, files))
    if n_bytes == 0:
        raise TokenizerError(f"{', '.join(args.input)}: empty; there is no text to train on")
    # Plain text files are read in ranges by the counting workers; anything else (JSONL,
    # Parquet, compressed, or split at a separator) is streamed as documents.
    plain = args.doc_separator is None and all(
        file_format(f)[0] in ("text", None) and not file_format(f)[1] for f in files
    )
    start = time.perf_counter()
    tok = Tokenizer.train(
        None if plain else (d.text for d in _documents(args, files)),
        args.vocab_size,
        files=files if plain else (),
        pattern=args.pattern,
        special_tokens=args.special,
        min_frequency=args.min_frequency,
        progress=args.progress,
        workers=args.workers,
        max_bytes=args.max_bytes,
    )
    seconds = time.perf_counter() - start
    out = tok.save(args.out)
    if plain:
        n_tokens = sum(len(tok.encode_file(f, workers=args.workers)) for f in files)
    else:
        n_tokens = sum(len(tok.encode(d.text)) for d in _documents(args, files))
    sampled = args.max_bytes is not None and args.max_bytes < n_bytes
    sample = f" on a sample of about {args.max_bytes} bytes" if sampled else ""
    print(
        f"vocab size {tok.vocab_size} (256 bytes + {len(tok.merges)} merges + "
        f"{len(tok.special_tokens)} special tokens), trained{sample} in {seconds:.2f} s"
    )
    if tok.vocab_size < args.vocab_size:
        print(
            f"note: stopped below the requested {args.vocab_size}: no pair occurs "
            f"{args.min_frequency} times or more"
        )
    ratio = n_bytes / n_tokens if n_tokens else float("nan")
    text = "the input files" if sampled else "the training text"
    print(f"compression {ratio:.3f} bytes per token on {text} ({n_bytes} bytes)")
    print(f"saved {out} and {out.with_suffix('.vocab')}")


def _documents(args, files):
    return iter_documents(
        files,
        text_field=args.text_field,
        doc_separator=args.doc_separator,
        on_bad_record=args.on_bad_record,
        names=TOKENIZER_CLI,
    )


def _read_input(path: str | None) -> str:
    if path is None:
        return decode_utf8(sys.stdin.buffer.read(), "standard input", 0)
    return read_utf8(path)


def _encode(args) -> None:
    tok = _load(args)
    text = args.text if args.text is not None else _read_input(args.input)
    ids = tok.encode(text, allowed_special=args.allowed_special)
    print(json.dumps(ids) if args.json else " ".join(map(str, ids)))


def parse_ids(text: str) -> list[int]:
    """Token ids from text: a JSON list, or integers separated by spaces and/or commas.

    >>> parse_ids("1 2,3")
    [1, 2, 3]
    >>> parse_ids("[4, 5]")
    [4, 5]
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise TokenizerError(f"ids: not a valid JSON list ({e.msg})") from None
        bad = next((v for v in values if not is_int(v)), None)
        if bad is not None:
            raise TokenizerError(f"ids: not an integer: {bad!r}")
        return values
    ids = []
    for word in stripped.replace(",", " ").split():
        try:
            ids.append(int(word))
        except ValueError:
            raise TokenizerError(f"ids: not an integer: {word!r}") from None
    return ids


def _decode(args) -> None:
    tok = _load(args)
    text = args.ids if args.ids is not None else _read_input(args.input)
    out = tok.decode(parse_ids(text))
    sys.stdout.buffer.write(out.encode("utf-8"))
    sys.stdout.buffer.flush()


def _info(args) -> None:
    tok = _load(args)
    merges = tok.merges
    print(f"file          {args.tokenizer}")
    print(
        f"vocab size    {tok.vocab_size} (256 bytes + {len(merges)} merges + "
        f"{len(tok.special_tokens)} special tokens)"
    )
    print(f"pattern       {tok.pattern_name or 'custom'}: {tok.pattern}")
    specials = ", ".join(
        f"{json.dumps(k, ensure_ascii=False)}={v}" for k, v in tok.special_tokens.items()
    )
    print(f"specials      {specials or '(none)'}")
    print(f"fingerprint   {tok.fingerprint}")
    print(f"fast path     {'tiktoken' if tok.fast_path else 'off: ' + tok.fast_path_note}")
    k = max(args.merges, 0)
    if merges:
        print("merges")
    for r, (a, b) in enumerate(merges):
        if k <= r < len(merges) - k:  # only the first and last k merges
            if r == k:
                print("  ...")
            continue
        print(
            f"  {256 + r:>6} {render_token(tok.token_bytes(256 + r))} = "
            f"{render_token(tok.token_bytes(a))} + {render_token(tok.token_bytes(b))}"
        )


if __name__ == "__main__":
    sys.exit(main())
