"""Examples (data.kind `examples`): one example per line, such as `Max(3,7,5)=7`.

The prompt (up to and including the first `answer_sep`) and the answer (the rest of the line
plus its newline) are tokenized separately, so the boundary is always a token boundary and a
sampler can feed exactly the prompt tokens; `{split}.idx.npy` holds each example's start,
prompt length and total length in tokens. The last `val_fraction` of the lines are
validation. Examples are read into memory (they are small).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llm_tiny.config import DataConfig
from llm_tiny.data.shards import SPLITS, ShardWriter
from llm_tiny.errors import UserError
from tok.corpus import decode_utf8


def _encode(tok: Any, text: str) -> list[int]:
    # A registered special token written in an example becomes its id.
    return tok.encode(text, allowed_special="all")


def prepare_examples(
    files: list[Path], tok: Any, writers: dict[str, ShardWriter], cfg: DataConfig
) -> dict[str, dict[str, int]]:
    """Tokenize the example lines of `files` into the two writers; the splits' counts."""
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
        writers[split].append(np.asarray(ids_all, dtype=np.uint32))
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
