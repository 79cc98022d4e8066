"""The one process pool of the project: `ordered_map`, a map over worker processes that keeps
the input's order and holds only a few tasks in flight.

Three things use it: counting chunks to train a tokenizer (`tok.trainer`), encoding a file in
parallel (`tok.bpe.workers`) and tokenizing a stream of documents into shards
(`llm_tiny.data.pipeline`). Each needs the same three properties: results in input order (so the
output does not depend on the number of workers, and the first failing task is the one
reported), bounded memory (the input is read only as fast as results are used), and workers
that run only this project's code whatever the caller's main module does.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
IN_FLIGHT_PER_WORKER = 2  # tasks queued per worker: enough to keep each busy, few to hold


def ordered_map(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[tuple[T, R]]:
    """Yield ``(task, fn(task))`` for each task, in order, computed in `workers` processes
    (each set up once by ``initializer(*initargs)``). `fn` and `initializer` must be module-level
    functions, so that a worker can import them.

    At most ``IN_FLIGHT_PER_WORKER * workers`` tasks are submitted ahead of the one being
    yielded. An exception in a task is raised here, when its turn comes; leaving the loop early
    (an error, `break`, a closed generator) cancels the tasks not yet started.
    """
    # NOTE: fork where there is one. "spawn" re-runs the caller's main module in every worker,
    # which breaks (or repeats the work of) any script without an `if __name__ == "__main__"`
    # guard; the workers only run this project's code, which takes no locks a fork could break.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )
    pending: deque[tuple[T, Future]] = deque()
    try:
        for task in tasks:
            pending.append((task, pool.submit(fn, task)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def _start_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """A worker's set-up: die with the parent, then the caller's initializer.

    A worker whose parent is killed (`kill -9`, the out-of-memory killer) would otherwise live
    on, holding its memory. On Linux the kernel sends it SIGKILL when the parent dies
    (`prctl(PR_SET_PDEATHSIG)`); elsewhere a thread notices that the parent changed.
    """
    if not _die_with_parent():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the worker could ask
        os._exit(1)
    if initializer is not None:
        initializer(*initargs)


def _die_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where that is unknown."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, every: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)
