"""BPE training: learn merges from chunk counts, incrementally.

The obvious algorithm (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with
Subword Units") recounts every adjacent pair of the corpus for each merge: hours for an 8k
vocabulary. This one does the same merges, in the same order, with work proportional to what
each merge changes:

1. Pre-tokenize and count each distinct chunk once (`count_chunks`), in worker processes for a
   large corpus (`count_pieces`: each counts pieces of the text, the parent adds the counts up);
   a chunk becomes a word, a list of byte ids, with its count. Single-byte words hold no pairs
   and are dropped.
2. Keep the count of every adjacent pair over all words (weighted by word count) and an index
   pair -> words that contain it (a superset: entries go stale and are skipped when met). The
   initial counts and the index of the byte pairs are built with numpy, in bulk; the index of
   a pair made by a merge is built during that merge.
3. Take the best pair from a heap with lazy invalidation. A pair that already exists can only
   lose occurrences afterwards (merging (a, b) into z creates pairs that contain z, all new),
   so a heap entry is either exact or too high: a popped entry whose count is out of date is
   pushed back with its current count, and the first exact entry is the true best.
4. Merge only in the words the index names, adjusting the counts of the neighbouring pairs
   occurrence by occurrence, and push the new pairs (those containing z) once, at the end.

Tie-break (documented, and shared with the slow reference in the tests): the pair with the
highest count wins; among equal counts, the smallest pair ``(a, b)`` in lexicographic order of
ids. Pair counts count every adjacent position, so ``aaa`` holds ``(a, a)`` twice even though
only one of them can be merged (as minbpe's `get_stats` does). The result depends only on the
multiset of chunks, hence it is deterministic, whatever the number of processes counting them.
"""

from __future__ import annotations

import gc
import heapq
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from itertools import chain, pairwise

from tok.corpus import Piece, piece_size, piece_text
from tok.errors import TokenizerError
from tok.patterns import SplitPattern, resolve_pattern
from tok.pool import ordered_map

TASK_BYTES = 8 << 20  # pieces per worker task: about this many bytes (or characters)

# `tok.patterns.next_safe_cut`'s rule as a regex: a newline between two non-whitespace
# characters (the standard library's `\s` is `str.isspace`, as there; a test checks they agree).
# Written to start with the newline, which `re` then finds by a fast scan: 10x faster.
_SAFE_CUT = re.compile(r"\n(?=\S)(?<=\S\n)")
_RUN = 1024  # characters at least between the cuts of `ascii_runs`


def pair_counts(ids: list[int]) -> dict[tuple[int, int], int]:
    """Count each adjacent pair of `ids` (overlapping positions all count).

    >>> pair_counts([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    >>> pair_counts([7, 7, 7])
    {(7, 7): 2}
    """
    counts: dict[tuple[int, int], int] = {}
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of `pair` in `ids`, scanning left to right, by `new_id`.

    >>> merge_pair([1, 2, 3, 1, 2], (1, 2), 256)
    [256, 3, 256]
    >>> merge_pair([7, 7, 7], (7, 7), 256)
    [256, 7]
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def count_chunks(
    blocks: Iterable[str], pattern: SplitPattern, counts: Counter[str] | None = None
) -> Counter[str]:
    """How many times each chunk of the split pattern occurs in the text `blocks` (added to
    `counts` when given)."""
    counts = Counter() if counts is None else counts
    for block in blocks:
        if block.isascii() or not pattern.cuts_are_safe:
            counts.update(pattern.findall(block))
        else:
            for run in ascii_runs(block):
                counts.update(pattern.findall(run))
    return counts


def ascii_runs(text: str, run: int = _RUN) -> Iterator[str]:
    """`text` cut at safe newlines (at least `run` characters apart) into runs that are either
    all ASCII or not, in order.

    NOTE: most non-ASCII text in a code or web corpus is a few characters in a block of ASCII:
    an ASCII run is pre-tokenized by the standard library's `re`, 2.5 times faster than
    `regex` (`SplitPattern.findall`); the block as a whole would go to `regex`. The cuts are
    chunk boundaries of the named patterns, so the chunks are those of the whole text.

    >>> list(ascii_runs("ab\\ncd\\nxé\\nfg", run=1))
    ['ab\\ncd\\n', 'xé\\n', 'fg']
    """
    runs: list[str] = []
    kind = None
    start = 0
    while start < len(text):
        m = _SAFE_CUT.search(text, start + run)
        end = m.end() if m else len(text)
        part = text[start:end]
        if part.isascii() is not kind and runs:
            yield "".join(runs)
            runs = []
        kind = part.isascii()
        runs.append(part)
        start = end
    if runs:
        yield "".join(runs)


