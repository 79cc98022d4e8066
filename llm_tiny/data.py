"""Data: text files -> token ids on disk -> batches.

**Prepare** (`prepare_data`). The input text files are concatenated in order and tokenized with
the config's tokenizer (trained first with `tok` if its file does not exist yet, on the whole
input). The last `val_fraction` of the text is the validation split, cut at the first line
start at or after that point. Token ids go to `train.bin` and `val.bin` (uint16 when the
vocabulary fits, else uint32), and `meta.json` records the input hash, the tokenizer
fingerprint and the byte and token counts. A second call with the same input and tokenizer
does nothing; a changed input or tokenizer is noticed by hash and prepared again.

Large inputs stream through in blocks of `block_bytes`, so memory stays bounded. Blocks are
cut only just after a newline between two non-whitespace characters, where the GPT-2 and
GPT-4 split patterns always end a pre-token (`tok.patterns.safe_cut_in_bytes`), so the ids are
the same as tokenizing the whole text at once (a test checks this).

**Batches** for training come from a `TokenWindows` (data.kind `text`) or `ExampleBatches`
(data.kind `examples`); both have the same interface: `get_batch(step, micro)`,
`iter_eval_batches(...)`, `eval_targets(...)`, `state_dict()` / `load_state_dict()`.

The whole global batch of optimizer step `step` (`micro_batches x batch_size` windows, where
`micro_batches` = processes x accumulation steps) is drawn from a generator seeded with
`(seed, step)`, and micro-batch `micro` is its slice `[micro * batch_size, (micro + 1) *
batch_size)`. It depends on nothing else. Consequences:
- Resume is exact: the sampler's state is only its seed, and the step comes from the
  checkpoint. No generator state has to be replayed.
- DDP equals gradient accumulation equals one big batch: rank r's micro-step m is global
  micro-batch `r * A + m`, so W ranks x A accumulation steps x batch B see exactly the windows
  of one process with W * A steps of B, or one step of W * A * B (tests check this).

**Examples** (data.kind `examples`): each non-empty line is one example such as `Max(3,7,5)=7`.
The prompt (up to and including the first `answer_sep`) and the answer (the rest of the line
plus its newline) are tokenized separately, so the boundary is always a token boundary and a
sampler can feed exactly the prompt tokens. The loss covers the answer tokens and the
newline, which teaches the model to stop; the prompt and the padding have target -1. The last
`val_fraction` of the lines are validation. Examples are read into memory (they are small).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_tiny.config import DataConfig
from llm_tiny.errors import UserError

META_FORMAT = "llm_tiny.data"
META_VERSION = 1
BLOCK_BYTES = 4 << 20  # bytes of text tokenized at a time
_HASH_CHUNK = 1 << 20


# ----------------------------------------------------------------------------- input files


def check_inputs(paths: tuple[str, ...] | list[str]) -> list[Path]:
    """The input files as Paths; a missing, unreadable or (all) empty input is a UserError."""
    files = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"data.input: {p} not found")
        if not p.is_file():
            raise UserError(f"data.input: {p} is not a file")
        files.append(p)
    if sum(p.stat().st_size for p in files) == 0:
        names = ", ".join(map(str, files))
        raise UserError(f"data.input: {names} {'is' if len(files) == 1 else 'are'} empty")
    return files


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


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# ----------------------------------------------------------------------------- safe cuts


def _safe_cut(buf: bytes | bytearray, start: int) -> int | None:
    """The first safe block cut at or after `start` (`tok.patterns.safe_cut_in_bytes`: just
    after a newline between two non-whitespace characters), or None."""
    from tok.patterns import safe_cut_in_bytes

    at = safe_cut_in_bytes(buf, max(start, 1))
    return None if at < 0 else at


def _char_boundary(buf: bytes | bytearray, i: int) -> int:
    """The first UTF-8 character boundary at or after i (fallback cut when no safe one)."""
    while i < len(buf) and (buf[i] & 0xC0) == 0x80:
        i += 1
    return i


def split_text_blocks(
    files: list[Path], split_at: int, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[str, bytes]]:
    """Yield `("train" | "val", piece)`: the concatenated files in pieces of about
    `block_bytes`, cut at safe points. The train/val split is the first safe cut at or after
    byte `split_at` (a character boundary if the rest of the text has none).

    A line longer than 4 x `block_bytes` with no safe cut is cut at a character boundary to
    keep memory bounded; only there can the ids differ from tokenizing the text whole.
    """
    buf = bytearray()
    base = 0  # offset of buf[0] in the concatenated input
    phase = "train"
    limit = 4 * block_bytes

    def chunks() -> Iterator[bytes]:
        for p in files:
            with p.open("rb") as f:
                while chunk := f.read(block_bytes):
                    yield chunk

    for chunk in chunks():
        buf += chunk
        while True:
            if phase == "train" and base + len(buf) > split_at:
                cut = _safe_cut(buf, split_at - base)
                if cut is None and len(buf) >= limit:
                    cut = _char_boundary(buf, max(split_at - base, 1))
                if cut is None:
                    break  # read more
                yield "train", bytes(buf[:cut])
                del buf[:cut]
                base += cut
                phase = "val"
                continue
            if len(buf) > block_bytes:
                cut = _safe_cut(buf, block_bytes // 2)
                if cut is None and len(buf) >= limit:
                    cut = _char_boundary(buf, block_bytes)
                if cut is None:
                    break
                yield phase, bytes(buf[:cut])
                del buf[:cut]
                base += cut
                continue
            break
    if phase == "train":
        cut = _safe_cut(buf, split_at - base)
        if cut is None:
            cut = _char_boundary(buf, max(split_at - base, 0))
        yield "train", bytes(buf[:cut])
        del buf[:cut]
    yield "val", bytes(buf)


def _decode(piece: bytes, offset: int, files: list[Path]) -> str:
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError as e:
        at = offset + e.start
        for p in files:
            size = p.stat().st_size
            if at < size:
                raise UserError(f"{p}: not UTF-8 text (invalid byte at offset {at})") from None
            at -= size
        raise UserError(f"data.input: not UTF-8 text ({e.reason})") from None


# ----------------------------------------------------------------------------- tokenizer


def load_or_train_tokenizer(cfg: DataConfig, files: list[Path], progress: bool, log: Callable):
    """The tokenizer at `cfg.tokenizer`, trained on `files` first if the file does not exist."""
    from tok.bpe import Tokenizer

    path = Path(cfg.tokenizer)
    if path.exists():
        tok = Tokenizer.load(path)
        if tok.vocab_size != cfg.vocab_size:
            raise UserError(
                f"data.vocab_size is {cfg.vocab_size} but the existing tokenizer {path} has "
                f"{tok.vocab_size} tokens; set data.vocab_size={tok.vocab_size} or delete "
                f"{path} to train a new one"
            )
        return tok
    log(f"training a {cfg.vocab_size}-token BPE tokenizer on {', '.join(map(str, files))}")
    tok = Tokenizer.train(
        None,
        cfg.vocab_size,
        files=[str(p) for p in files],
        pattern=cfg.pattern,
        special_tokens=tuple(cfg.special_tokens),
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


def _cuttable(tok: Any) -> bool:
    """Whether block cuts are exact for this tokenizer: a named split pattern, and no special
    token that could straddle a cut."""
    return tok.pattern_name is not None and not any("\n" in s for s in tok.special_tokens)


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


def _cache_key(cfg: DataConfig, input_hash: str, fingerprint: str) -> dict[str, Any]:
    key = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "kind": cfg.kind,
        "input_sha256": input_hash,
        "tokenizer_fingerprint": fingerprint,
        "val_fraction": cfg.val_fraction,
    }
    if cfg.kind == "examples":
        key["answer_sep"] = cfg.answer_sep
    return key


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
    """Tokenize `cfg.input` into `cfg.data_dir` (or reuse what is there); see the module doc."""
    files = check_inputs(cfg.input)
    tok = load_or_train_tokenizer(cfg, files, progress, log)
    data_dir = Path(cfg.data_dir)
    key = _cache_key(cfg, hash_inputs(files), tok.fingerprint)
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
    if cfg.kind == "text":
        splits = _prepare_text(files, tok, data_dir, dtype, cfg.val_fraction, block_bytes, progress)
    else:
        splits = _prepare_examples(files, tok, data_dir, dtype, cfg)
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
    data_dir: Path,
    dtype: np.dtype,
    val_fraction: float,
    block_bytes: int,
    progress: bool,
) -> dict[str, dict[str, int]]:
    from tqdm import tqdm

    total = sum(p.stat().st_size for p in files)
    split_at = math.floor(total * (1.0 - val_fraction))
    counts = {s: {"bytes": 0, "tokens": 0} for s in ("train", "val")}
    first_tokens: dict[str, int | None] = {"train": None, "val": None}
    if not _cuttable(tok):
        block_bytes = total + 1  # one block per split: exact, at the cost of memory
    outs = {s: (data_dir / f"{s}.bin.tmp").open("wb") for s in ("train", "val")}
    offset = 0
    try:
        with tqdm(
            total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress
        ) as bar:
            for split, piece in split_text_blocks(files, split_at, block_bytes):
                ids = _encode(tok, _decode(piece, offset, files))
                np.asarray(ids, dtype=dtype).tofile(outs[split])
                if first_tokens[split] is None and ids:
                    first_tokens[split] = ids[0]
                counts[split]["bytes"] += len(piece)
                counts[split]["tokens"] += len(ids)
                offset += len(piece)
                bar.update(len(piece))
    except BaseException:
        for s, f in outs.items():
            f.close()
            (data_dir / f"{s}.bin.tmp").unlink(missing_ok=True)
        raise
    for f in outs.values():
        f.close()
    for s in outs:
        os.replace(data_dir / f"{s}.bin.tmp", data_dir / f"{s}.bin")
    # Evaluation scores every token but the first of a split (it has no context), so bits per
    # byte divide by the bytes of the scored tokens only.
    for s, first in first_tokens.items():
        counts[s]["scored_bytes"] = counts[s]["bytes"] - (
            len(tok.token_bytes(first)) if first is not None else 0
        )
    return counts


def _prepare_examples(
    files: list[Path], tok: Any, data_dir: Path, dtype: np.dtype, cfg: DataConfig
) -> dict[str, dict[str, int]]:
    lines: list[tuple[Path, int, str]] = []
    for p in files:
        raw = p.read_bytes()
        text = _decode(raw, 0, [p])
        lines += [(p, i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    n_val = max(1, round(len(lines) * cfg.val_fraction))
    if len(lines) - n_val < 1:
        raise UserError(
            f"data.input has {len(lines)} example line(s); need at least 2 to have both a "
            "train and a validation split"
        )
    sep = cfg.answer_sep
    out: dict[str, dict[str, int]] = {}
    for split, chunk in (("train", lines[:-n_val]), ("val", lines[-n_val:])):
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
        tmp = data_dir / f"{split}.bin.tmp"
        np.asarray(ids_all, dtype=dtype).tofile(tmp)
        np.save(data_dir / f"{split}.idx.npy", index)
        os.replace(tmp, data_dir / f"{split}.bin")
        out[split] = {
            "bytes": n_bytes,
            "tokens": len(ids_all),
            "examples": len(chunk),
            "scored_bytes": scored_bytes,
            "scored_tokens": scored_tokens,
            "max_example_tokens": int(index[:, 2].max()),
        }
    return out


# ----------------------------------------------------------------------------- batches


def step_draws(seed: int, step: int, n: int, high: int) -> np.ndarray:
    """The `n` random integers in [0, high) of optimizer step `step` (see the module doc).

    A draw of n values starts with the draw of fewer, so slicing one global batch gives the
    same windows whatever the split into micro-batches.
    """
    return np.random.default_rng([seed, step]).integers(0, high, size=n)


class _Sampler:
    """The random part shared by both batch sources: which rows each micro-batch gets."""

    kind = ""

    def __init__(self, batch_size: int, micro_batches: int, seed: int) -> None:
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.batch_size = batch_size
        self.micro_batches = micro_batches
        self.seed = seed
        self._cached: tuple[int, np.ndarray] | None = None

    def _rows(self, step: int, micro: int, high: int) -> np.ndarray:
        if not 0 <= micro < self.micro_batches:
            raise ValueError(f"micro must be in [0, {self.micro_batches}), got {micro}")
        if self._cached is None or self._cached[0] != step:
            draws = step_draws(self.seed, step, self.micro_batches * self.batch_size, high)
            self._cached = (step, draws)
        B = self.batch_size
        return self._cached[1][micro * B : (micro + 1) * B]

    def state_dict(self) -> dict[str, Any]:
        """Everything the sampler's randomness depends on besides the step."""
        return {"kind": self.kind, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise UserError(
                f"sampler state is for data.kind {state.get('kind')!r}, not {self.kind!r}"
            )
        self.seed = int(state["seed"])
        self._cached = None


def _to_device(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(arr)
    if device.type == "cuda":
        # Pinned (page-locked) host memory lets the copy run asynchronously with compute.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def eval_windows(
    n_tokens: int, block_size: int, stride: int | None = None
) -> list[tuple[int, int, int]]:
    """Windows that score every token of a stream except the first exactly once.

    Each window is `(begin, end, first)`: the model reads `x = t[begin:end]`, predicts
    `y = t[begin+1:end+1]`, and only positions `j >= first` count. Without `stride` the windows
    do not overlap (the last one is moved back to full length, scoring only its new tokens).
    With `stride < block_size` each window moves on by `stride` tokens and scores only those,
    so every scored token after the first window sees at least `block_size - stride` tokens of
    context.

    >>> eval_windows(10, 4)
    [(0, 4, 0), (4, 8, 0), (5, 9, 3)]
    >>> eval_windows(10, 4, stride=2)
    [(0, 4, 0), (2, 6, 2), (4, 8, 2), (5, 9, 3)]
    """
    stride = block_size if stride is None else stride
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}")
    last = n_tokens - 1  # index of the last target token
    if last < 1:
        return []
    end = min(block_size, last)
    windows = [(0, end, 0)]
    while end < last:
        new_end = min(end + stride, last)
        begin = max(0, new_end - block_size)
        windows.append((begin, new_end, end - begin))
        end = new_end
    return windows


