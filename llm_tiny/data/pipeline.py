"""Tokenizing a stream of texts into shards: in parallel, in order, in bounded memory, and
able to continue after an interruption.

The input is a stream of items `(split, text, n_bytes)` (blocks of one text, or documents).
`encoded` tokenizes them in `workers` processes, several texts to a task, at most a few tasks
in flight, and yields the ids in the order of the items, so the shards are the same whatever
the number of workers (tested). `write_items` appends each item's ids to its split's
`ShardWriter` and counts bytes and tokens; whenever a shard is complete it records its progress
in `progress.json` (the number of items done, the writers' states and the counts), so that
`write_items(..., resume=progress)` skips those items and carries on from there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llm_tiny.data.shards import SPLITS, ShardWriter
from tok.pool import ordered_map

TASK_BYTES = 1 << 20  # text per task sent to a worker: big enough to amortise the pickling
Item = tuple[str, str, int]  # (split, text, bytes of text)

_worker: tuple[Any, list[int], Any, Any] | None = None


def _encoder(tok: Any, eot: list[int], allowed: Any) -> Callable[[str], list[int]]:
    return lambda text: tok.encode(text, allowed_special=allowed) + eot


def _init(tok_json: str, eot: list[int], allowed: Any, dtype: Any) -> None:
    global _worker
    from tok.bpe import Tokenizer

    _worker = (Tokenizer.from_json(tok_json), eot, allowed, dtype)


def _encode_task(items: list[Item]) -> list[np.ndarray]:
    tok, eot, allowed, dtype = _worker  # set by `_init` in this worker process
    encode = _encoder(tok, eot, allowed)
    # In the shards' dtype already (uint16 for most vocabularies): half the bytes to send back.
    return [np.asarray(encode(text), dtype=dtype) for _, text, _ in items]


def _tasks(items: Iterable[Item]) -> Iterator[list[Item]]:
    task: list[Item] = []
    size = 0
    for item in items:
        task.append(item)
        size += item[2]
        if size >= TASK_BYTES:
            yield task
            task, size = [], 0
    if task:
        yield task


def encoded(
    items: Iterable[Item],
    tok: Any,
    eot: list[int],
    allowed: Any,
    workers: int,
    dtype: Any = np.uint32,
) -> Iterator[tuple[Item, np.ndarray]]:
    """Each item with its token ids (`tok.encode(text, allowed) + eot`) as `dtype`, in item
    order."""
    if workers <= 1:
        encode = _encoder(tok, eot, allowed)
        for item in items:
            yield item, np.asarray(encode(item[1]), dtype=dtype)
        return
    init = (tok.to_json(), eot, allowed, dtype)
    # Bounded and in order (`tok.pool`): the input is read only as fast as it is used.
    for task, ids in ordered_map(_encode_task, _tasks(items), workers, _init, init):
        yield from zip(task, ids)


def new_counts(documents: bool) -> dict[str, dict[str, int]]:
    counts = {"bytes": 0, "tokens": 0, "scored_bytes": 0}
    return {s: {**counts, **({"documents": 0} if documents else {})} for s in SPLITS}


def write_items(
    pairs: Iterable[tuple[Item, np.ndarray]],
    writers: dict[str, ShardWriter],
    counts: dict[str, dict[str, int]],
    first_token_bytes: Callable[[int], int],
    progress_path: Path,
    progress_key: dict[str, Any],
    items_done: int = 0,
    on_item: Callable[[int], None] = lambda n: None,
) -> int:
    """Append each item's ids to its split's shards and count them; returns the items done.
    `progress.json` is written whenever a shard is complete (see the module docstring)."""
    shards_done = sum(len(w.done) for w in writers.values())
    for (split, _, n_bytes), ids in pairs:
        writers[split].append(ids)
        c = counts[split]
        if len(ids) and not c["tokens"]:
            c["scored_bytes"] -= first_token_bytes(int(ids[0]))  # the first token is not scored
        c["bytes"] += n_bytes
        c["scored_bytes"] += n_bytes
        c["tokens"] += len(ids)
        if "documents" in c:
            c["documents"] += 1
        items_done += 1
        on_item(n_bytes)
        now_done = sum(len(w.done) for w in writers.values())
        if now_done != shards_done:
            shards_done = now_done
            save_progress(progress_path, progress_key, items_done, writers, counts)
    return items_done


def save_progress(
    path: Path,
    key: dict[str, Any],
    items: int,
    writers: dict[str, ShardWriter],
    counts: dict[str, dict[str, int]],
) -> None:
    state = {
        "key": key,
        "items": items,
        "writers": {s: w.state() for s, w in writers.items()},
        "counts": counts,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state) + "\n", encoding="utf-8")
    os.replace(tmp, path)