def count_pieces(
    pieces: Iterable[Piece],
    pattern: SplitPattern,
    *,
    workers: int = 1,
    task_bytes: int | None = None,
    progress: bool = False,
) -> Counter[str]:
    """How many times each chunk occurs in the text `pieces` (from `tok.corpus.iter_pieces`),
    counted in up to `workers` processes when there is more than one task of `task_bytes`
    (default `TASK_BYTES`) of text; the counts are the same either way.

    A file's piece goes to a worker as its path and byte range, which the worker reads itself;
    at most two tasks per worker wait at a time, so memory stays bounded however large the
    input is.
    """
    tasks = _tasks(pieces, TASK_BYTES if task_bytes is None else task_bytes)
    first = next(tasks, None)
    second = next(tasks, None) if workers > 1 else None
    bar = _progress_bar(None, "bpe count", "B") if progress else None
    counts: Counter[str] = Counter()
    if second is None:  # one task, or one worker: in this process
        for task in chain([first], tasks) if first is not None else ():
            count_chunks(map(piece_text, task), pattern, counts)
            if bar is not None:
                bar.update(sum(map(piece_size, task)))
    else:
        _count_in_pool([first, second], tasks, pattern, workers, counts, bar)
    if bar is not None:
        bar.close()
    return counts


def _tasks(pieces: Iterable[Piece], task_bytes: int) -> Iterator[list[Piece]]:
    """The pieces grouped, in order, into lists of about `task_bytes` (at least one piece)."""
    task: list[Piece] = []
    size = 0
    for piece in pieces:
        task.append(piece)
        size += piece_size(piece)
        if size >= task_bytes:
            yield task
            task, size = [], 0
    if task:
        yield task


def _count_in_pool(head, tasks, pattern, workers, counts, bar) -> None:
    """Count the tasks `head` then `tasks` in a process pool, adding the results to `counts`
    in the order of the tasks (so that the first failing task is the one reported)."""
    pooled = ordered_map(
        _count_task, chain(head, tasks), workers, _init_worker, initargs=(pattern.source,)
    )
    for task, counted in pooled:
        counts.update(counted)
        if bar is not None:
            bar.update(sum(map(piece_size, task)))


_worker_pattern: SplitPattern | None = None  # the worker process's split pattern


def _init_worker(source: str) -> None:
    global _worker_pattern
    _worker_pattern = resolve_pattern(source)


def _count_task(task: list[Piece]) -> Counter[str]:
    assert _worker_pattern is not None
    return count_chunks(map(piece_text, task), _worker_pattern)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small containers.

    NOTE: training and the encoder's caches allocate hundreds of thousands of lists that
    never form cycles; each allocation burst triggers collections that walk every live object,
    which costs 10-15% of the run for nothing. Reference counting still frees memory.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@paused_gc()
