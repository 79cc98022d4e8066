"""Parallel `Tokenizer.encode_file`: module-level functions, so that worker processes can
import them. The parent hands its tokenizer's class and JSON to every worker (importing the
tokenizer here would be a cycle)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tok.corpus import read_utf8
from tok.pool import ordered_map

if TYPE_CHECKING:
    import numpy as np

_worker_tokenizer = None  # the worker process's own tokenizer, set by `_init_worker`


def _init_worker(cls: type, json_text: str, fast: bool | None) -> None:
    global _worker_tokenizer
    _worker_tokenizer = cls.from_json(json_text, source="<parent>", fast=fast)


def _encode_segment(args) -> np.ndarray:
    import numpy as np

    path, start, end, allowed_special, dtype = args
    assert _worker_tokenizer is not None
    text = read_utf8(path, start, end)
    return np.array(_worker_tokenizer.encode(text, allowed_special), dtype=dtype)


def encode_segments(tok, path, segments, allowed_special, workers: int, dtype) -> np.ndarray:
    """The ids of the byte ranges `segments` of the file at `path`, in order, encoded by `tok`
    (a `Tokenizer`) in up to `workers` processes."""
    import numpy as np

    if not isinstance(allowed_special, str):
        allowed_special = sorted(allowed_special)
    jobs = [(str(path), a, b, allowed_special, dtype) for a, b in segments]
    init = (type(tok), tok.to_json(), tok._fast_wanted)
    pooled = ordered_map(_encode_segment, jobs, min(workers, len(jobs)), _init_worker, init)
    return np.concatenate([ids for _, ids in pooled])
