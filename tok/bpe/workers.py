"""Parallel `Tokenizer.encode_file`: module-level functions, so that worker processes can
import them. The parent hands its tokenizer's class and JSON to every worker (importing the
tokenizer here would be a cycle)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tok.corpus import read_utf8

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
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    # NOTE: fork where there is one. "spawn" re-runs the caller's main module in every worker,
    # which breaks (or repeats the work of) any script without an `if __name__ == "__main__"`
    # guard; the workers only run this package's code, which takes no locks a fork could break.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    if not isinstance(allowed_special, str):
        allowed_special = sorted(allowed_special)
    jobs = [(str(path), a, b, allowed_special, dtype) for a, b in segments]
    with ProcessPoolExecutor(
        max_workers=min(workers, len(segments)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(type(tok), tok.to_json(), tok._fast_wanted),
    ) as pool:
        return np.concatenate(list(pool.map(_encode_segment, jobs)))
