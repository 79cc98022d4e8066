"""Batches: prepared token files -> (x, y) batches for training and evaluation.

`open_split` gives the batch source of a prepared split: a `TokenWindows` (data.kind `text`),
an `ExampleBatches` (data.kind `examples`) or a `ChatBatches` (data.kind `chat`). All have the
same interface: `get_batch(step,
micro)`, `iter_eval_batches(...)`, `eval_targets(...)`, `state_dict()` / `load_state_dict()`.

The whole global batch of optimizer step `step` (`micro_batches x batch_size` windows, where
`micro_batches` = processes x accumulation steps) is drawn from a generator seeded with
`(seed, step)`, and micro-batch `micro` is its slice `[micro * batch_size, (micro + 1) *
batch_size)`. It depends on nothing else. Consequences:
- Resume is exact: the sampler's state is only its seed, and the step comes from the
  checkpoint. No generator state has to be replayed.
- DDP equals gradient accumulation equals one big batch: rank r's micro-step m is global
  micro-batch `r * A + m`, so W ranks x A accumulation steps x batch B see exactly the windows
  of one process with W * A steps of B, or one step of W * A * B (tests check this).

Text windows are `block_size + 1` tokens from anywhere in the split; y is x shifted by one.
An example is padded to `block_size`; the loss covers its answer tokens and the newline, which
teaches the model to stop, while the prompt and the padding have target -1. A conversation is
the same with its mask: only the assistant's tokens and their end-of-turn are targets (see
`ChatBatches` for the context rule and packing). Evaluation walks a split in order instead
(`iter_eval_batches`; for text, the windows of `eval_windows`; every conversation alone), all of
it or a fixed subset of its batches spread over it (`spread`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llm_tiny.data.prepare import PreparedData
from llm_tiny.data.shards import TokenStream
from llm_tiny.errors import UserError

if TYPE_CHECKING:
    from llm_tiny.config import RunConfig


def step_draws(seed: int, step: int, n: int, high: int) -> np.ndarray:
    """The `n` random integers in [0, high) of optimizer step `step` (see the module doc).

    A draw of n values starts with the draw of fewer, so slicing one global batch gives the
    same windows whatever the split into micro-batches.
    """
    return np.random.default_rng([seed, step]).integers(0, high, size=n)


def _to_device(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(arr)
    if device.type == "cuda":
        # Pinned (page-locked) host memory lets the copy run asynchronously with compute.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ----------------------------------------------------------------------------- evaluation windows


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


def spread(n: int, k: int | None) -> list[int]:
    """`k` of the indices `0 .. n-1`, evenly spaced from the first to the last (all of them
    when `k` is None or at least `n`): the evaluation subset samples the whole split, not only
    its first documents.

    >>> spread(10, 3), spread(4, None), spread(3, 5)
    ([0, 4, 9], [0, 1, 2, 3], [0, 1, 2])
    """
    if k is None or k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


# ----------------------------------------------------------------------------- batch sources


class _Source:
    """What both batch sources share: the split's file, which rows each micro-batch gets and
    the order evaluation walks the split in. A subclass reads its file in `_open` (a split unfit
    for block_size is a UserError); its `_eval_rows(stride)` are what evaluation walks, in order,
    with the number of targets each scores, and `_batch(rows)` makes x, y of some of them.

    `micro_batches` is the number of micro-batches in one optimizer step over all processes.
    """

    kind = ""

    def __init__(
        self,
        tokens: TokenStream | InMemory,
        block_size: int,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        micro_batches: int = 1,
        *,
        name: str = "split",
    ) -> None:
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.tokens = tokens
        self.name = name
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.micro_batches = micro_batches
        self._cached: tuple[int, np.ndarray] | None = None
        self._open()

    def _rows(self, step: int, micro: int, high: int) -> np.ndarray:
        if not 0 <= micro < self.micro_batches:
            raise ValueError(f"micro must be in [0, {self.micro_batches}), got {micro}")
        if self._cached is None or self._cached[0] != step:
            draws = step_draws(self.seed, step, self.micro_batches * self.batch_size, high)
            self._cached = (step, draws)
        B = self.batch_size
        return self._cached[1][micro * B : (micro + 1) * B]

    def eval_batches(
        self,
        batch_size: int,
        max_batches: int | None = None,
        stride: int | None = None,
        rest: bool = False,
    ) -> list[int]:
        """The indices of the evaluation batches: all of them, or `max_batches` spread evenly
        over the split (`spread`), the same ones every time; `rest=True`: the others."""
        n_batches = math.ceil(len(self._eval_rows(stride)[0]) / batch_size)
        chosen = spread(n_batches, max_batches)
        if not rest:
            return chosen
        taken = set(chosen)
        return [i for i in range(n_batches) if i not in taken]

    def iter_eval_batches(
        self,
        batch_size: int,
        max_batches: int | None = None,
        stride: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        *,
        rest: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `eval_batches`, in order; with several ranks, rank r takes the r-th,
        (r + W)-th, ... of them (`stride`: see `eval_windows`)."""
        rows = self._eval_rows(stride)[0]
        chosen = self.eval_batches(batch_size, max_batches, stride, rest)
        for i in chosen[rank::world_size]:
            x, y = self._batch(rows[i * batch_size : (i + 1) * batch_size])
            yield _to_device(x, self.device), _to_device(y, self.device)

    def eval_targets(
        self,
        batch_size: int,
        max_batches: int | None = None,
        stride: int | None = None,
        rest: bool = False,
    ) -> int:
        """How many targets `iter_eval_batches` with these arguments scores (all ranks)."""
        targets = self._eval_rows(stride)[1]
        chosen = self.eval_batches(batch_size, max_batches, stride, rest)
        return int(sum(targets[i * batch_size : (i + 1) * batch_size].sum() for i in chosen))

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


