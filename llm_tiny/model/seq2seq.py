"""TinySeq2Seq: an encoder-decoder transformer (the original Transformer, Vaswani et al. 2017;
T5, Raffel et al. 2020) built from TinyGPT's parts.

The encoder (`llm_tiny.model.encoder.Encoder`) reads the source with bidirectional attention.
The decoder writes the target one token at a time: each `DecoderBlock` is TinyGPT's pre-norm
block (causal self-attention, MLP) with a cross-attention sub-layer between them, whose queries
come from the decoder and whose keys and values come from the encoder's output:

    x = x + self_attn(norm1(x))              causal: the target so far
    x = x + cross_attn(norm_x(x), memory)    every source position (padding hidden)
    x = x + mlp(norm2(x))

As in T5 the token embedding is shared by the encoder, the decoder and (with `tie_weights`)
the output head; cross-attention has no positions (where a source token sits is already in its
encoding). `n_layer` blocks in each stack.

Batches (`llm_tiny.data.encoded.Seq2SeqBatches`) carry both sides in one tensor so that the
training loop's `model(x, y)` serves this model too: x (B, block_size + D) is the source padded
to `block_size` (`cfg.pad_id`) then the decoder's input, `[START] a_1 ... a_{D-1}`; y (B, D) is
the target a_1 ... a_D (-1 past its end).

Decoding (`greedy`) encodes the source once, projects its keys and values for every
cross-attention layer once, and keeps the decoder's own keys and values in a `KVCache`: each
new token costs one position of work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm_tiny.config import ModelConfig
from llm_tiny.model.attention import ATTENTION
from llm_tiny.model.encoder import Encoder, check_ids, init_weights, num_params
from llm_tiny.model.kvcache import KVCache, LayerCache, Start, repeat_kv
from llm_tiny.model.layers import Linear
from llm_tiny.model.model import NORMS, POSITIONS, Block, Positions, TinyGPT

# One cross-attention layer's view of the source: keys, values (B, nkv, S, hs) and keep (B, S).
Memory = tuple[Tensor, Tensor, Tensor]


class CrossAttention(nn.Module):
    """Multi-head (or grouped-query) attention from the decoder's positions (queries) to the
    encoder's output (keys, values)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q = Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=cfg.bias)
        self.kv = Linear(cfg.n_embd, 2 * cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # a residual projection
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.attend = ATTENTION[cfg.attn_impl]

    def memory(self, h: Tensor, keep: Tensor) -> Memory:
        """Keys and values (B, nkv, S, hs) of the encoding h (B, S, C): computed once per source."""
        B, S, _ = h.shape
        k, v = self.kv(h).view(B, S, 2, self.n_kv_head, self.head_dim).unbind(2)  # (B, S, nkv, hs)
        return k.transpose(1, 2), v.transpose(1, 2), keep

    def forward(self, x: Tensor, memory: Memory) -> Tensor:
        B, T, C = x.shape
        k, v, keep = memory
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        n_rep = self.n_head // self.n_kv_head
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, nh, S, hs)
        mask = keep[:, None, None, :].expand(B, 1, T, keep.size(1))  # (B, 1, T, S)
        y = self.attend(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class DecoderBlock(Block):
    """TinyGPT's pre-norm block with cross-attention between self-attention and the MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)  # causal self-attention, the MLP, their norms
        self.norm_x = NORMS[cfg.norm](cfg)
        self.cross = CrossAttention(cfg)

    def forward(  # type: ignore[override]
        self, x: Tensor, pos: Positions, start: Start, cache: LayerCache | None, memory: Memory
    ) -> Tensor:
        x = x + self.attn(self.norm1(x), pos, start, cache)  # (B, T, C)
        x = x + self.cross(self.norm_x(x), memory)
        return x + self.mlp(self.norm2(x))


class TinySeq2Seq(nn.Module):
    """The encoder, `n_layer` decoder blocks, a final norm and the output head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is None; set it (e.g. from the tokenizer)")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.pos = POSITIONS[cfg.pos_emb](cfg)  # the decoder's own positions
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder_blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layer))
        self.norm_f = NORMS[cfg.norm](cfg)
        self.lm_head = None if cfg.tie_weights else Linear(cfg.n_embd, cfg.vocab_size, False)
        init_weights(self, cfg.n_layer)

    def memory(self, src: Tensor) -> list[Memory]:
        """Encode src (B, S) and give each decoder block its keys and values of it."""
        check_ids(src, self.config, "the source")
        h, keep = self.encoder(src)  # (B, S, C), (B, S)
        return [block.cross.memory(h, keep) for block in self.decoder_blocks]

    def decode(self, tgt: Tensor, memory: list[Memory], cache: KVCache | None = None) -> Tensor:
        """Logits (B, T, V) for decoder inputs tgt (B, T), after `cache.length` cached ones."""
        check_ids(tgt, self.config, "the decoder input")
        start = 0 if cache is None else cache.length
        x = self.drop(self.pos.embed(self.encoder.wte(tgt), start))  # (B, T, C)
        caches = [None] * len(self.decoder_blocks) if cache is None else cache.layers
        for block, layer_cache, mem in zip(self.decoder_blocks, caches, memory):
            x = block(x, self.pos, start, layer_cache, mem)
        if cache is not None:
            cache.length += tgt.size(1)
        h = self.norm_f(x)
        if self.lm_head is not None:
            return self.lm_head(h)
        return F.linear(h, self.encoder.wte.weight[: self.config.vocab_size])  # tied

    def forward(
        self, x: Tensor, targets: Tensor | None = None, label_smoothing: float = 0.0
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, block_size + D): the source, then the decoder's input. Logits (B, D, V) and,
        with `targets` (B, D), the mean cross-entropy (-1 ignored)."""
        S = self.config.block_size
        if x.dim() != 2 or x.size(1) <= S:
            raise ValueError(f"x must be (batch, {S} + decoder length), got {tuple(x.shape)}")
        logits = self.decode(x[:, S:], self.memory(x[:, :S]))
        if targets is None:
            return logits, None
        if targets.shape != logits.shape[:2]:
            raise ValueError(f"targets must be {tuple(logits.shape[:2])}, got {targets.shape}")
        flat = logits.flatten(0, 1), targets.flatten()
        return logits, F.cross_entropy(*flat, ignore_index=-1, label_smoothing=label_smoothing)

    def new_cache(self, batch_size: int, device: torch.device | None = None) -> KVCache:
        """An empty cache for the decoder's self-attention (its `n_layer` blocks)."""
        p = self.encoder.wte.weight
        return KVCache(self.config, batch_size, device or p.device, p.dtype)

    @torch.no_grad()
    def greedy(
        self, src: Tensor, max_new_tokens: int, stop: int | None = None, use_cache: bool = True
    ) -> Tensor:
        """The most likely target for each source row (B, S), token by token: (B, <= max_new).

        Stops early once every row has produced `stop`. `use_cache=False` recomputes the whole
        target at each step: the reference the cache is tested against.
        """
        B = src.size(0)
        memory = self.memory(src)
        cache = self.new_cache(B) if use_cache else None
        tgt = torch.full((B, 1), self.config.bos_id, dtype=torch.long, device=src.device)
        for _ in range(min(max_new_tokens, self.config.block_size)):
            step_in = tgt[:, -1:] if cache is not None else tgt
            nxt = self.decode(step_in, memory, cache)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            tgt = torch.cat([tgt, nxt], dim=1)
            if stop is not None and bool((tgt[:, 1:] == stop).any(1).all()):
                break
        return tgt[:, 1:]

    def num_params(self, non_embedding: bool = True) -> int:
        if not non_embedding:
            return sum(p.numel() for p in self.parameters())
        return num_params(self, self.encoder, self.lm_head)

    def flops_per_token(self) -> int:
        """6 N + 12 (3 n_layer) n_embd block_size: TinyGPT's count, with the encoder's,
        the decoder's and the cross-attention's score matrices."""
        cfg = self.config
        return 6 * self.num_params() + 36 * cfg.n_layer * cfg.n_embd * cfg.block_size

    param_groups = TinyGPT.param_groups  # decay the matrices, not gains and biases
