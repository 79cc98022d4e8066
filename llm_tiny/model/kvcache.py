"""The KV cache: keys and values of the positions a model has already seen, per layer, so
that generating one more token costs one position of work instead of the whole prefix.

`KVCache.length` is how many positions the cache holds: an int, the same for every row, or a
(B,) tensor when each row holds its own number (a server decoding many requests at once lets
rows join with `append` and leave with `reorder`; `Start` is the type of such a position).
"""

from __future__ import annotations

import torch
from torch import Tensor

from llm_tiny.config import ModelConfig

# Where new tokens start: one position for every row, or one per row (B,).
Start = int | Tensor


def row_positions(start: Tensor, T: int) -> Tensor:
    """Positions (B, T) of T new tokens per row after start (B,) cached ones: [2, 5], 2 ->
    [[2, 3], [5, 6]]."""
    return start[:, None] + torch.arange(T, device=start.device)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, nkv, S, hs) -> (B, nkv * n_rep, S, hs): each key/value head serves n_rep query heads."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


class LayerCache:
    """Keys and values of one layer for the positions seen so far, preallocated to block_size."""

    def __init__(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> None:
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (B, nkv, block_size, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def store(self, k: Tensor, v: Tensor, start: Start) -> tuple[Tensor, Tensor]:
        """Write k, v (B, nkv, T, hs) at positions start.. and return all keys/values so far
        (with per-row starts: up to the longest row; the per-row mask hides the rest)."""
        if isinstance(start, Tensor):
            pos = row_positions(start, k.size(2))  # (B, T)
            rows = torch.arange(k.size(0), device=k.device)[:, None]  # (B, 1)
            self.k[rows, :, pos] = k.transpose(1, 2)  # indexed view is (B, T, nkv, hs)
            self.v[rows, :, pos] = v.transpose(1, 2)
            end = int(pos[:, -1].max()) + 1
            return self.k[:, :, :end], self.v[:, :, :end]
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, nkv, start + T, hs)


class KVCache:
    """Per-layer key/value caches plus how many positions they hold (`length`): an int, or a
    (B,) tensor when each row holds its own number (`append` and `reorder` let rows join and
    leave, as a server's requests do)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, cfg.kv_heads, cfg.block_size, cfg.head_dim)
        self.layers = [LayerCache(shape, device, dtype) for _ in range(cfg.n_layer)]
        self.length = 0

    def reset(self) -> None:
        """Forget every position (the buffers are reused)."""
        self.length = 0

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (B',): beam search follows the beams it keeps."""
        for layer in self.layers:
            layer.k = layer.k.index_select(0, index)
            layer.v = layer.v.index_select(0, index)
        if isinstance(self.length, Tensor):
            self.length = self.length.index_select(0, index)

    def append(self, other: KVCache) -> None:
        """Add the rows of `other` after this cache's rows; lengths become per row (B,)."""
        self.length = torch.cat([self.row_lengths(), other.row_lengths()])
        for mine, theirs in zip(self.layers, other.layers):
            mine.k, mine.v = torch.cat([mine.k, theirs.k]), torch.cat([mine.v, theirs.v])

    def take(self, i: int) -> KVCache:
        """A one-row copy of row `i` (its own length, an int): what a conversation keeps
        between turns so that the next turn only computes its new tokens."""
        out = object.__new__(KVCache)
        index = torch.tensor([i], device=self.layers[0].k.device)
        out.layers = []
        for layer in self.layers:
            copy = object.__new__(LayerCache)
            copy.k, copy.v = layer.k.index_select(0, index), layer.v.index_select(0, index)
            out.layers.append(copy)
        out.length = int(self.row_lengths()[i])
        return out

    def row_lengths(self) -> Tensor:
        """Positions held per row (B,)."""
        if isinstance(self.length, Tensor):
            return self.length
        k = self.layers[0].k
        return torch.full((k.size(0),), self.length, dtype=torch.long, device=k.device)