class InMemory:
    """Token ids already in memory, read like a `TokenStream`."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.array = tokens

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, s: slice) -> np.ndarray:
        return self.array[s]

    def windows(self, starts: np.ndarray, n: int) -> np.ndarray:
        return self.array[np.asarray(starts)[:, None] + np.arange(n)].astype(np.int64)


class TokenWindows(_Source):
    """data.kind `text`: random windows of `block_size + 1` tokens of a split's token stream
    (its shards, read through memory maps; a window may span two shards)."""

    kind = "text"

    def _open(self) -> None:
        self.n_tokens = len(self.tokens)
        if self.n_tokens < self.block_size + 1:
            raise UserError(
                f"the {self.name} has {self.n_tokens} tokens, fewer "
                f"than model.block_size + 1 = {self.block_size + 1}; use more text, another "
                "data.val_fraction or a smaller model.block_size"
            )

    def get_batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape (batch_size, block_size): y is x shifted left by one token."""
        T = self.block_size
        starts = self._rows(step, micro, self.n_tokens - T)
        windows = self.tokens.windows(starts, T + 1)  # (B, T+1)
        return _to_device(windows[:, :-1], self.device), _to_device(windows[:, 1:], self.device)

    def _eval_rows(self, stride: int | None) -> tuple[Sequence[Any], np.ndarray]:
        windows = eval_windows(self.n_tokens, self.block_size, stride)
        return windows, np.array([e - b - first for b, e, first in windows], dtype=np.int64)

    def _batch(self, rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        # Windows are copied out of the shards one batch at a time: memory stays bounded.
        width = max(e - b for b, e, _ in rows)
        x = np.zeros((len(rows), width), dtype=np.int64)
        y = np.full((len(rows), width), -1, dtype=np.int64)
        for row, (b, e, first) in enumerate(rows):
            ids = self.tokens[b : e + 1]
            x[row, : e - b] = ids[:-1]
            y[row, first : e - b] = ids[1 + first :]
        return x, y


class TokenArray(TokenWindows):
    """Token ids already in memory (`llm_tiny eval --input FILE`) instead of a split's shards."""

    def __init__(self, tokens: np.ndarray, block_size: int, device: torch.device | str) -> None:
        super().__init__(InMemory(tokens), block_size, 1, 0, device)

    def _open(self) -> None:  # any length: evaluation scores what there is
        self.n_tokens = len(self.tokens)


class ExampleBatches(_Source):
    """data.kind `examples`: random examples, each padded to `block_size`, prompt masked."""

    kind = "examples"

    def __init__(self, tokens: TokenStream | InMemory, index: np.ndarray, *args, **kw) -> None:
        self.index = index  # per example: start, prompt tokens, total tokens
        super().__init__(tokens, *args, **kw)

    def _open(self) -> None:
        self.tokens = self.tokens[0 : len(self.tokens)].astype(np.int64)  # examples are small
        longest = int(self.index[:, 2].max()) if len(self.index) else 0
        if longest > self.block_size + 1:
            row = int(self.index[:, 2].argmax())
            raise UserError(
                f"{self.name}: example {row + 1} has {longest} tokens, more than "
                f"model.block_size + 1 = {self.block_size + 1}; raise model.block_size"
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

    def _eval_rows(self, stride: int | None) -> tuple[Sequence[Any], np.ndarray]:
        # Every example once, in file order (`stride` has no meaning here and is ignored).
        return np.arange(len(self.index)), self.index[:, 2] - self.index[:, 1]


def open_split(
    data: PreparedData,
    split: str,
    cfg: RunConfig,
    device: torch.device | str = "cpu",
    *,
    micro_batches: int = 1,
    batch_size: int | None = None,
) -> TokenWindows | ExampleBatches | ChatBatches:
    """The batch source of a prepared split ("train" or "val"): `cfg.model.block_size` tokens
    per row, `batch_size` rows (default `cfg.train.batch_size`), seeded with `cfg.train.seed`;
    `micro_batches` is the number of micro-batches in one optimizer step over all processes."""
    B = cfg.train.batch_size if batch_size is None else batch_size
    args = (cfg.model.block_size, B, cfg.train.seed, device, micro_batches)
    name = f"{split} split ({data.data_dir})"
    if data.meta["kind"] == "text":
        return TokenWindows(data.tokens(split), *args, name=name)
    index = np.load(data.data_dir / f"{split}.idx.npy", allow_pickle=False)
    if data.meta["kind"] == "chat":
        mask = np.load(data.data_dir / f"{split}.mask.npy", allow_pickle=False)
        return ChatBatches(
            data.tokens(split), index, mask, *args, pack=cfg.data.pack, name=name
        )  # fmt: skip
    return ExampleBatches(data.tokens(split), index, *args, name=name)


def pack_rows(lengths: Sequence[int], capacity: int) -> list[tuple[int, ...]]:
    """Whole items, in order, into rows of at most `capacity` tokens: an item joins the current
    row while it fits, else starts the next one (an item longer than `capacity` is a row alone).

    >>> pack_rows([30, 50, 60, 20, 200], 128)
    [(0, 1), (2, 3), (4,)]
    """
    rows: list[tuple[int, ...]] = []
    row: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if row and used + n > capacity:
            rows.append(tuple(row))
            row, used = [], 0
        row.append(i)
        used += n
    return rows + ([tuple(row)] if row else [])


class ChatBatches(ExampleBatches):
    """data.kind `chat`: conversations, loss on the tokens their mask marks (the assistant's).

    Context rule: a conversation longer than `block_size + 1` tokens keeps its first
    `block_size + 1` (the turns after are not trained on; `truncated` counts them). With
    `pack`, whole conversations share a row (`pack_rows`); attention is causal across the
    boundary, so a conversation may attend to the one before it. That keeps the one attention
    kernel; each conversation still starts with its own role token and the loss never scores a
    prediction of one (the mask), and at inference a conversation starts a fresh context, so
    packing trades exactness for throughput: off by default. Evaluation scores every
    conversation alone, packed or not, so the validation loss is the assistant-token loss.
    """

    kind = "chat"

    def __init__(self, tokens, index: np.ndarray, mask: np.ndarray, *args, pack=False, **kw):
        self.mask = mask.astype(bool)
        self.pack = pack
        super().__init__(tokens, index, *args, **kw)

    def _open(self) -> None:
        self.tokens = self.tokens[0 : len(self.tokens)].astype(np.int64)  # conversations: small
        T1 = self.block_size + 1
        self.truncated = int((self.index[:, 2] > T1).sum())
        lengths = np.minimum(self.index[:, 2], T1)
        singles = [(i,) for i in range(len(self.index))]
        self.groups = pack_rows(lengths.tolist(), T1) if self.pack else singles

    def conversation(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Conversation i's ids and mask, cut to the context (`block_size + 1` tokens)."""
        start, _, n = self.index[i]
        n = min(int(n), self.block_size + 1)
        return self.tokens[start : start + n], self.mask[start : start + n]

    def _batch(self, rows: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
        T = self.block_size
        x = np.zeros((len(rows), T), dtype=np.int64)
        y = np.full((len(rows), T), -1, dtype=np.int64)
        for r, group in enumerate(rows):
            parts = [self.conversation(i) for i in group]
            ids = np.concatenate([p[0] for p in parts])[: T + 1]
            mask = np.concatenate([p[1] for p in parts])[: T + 1]
            n = len(ids)
            x[r, : n - 1] = ids[:-1]
            # Position j predicts ids[j + 1], a target where the mask marks it.
            y[r, : n - 1] = np.where(mask[1:], ids[1:], -1)
        return x, y

    def get_batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.groups[r] for r in self._rows(step, micro, len(self.groups))]
        x, y = self._batch(rows)
        return _to_device(x, self.device), _to_device(y, self.device)

    def _eval_rows(self, stride: int | None) -> tuple[Sequence[Any], np.ndarray]:
        rows = [(i,) for i in range(len(self.index))]
        return rows, np.array([self.conversation(i)[1][1:].sum() for (i,) in rows], dtype=np.int64)