def _window_batch(tokens: np.ndarray, windows: list[tuple[int, int, int]]):
    width = max(e - b for b, e, _ in windows)
    x = np.zeros((len(windows), width), dtype=np.int64)
    y = np.full((len(windows), width), -1, dtype=np.int64)
    for row, (b, e, first) in enumerate(windows):
        x[row, : e - b] = tokens[b:e]
        y[row, first : e - b] = tokens[b + 1 + first : e + 1]
    return x, y


def iter_window_batches(
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    device: torch.device | str,
    stride: int | None = None,
    max_batches: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of `eval_windows` over `tokens` in order; with several ranks, rank r takes
    batches r, r + W, r + 2W, ... of the first `max_batches`."""
    device = torch.device(device)
    windows = eval_windows(len(tokens), block_size, stride)
    n_batches = math.ceil(len(windows) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for i in range(rank, n_batches, world_size):
        x, y = _window_batch(tokens, windows[i * batch_size : (i + 1) * batch_size])
        yield _to_device(x, device), _to_device(y, device)


def count_window_targets(
    n_tokens: int, block_size: int, batch_size: int, stride: int | None, max_batches: int | None
) -> int:
    """How many targets the first `max_batches` batches of windows score (all: n_tokens - 1)."""
    windows = eval_windows(n_tokens, block_size, stride)
    if max_batches is not None:
        windows = windows[: max_batches * batch_size]
    return sum(e - b - first for b, e, first in windows)


class TokenWindows(_Sampler):
    """data.kind `text`: random windows of `block_size + 1` tokens from a `.bin` memmap."""

    kind = "text"

    def __init__(
        self,
        path: str | Path,
        dtype: np.dtype | str,
        block_size: int,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        micro_batches: int = 1,
    ) -> None:
        super().__init__(batch_size, micro_batches, seed)
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.block_size = block_size
        self.device = torch.device(device)
        self.n_tokens = self.path.stat().st_size // self.dtype.itemsize
        if self.n_tokens < block_size + 1:
            raise UserError(
                f"the {self.path.stem} split ({self.path}) has {self.n_tokens} tokens, fewer "
                f"than model.block_size + 1 = {block_size + 1}; use more text, another "
                "data.val_fraction or a smaller model.block_size"
            )

    def _tokens(self) -> np.ndarray:
        # A fresh read-only memmap per call: cheap, and it lets the OS drop pages between calls.
        return np.memmap(self.path, dtype=self.dtype, mode="r")

    def get_batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape (batch_size, block_size): y is x shifted left by one token."""
        T = self.block_size
        starts = self._rows(step, micro, self.n_tokens - T)
        windows = self._tokens()[starts[:, None] + np.arange(T + 1)].astype(np.int64)  # (B, T+1)
        return _to_device(windows[:, :-1], self.device), _to_device(windows[:, 1:], self.device)

    def iter_eval_batches(
        self,
        batch_size: int,
        max_batches: int | None = None,
        stride: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order (see `eval_windows`), or its first `max_batches` batches."""
        # Windows are copied out of the memmap one batch at a time: memory stays bounded.
        yield from iter_window_batches(
            self._tokens(),
            self.block_size,
            batch_size,
            self.device,
            stride,
            max_batches,
            rank,
            world_size,
        )

    def eval_targets(
        self, batch_size: int, max_batches: int | None = None, stride: int | None = None
    ) -> int:
        """How many targets `iter_eval_batches` with these arguments scores (all ranks)."""
        return count_window_targets(self.n_tokens, self.block_size, batch_size, stride, max_batches)


class ExampleBatches(_Sampler):
    """data.kind `examples`: random examples, each padded to `block_size`, prompt masked."""

    kind = "examples"

    def __init__(
        self,
        path: str | Path,
        dtype: np.dtype | str,
        block_size: int,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        micro_batches: int = 1,
    ) -> None:
        super().__init__(batch_size, micro_batches, seed)
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.block_size = block_size
        self.device = torch.device(device)
        self.tokens = np.fromfile(self.path, dtype=self.dtype).astype(np.int64)
        self.index = np.load(self.path.with_suffix(".idx.npy"), allow_pickle=False)
        longest = int(self.index[:, 2].max()) if len(self.index) else 0
        if longest > block_size + 1:
            row = int(self.index[:, 2].argmax())
            raise UserError(
                f"{self.path}: example {row + 1} has {longest} tokens, more than "
                f"model.block_size + 1 = {block_size + 1}; raise model.block_size"
            )

    def _batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        T = self.block_size
        x = np.zeros((len(rows), T), dtype=np.int64)
        y = np.full((len(rows), T), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            start, n_prompt, n = self.index[r]
            ids = self.tokens[start : start + n]
            x[i, : n - 1] = ids[:-1]
            # Position j predicts ids[j + 1]; the first answer token is ids[n_prompt].
            y[i, n_prompt - 1 : n - 1] = ids[n_prompt:]
        return x, y

    def get_batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._rows(step, micro, len(self.index))
        x, y = self._batch(rows)
        return _to_device(x, self.device), _to_device(y, self.device)

    def iter_eval_batches(
        self,
        batch_size: int,
        max_batches: int | None = None,
        stride: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every example once, in file order (`stride` has no meaning here and is ignored)."""
        n_batches = math.ceil(len(self.index) / batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for i in range(rank, n_batches, world_size):
            rows = np.arange(i * batch_size, min((i + 1) * batch_size, len(self.index)))
            x, y = self._batch(rows)
            yield _to_device(x, self.device), _to_device(y, self.device)

    def eval_targets(
        self, batch_size: int, max_batches: int | None = None, stride: int | None = None
    ) -> int:
        rows = self.index if max_batches is None else self.index[: max_batches * batch_size]
        return int((rows[:, 2] - rows[:, 1]).sum())


BatchSource = TokenWindows | ExampleBatches


def open_split(
    data: PreparedData,
    split: str,
    block_size: int,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    micro_batches: int = 1,
) -> BatchSource:
    """The batch source of a prepared split ("train" or "val"); `micro_batches` is the number
    of micro-batches in one optimizer step over all processes."""
    cls = TokenWindows if data.meta["kind"] == "text" else ExampleBatches
    path = data.data_dir / f"{split}.bin"
    return cls(path, data.dtype, block_size, batch_size, seed, device, micro_batches)