def learn_merges(
    chunk_counts: Mapping[str, int],
    num_merges: int,
    *,
    min_frequency: int = 1,
    progress: bool = False,
) -> list[tuple[int, int]]:
    """Learn up to `num_merges` merges from `chunk_counts` (chunk -> count).

    Merge ``i`` creates token ``256 + i``. Training stops early when no pair occurs at least
    `min_frequency` times. Exactly the merges of the obvious algorithm (see the module docstring
    for the algorithm and the tie-break).
    """
    if num_merges <= 0:
        return []
    # Pairs are ints a * K + b (K exceeds every id), so that integer order is the (a, b) order;
    # heap entries are the ints -count * K^2 + pair, so that the smallest entry is the best pair.
    K = 256 + num_merges
    K2 = K * K
    words, counts, pc, byte_index = _initial_pairs(chunk_counts, K)
    heap = [-c * K2 + key for key, c in pc.items()]
    heapq.heapify(heap)
    where: dict[int, list[int]] = {}  # pair holding a merged token -> indices of its words

    merges: list[tuple[int, int]] = []
    bar = _progress_bar(num_merges, "bpe merges", "merge") if progress else None
    pop, push = heapq.heappop, heapq.heappush
    z = 256
    end = 256 + num_merges
    while z < end and heap:
        entry = pop(heap)
        neg, key = divmod(entry, K2)
        count = pc[key]
        if count != -neg:  # stale entry: the pair lost occurrences since it was pushed
            if count > 0:
                push(heap, -count * K2 + key)
            continue
        if count < min_frequency:
            break
        a, b = divmod(key, K)
        merges.append((a, b))
        zK, bK = z * K, b * K
        twin = a == b
        # The pairs made by this merge (all hold z): count and words, folded in at the end.
        new_counts: dict[int, int] = {}
        new_where: dict[int, list[int]] = {}
        count_of, words_of = new_counts.get, new_where.get
        # NOTE: the hot loop of training. Each occurrence of (a, b) at position j (in the word
        # as merged so far) turns (x, a) into (x, z) on its left and (b, y) into (z, y) on its
        # right; consecutive occurrences ("abab") then net out to (z, z) by themselves. A word
        # is listed once per pair (its appends to a list all come while it is processed).
        for i in where.pop(key) if key in where else byte_index(key):
            word = words[i]
            left = word.count(a)
            if not left:
                continue
            n = counts[i]
            j = 0
            while left:
                j = word.index(a, j)
                left -= 1
                if j + 1 < len(word) and word[j + 1] == b:
                    if j:
                        x = word[j - 1]
                        if x == z:  # (z, a) was made by the occurrence just before
                            new_counts[zK + a] -= n
                        else:
                            pc[x * K + a] -= n
                        new = x * K + z
                        new_counts[new] = count_of(new, 0) + n
                        held = words_of(new)
                        if held is None:
                            new_where[new] = [i]
                        elif held[-1] != i:
                            held.append(i)
                    if j + 2 < len(word):
                        y = word[j + 2]
                        pc[bK + y] -= n
                        new = zK + y
                        new_counts[new] = count_of(new, 0) + n
                        held = words_of(new)
                        if held is None:
                            new_where[new] = [i]
                        elif held[-1] != i:
                            held.append(i)
                    word[j : j + 2] = (z,)
                    if twin:  # the merged b was also one of the a's counted
                        left -= 1
                j += 1
        del pc[key]
        pc.update(new_counts)
        where.update(new_where)
        for new, c in new_counts.items():
            if c > 0:
                push(heap, -c * K2 + new)
        z += 1
        if bar is not None and not z & 63:
            bar.update(64)
    if bar is not None:
        bar.update(len(merges) - bar.n)
        bar.close()
    return merges


def _initial_pairs(chunk_counts: Mapping[str, int], K: int):
    """The words (byte ids of the chunks of two bytes or more) and their counts, the count of
    each adjacent pair (as ``a * K + b``), and ``index(pair)``: the words that hold a byte pair,
    each once. Built with numpy: one pass in Python over the chunks, none over the pairs."""
    import numpy as np

    encoded: list[bytes] = []
    counts: list[int] = []
    for chunk, n in chunk_counts.items():
        try:
            data = chunk.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"the training text contains a lone surrogate (U+{ord(chunk[e.start]):04X}), "
                "which is not valid UTF-8"
            ) from None
        if len(data) > 1:
            encoded.append(data)
            counts.append(n)
    words = [list(data) for data in encoded]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    flat = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int64)
    del encoded
    keys = flat[:-1] * K + flat[1:]  # every adjacent position, across words too
    owner = np.repeat(np.arange(len(words), dtype=np.int64), lengths)[:-1]
    inside = np.ones(len(keys), dtype=bool)
    inside[np.cumsum(lengths)[:-1] - 1] = False  # the last byte of a word and the next's first
    keys, owner = keys[inside], owner[inside]
    order = np.argsort(keys, kind="stable")  # stable: each pair's words in increasing order
    keys, owner = keys[order], owner[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else keys
    weights = np.asarray(counts, dtype=np.int64)[owner]
    pair_keys = keys[starts].tolist()
    pc = dict(zip(pair_keys, np.add.reduceat(weights, starts).tolist() if len(keys) else ()))
    once = np.r_[True, (keys[1:] != keys[:-1]) | (owner[1:] != owner[:-1])] if len(keys) else keys
    keys, owner = keys[once], owner[once]
    bounds = np.searchsorted(keys, [*pair_keys, K * K]).tolist()
    span = dict(zip(pair_keys, pairwise(bounds)))

    def index(pair: int) -> list[int]:
        lo, hi = span.pop(pair)
        return owner[lo:hi].tolist()

    return words, counts, pc, index


def _progress_bar(total: int | None, desc: str, unit: str):
    from tqdm import tqdm

    scale = unit == "B"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, mininterval=0.5, leave=False)
