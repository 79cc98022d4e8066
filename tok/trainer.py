"""BPE training: learn merges from chunk counts, incrementally.

The obvious algorithm (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with
Subword Units") recounts every adjacent pair of the corpus for each merge: hours for an 8k
vocabulary. This one does the same merges, in the same order, with work proportional to what
each merge changes:

1. Pre-tokenize and count each distinct chunk once (`count_chunks`); a chunk becomes a word,
   a list of byte ids, with its count. Single-byte words hold no pairs and are dropped.
2. Keep the count of every adjacent pair over all words (weighted by word count) and an index
   pair -> words that contain it (a superset: entries go stale and are skipped when met).
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
multiset of chunks, hence it is deterministic.
"""

from __future__ import annotations

import gc
import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from itertools import pairwise

from tok.errors import TokenizerError
from tok.patterns import SplitPattern


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


def count_chunks(blocks: Iterable[str], pattern: SplitPattern) -> Counter[str]:
    """How many times each chunk of the split pattern occurs in the text `blocks`."""
    counts: Counter[str] = Counter()
    for block in blocks:
        counts.update(pattern.findall(block))
    return counts


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
    words: list[list[int]] = []
    counts: list[int] = []
    for chunk, n in chunk_counts.items():
        try:
            word = list(chunk.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"the training text contains a lone surrogate (U+{ord(chunk[e.start]):04X}), "
                "which is not valid UTF-8"
            ) from None
        if len(word) > 1:
            words.append(word)
            counts.append(n)

    # Pairs are ints a * K + b (K exceeds every id), so that integer order is the (a, b) order;
    # heap entries are the ints -count * K^2 + pair, so that the smallest entry is the best pair.
    K = 256 + num_merges
    K2 = K * K
    pc: defaultdict[int, int] = defaultdict(int)  # pair -> count
    where: defaultdict[int, set[int]] = defaultdict(set)  # pair -> indices of words holding it
    for i, word in enumerate(words):
        n = counts[i]
        x = word[0]
        for y in word[1:]:
            key = x * K + y
            pc[key] += n
            where[key].add(i)
            x = y
    heap = [-c * K2 + key for key, c in pc.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    bar = _progress_bar(num_merges) if progress else None
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
        new_pairs: set[int] = set()
        add_new = new_pairs.add
        # NOTE: the hot loop of training. Each occurrence of (a, b) at position j (in the word
        # as merged so far) turns (x, a) into (x, z) on its left and (b, y) into (z, y) on its
        # right; consecutive occurrences ("abab") then net out to (z, z) by themselves.
        for i in where.pop(key):
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
                        pc[x * K + a] -= n
                        new = x * K + z
                        pc[new] += n
                        where[new].add(i)
                        add_new(new)
                    if j + 2 < len(word):
                        y = word[j + 2]
                        pc[bK + y] -= n
                        new = zK + y
                        pc[new] += n
                        where[new].add(i)
                        add_new(new)
                    word[j : j + 2] = (z,)
                    if twin:  # the merged b was also one of the a's counted
                        left -= 1
                j += 1
        del pc[key]
        for new in new_pairs:
            c = pc[new]
            if c > 0:
                push(heap, -c * K2 + new)
        z += 1
        if bar is not None and not z & 63:
            bar.update(64)
    if bar is not None:
        bar.update(len(merges) - bar.n)
        bar.close()
    return merges


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="bpe merges", unit="merge", mininterval=0.5, leave=False)
