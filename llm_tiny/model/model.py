"""TinyGPT: a decoder-only transformer language model, readable top to bottom.

Token ids go in, next-token logits come out. The defaults build a GPT-2-style model. Each
flag of `ModelConfig` swaps one small module, looked up in a dict below:

- `pos_emb`: `learned` adds a trained vector per position to the input (GPT-2, Radford et al.
  2019); `rope` instead rotates queries and keys by position-dependent angles (RoFormer, Su et
  al. 2021), with base wavelength `rope_theta`; `alibi` adds nothing and lowers each attention
  score by a fixed per-head slope times the distance to the key (Press et al. 2022); `t5` adds a
  learned per-head number for the key's log-spaced distance bucket (Raffel et al. 2020).
- `norm`: `layernorm` (Ba et al. 2016), or `rmsnorm`, which rescales without centring (Zhang &
  Sennrich 2019), or `none` (the identity: does the model train without?).
- `mlp`: `gelu`, 4x wide (GPT-2), or `swiglu`, a gated unit about 8/3x wide (Shazeer 2020, "GLU
  Variants Improve Transformer"), or `relu` (the original Transformer's), or `relu2`, 4x wide
  with relu(x)^2 (So et al. 2021, Primer), or `mish`, x tanh(softplus(x)) (Misra 2019).
- `attn_window`: sliding-window (local) attention: each query sees only the last `attn_window`
  positions, itself included (`attention.causal_mask`).
- `qk_norm`: RMS-normalise each head's queries and keys (one gain per head dimension) before
  positions are applied, which bounds the attention logits (Dehghani et al. 2023; OLMo 2).
- `logit_softcap`: squash the logits into (-c, c) with c tanh(x / c) (Gemma 2).
- `bigram_logits`: a trained V x V table, zero at the start, whose row for the current token is
  added to the logits: the next-token statistics of each token straight from a lookup, leaving
  the blocks the rest. V² parameters: for byte-level vocabularies.
- `n_kv_head`: fewer key/value heads than query heads, each shared by a group of query heads:
  grouped-query attention (Ainslie et al. 2023). `None` gives every query head its own.
- `attn_impl`: `sdpa` calls `F.scaled_dot_product_attention`, which runs FlashAttention or the
  memory-efficient kernel on CUDA; `manual` writes softmax(QK^T / sqrt(hs)) V out; `tiled` is
  FlashAttention's online softmax in plain PyTorch (the kernels are in `llm_tiny.model.attention`).
- `norm_position`: `pre` normalises each sub-layer's input, x + f(norm(x)) (GPT-2); `post`
  normalises after the residual add, norm(x + f(x)), as the original Transformer (Vaswani et
  al. 2017) did, and then needs no final norm.
- `tie_weights`: the LM head reuses the token embedding matrix (Press & Wolf 2017).
- `bias`: biases in the linear layers and LayerNorms. `grad_checkpointing`: keep only each
  block's input and recompute its activations during the backward pass (Chen et al. 2016).

Weights are initialised as in GPT-2 (normal, std 0.02; residual projections scaled by 1/sqrt(2 n_layer));
`zero_init_proj` starts the residual projections (and an untied LM head) at zero instead.

Shapes: B batch, T time (tokens), C = n_embd, nh = n_head, nkv = n_kv_head, hs = head size,
V = vocab_size. For generation the model also takes a `KVCache` (see `llm_tiny.infer.sampling`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from llm_tiny.config import ModelConfig
from llm_tiny.model import attention
from llm_tiny.model.kvcache import KVCache, LayerCache, Start, repeat_kv, row_positions
from llm_tiny.model.layers import Linear, RelativeBias, ReluSquared, query_key_distance, soft_cap
from llm_tiny.model.layers import (
    decode_layout as decode_layout,  # re-exported: samplers import it here
)

# A position module (`POSITIONS`), after `start` cached positions (an int, or one per row
# (B,) when the rows of a batched KV cache hold different lengths): `embed(x, start)` adds
# positions to the input (B, T, C), `rotate(t, start)` to queries/keys (B, h, T, hs), and
# `bias(mask, start)` turns the causal mask (T, S) or (B, 1, T, S) into the kernels' mask or
# ALiBi's bias.
Positions = nn.Module


# ----------------------------------------------------------------------------- normalisation


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g: LayerNorm without the mean and the bias.

    Written out because `torch.nn.RMSNorm` only exists from torch 2.4.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def layer_norm(cfg: ModelConfig) -> nn.Module:
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


def rms_norm(cfg: ModelConfig) -> nn.Module:
    return RMSNorm(cfg.n_embd)


NORMS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "layernorm": layer_norm,
    "rmsnorm": rms_norm,
    "none": lambda cfg: nn.Identity(),
}


# ----------------------------------------------------------------------------- positions


def rope_tables(block_size: int, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of the RoPE angles, each (block_size, head_dim / 2).

    Pair i of a head is rotated at position m by the angle m * theta^(-2i / head_dim): the first
    pairs turn fast and see nearby tokens, the last turn slowly and see far ones.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)  # (T, hs/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x[i], x[i + hs/2]) of x (..., T, hs) by the angles in cos/sin (T, hs/2).

    NOTE: this pairs dimension i with i + hs/2 (the "rotate half" layout of GPT-NeoX and Llama)
    rather than neighbours 2i, 2i+1 as in the RoFormer paper; both are the same rotation of a
    permuted head, and halves need no interleaving.
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)  # (..., T, hs/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class LearnedPositions(nn.Module):
    """GPT-2: a trained vector per position, added to the token embedding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)

    def embed(self, x: Tensor, start: Start) -> Tensor:
        if isinstance(start, Tensor):
            return x + self.wpe(row_positions(start, x.size(1)))  # (B, T, C) + (B, T, C)
        return x + self.wpe.weight[start : start + x.size(1)]  # (B, T, C) + (T, C)

    def rotate(self, t: Tensor, start: Start) -> Tensor:
        return t  # positions already travel in the residual stream

    def bias(self, mask: Tensor, start: Start) -> Tensor:
        return mask


class RotaryPositions(nn.Module):
    """RoPE: nothing is added to the input; queries and keys are rotated inside attention.

    The dot product of a query rotated to position m and a key rotated to position n depends
    only on m - n, so attention sees relative positions. `start` offsets the tables for tokens
    that arrive after a KV cache already holds `start` positions.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cos, sin = rope_tables(cfg.block_size, cfg.head_dim, cfg.rope_theta)
        # Not persistent: derived from the config, so checkpoints do not carry them.
        self.register_buffer("cos", cos, persistent=False)  # (block_size, hs/2)
        self.register_buffer("sin", sin, persistent=False)

    def embed(self, x: Tensor, start: Start) -> Tensor:
        return x

    def rotate(self, t: Tensor, start: Start) -> Tensor:
        if isinstance(start, Tensor):
            pos = row_positions(start, t.size(-2))  # (B, T)
            return apply_rope(t, self.cos[pos][:, None], self.sin[pos][:, None])  # (B, 1, T, hs/2)
        end = start + t.size(-2)
        return apply_rope(t, self.cos[start:end], self.sin[start:end])

    def bias(self, mask: Tensor, start: Start) -> Tensor:
        return mask


class ALiBiPositions(nn.Module):
    """ALiBi: no position vectors; head h's score for a key d positions back is lowered by
    slope_h * d. Steep heads look close, shallow ones far; nothing is learned."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # Not persistent: derived from the config, so checkpoints do not carry them.
        self.register_buffer(
            "slopes", attention.alibi_slopes(cfg.n_head)[:, None, None], persistent=False
        )

    def embed(self, x: Tensor, start: Start) -> Tensor:
        return x

    def rotate(self, t: Tensor, start: Start) -> Tensor:
        return t

    def bias(self, mask: Tensor, start: Start) -> Tensor:
        """-slope_h * (i - j) where query i may see key j, -inf elsewhere: (nh, T, S), or
        (B, nh, T, S) for per-row starts."""
        distance = query_key_distance(mask, start).float()  # (T, S) or (B, 1, T, S)
        return (-self.slopes * distance).masked_fill(~mask, float("-inf"))


POSITIONS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "learned": LearnedPositions,
    "rope": RotaryPositions,
    "alibi": ALiBiPositions,
    "t5": lambda cfg: RelativeBias(cfg.n_head),  # in `layers`, for this file's size budget
}


# ----------------------------------------------------------------------------- attention


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with one fused QKV projection.
    `causal=False` lets every position see every other (an encoder, `llm_tiny.model.encoder`)."""

    def __init__(self, cfg: ModelConfig, causal: bool = True) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.qkv = Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, cfg.bias)
        self.proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # a residual projection
        self.resid_drop = nn.Dropout(cfg.dropout)
        # A window, or no causal mask at all, needs kernels that honour any mask.
        plain = causal and cfg.attn_window is None
        kernels = attention.ATTENTION if plain else attention.ATTENTION_ANY_MASK
        self.attend = kernels[cfg.attn_impl]
        self.q_norm = RMSNorm(cfg.head_dim) if cfg.qk_norm else nn.Identity()  # over hs
        self.k_norm = RMSNorm(cfg.head_dim) if cfg.qk_norm else nn.Identity()
        # mask[i, j]: may position i look at position j? Row `start + t` of this table is the
        # right mask for query t after `start` cached positions, so one table serves both.
        # (block_size^2 bytes per layer: 1 MB at 1024.) NOTE: with a window the KV cache still
        # keeps every position; the mask hides those the window has passed.
        mask = attention.causal_mask(cfg.block_size, cfg.attn_window)
        self.register_buffer("mask", mask if causal else torch.ones_like(mask), persistent=False)

    def heads(self, x: Tensor, pos: Positions, start: Start) -> tuple[Tensor, Tensor, Tensor]:
        """Project x (B, T, C) to q (B, nh, T, hs) and k, v (B, nkv, T, hs), positions applied."""
        B, T, _ = x.shape
        kv_width = self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, kv_width, kv_width], dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = self.q_norm(q), self.k_norm(k)  # before RoPE: the norm must not see positions
        return pos.rotate(q, start), pos.rotate(k, start), v

    def forward(
        self, x: Tensor, pos: Positions, start: Start = 0, cache: LayerCache | None = None,
        keep: Tensor | None = None,  # (B, S): False hides key s from its row's queries (padding)
    ) -> Tensor:  # fmt: skip
        B, T, C = x.shape
        q, k, v = self.heads(x, pos, start)
        if cache is not None:
            k, v = cache.store(k, v, start)  # (B, nkv, S, hs) with S = start + T
        n_rep = self.n_head // self.n_kv_head
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, nh, S, hs)
        if isinstance(start, Tensor):  # row b's query t sees keys up to its own position
            causal = self.mask[row_positions(start, T)][:, None, :, : k.size(2)]  # (B, 1, T, S)
        else:
            causal = self.mask[start : start + T, : start + T]  # (T, S)
        if keep is not None:
            causal = causal & keep[:, None, None, : k.size(2)]  # (B, 1, T, S)
        mask = pos.bias(causal, start)  # the same, or ALiBi's bias (nh, T, S) / (B, nh, T, S)
        y = self.attend(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_drop(self.proj(y))

    def weights(self, x: Tensor, pos: Positions) -> Tensor:
        """Attention weights (B, nh, T, T) for x (B, T, C), whatever `attend` is: for pictures."""
        T = x.size(1)
        q, k, _ = self.heads(x, pos, 0)
        k = repeat_kv(k, self.n_head // self.n_kv_head)
        return attention.attention_weights(q, k, pos.bias(self.mask[:T, :T], 0))


# ----------------------------------------------------------------------------- feed-forward


# The activation of the two-matrix MLP, by `model.mlp`. GELU with the tanh approximation GPT-2
# was trained with; ReLU as in the original Transformer; relu(x)^2 (Primer).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "relu2": ReluSquared,
    "mish": nn.Mish,
}


class MLP(nn.Module):
    """GPT-2's feed-forward layer: C -> 4C (or `mlp_hidden`) -> activation -> C."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = Linear(cfg.n_embd, mlp_width(cfg), bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.mlp]()
        self.proj = Linear(mlp_width(cfg), cfg.n_embd, bias=cfg.bias)  # a residual projection
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))  # (B, T, C)


def swiglu_hidden(n_embd: int) -> int:
    """8/3 * n_embd rounded up to a multiple of 64: as many weights as a 4x GELU MLP
    (three matrices instead of two), in a size that GPU matmuls like. 384 -> 1024, 128 -> 384."""
    return 64 * math.ceil(8 * n_embd / 3 / 64)


def mlp_width(cfg: ModelConfig) -> int:
    """The MLP's hidden width: `model.mlp_hidden` when set (an imported Llama's
    `intermediate_size`), else 4 C, or `swiglu_hidden(C)` for SwiGLU."""
    if cfg.mlp_hidden is not None:
        return cfg.mlp_hidden
    return swiglu_hidden(cfg.n_embd) if cfg.mlp == "swiglu" else 4 * cfg.n_embd


class SwiGLU(nn.Module):
    """Gated feed-forward layer: proj(silu(x W_gate) * (x W_up)), with W_gate, W_up fused."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = mlp_width(cfg)
        self.fc = Linear(cfg.n_embd, 2 * hidden, bias=cfg.bias)  # gate and up, side by side
        self.proj = Linear(hidden, cfg.n_embd, bias=cfg.bias)  # a residual projection
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.drop(self.proj(F.silu(gate) * up))  # (B, T, C)


MLPS: dict[str, type[nn.Module]] = {"swiglu": SwiGLU, **dict.fromkeys(ACTIVATIONS, MLP)}


# ----------------------------------------------------------------------------- block


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2): x + attn(norm1(x)), then x + mlp(norm2(x)). The
    residual stream itself is never normalised, so gradients reach early layers unchanged."""

    final_norm = True  # the stream needs a norm before the LM head

    def __init__(self, cfg: ModelConfig, causal: bool = True) -> None:
        super().__init__()
        self.norm1 = NORMS[cfg.norm](cfg)
        self.attn = CausalSelfAttention(cfg, causal)
        self.norm2 = NORMS[cfg.norm](cfg)
        self.mlp = MLPS[cfg.mlp](cfg)

    def forward(
        self, x: Tensor, pos: Positions, start: Start = 0, cache: LayerCache | None = None,
        keep: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        x = x + self.attn(self.norm1(x), pos, start, cache, keep)  # (B, T, C)
        return x + self.mlp(self.norm2(x))

    def attention_input(self, x: Tensor) -> Tensor:
        return self.norm1(x)


class PostNormBlock(Block):
    """Post-norm block (the original Transformer): norm1(x + attn(x)), then norm2(x + mlp(x)).
    Its output is already normalised: no final norm. Every gradient passes through the norms,
    which is why post-norm stacks need a learning-rate warmup (Xiong et al. 2020)."""

    final_norm = False

    def forward(
        self, x: Tensor, pos: Positions, start: Start = 0, cache: LayerCache | None = None,
        keep: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        x = self.norm1(x + self.attn(x, pos, start, cache, keep))  # (B, T, C)
        return self.norm2(x + self.mlp(x))

    def attention_input(self, x: Tensor) -> Tensor:
        return x


BLOCKS: dict[str, type[Block]] = {"pre": Block, "post": PostNormBlock}


# ----------------------------------------------------------------------------- model


class TinyGPT(nn.Module):
    """Embeddings, `n_layer` blocks, a final norm and the LM head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is None; set it (e.g. from the tokenizer)")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = POSITIONS[cfg.pos_emb](cfg)
        self.drop = nn.Dropout(cfg.dropout)
        block = BLOCKS[cfg.norm_position]
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = NORMS[cfg.norm](cfg) if block.final_norm else nn.Identity()
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.bigram = nn.Embedding(cfg.vocab_size, cfg.vocab_size) if cfg.bigram_logits else None
        if cfg.tie_weights:
            # One Parameter in two places: it is trained once, saved under both names and
            # stays shared after `load_state_dict`, which copies into it in place.
            self.lm_head.weight = self.wte.weight
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2 initialisation: every weight matrix and embedding ~ N(0, 0.02), biases 0, norm
        gains 1; residual projections get std 0.02 / sqrt(2 n_layer) because each block adds two
        of them to the residual stream, whose variance would otherwise grow with depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
            if isinstance(module, nn.LayerNorm) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        # zero_init_proj: every block starts as the identity and the first logits are uniform;
        # the projections get gradients at once, the rest from the next step on (modded-nanogpt).
        # std 0 still draws its numbers: every other weight is the same as without the flag.
        zero = self.config.zero_init_proj
        for block in self.blocks:
            for w in (block.attn.proj.weight, block.mlp.proj.weight):
                nn.init.normal_(w, mean=0.0, std=0.0 if zero else residual_std)
        if zero and self.lm_head.weight is not self.wte.weight:
            nn.init.zeros_(self.lm_head.weight)
        if self.bigram is not None:
            nn.init.zeros_(self.bigram.weight)  # the model starts as it would without the table

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        cache: KVCache | None = None,
        label_smoothing: float = 0.0,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, V) for token ids idx (B, T), and the mean cross-entropy against
        `targets` (B, T) when given (positions with target -1 are ignored).

        `label_smoothing` e (training only, `optim.label_smoothing`): the target distribution is
        1 - e on the right token plus e spread evenly over all V (Szegedy et al. 2016).

        With a `cache`, idx continues the `cache.length` positions already stored there (per
        row when `cache.length` is a tensor; rows that all hold the same length take the plain
        path, so a batch of one computes exactly what an unbatched cache does).
        """
        start = 0 if cache is None else cache.length
        if isinstance(start, Tensor) and bool((start == start[0]).all()):
            start = int(start[0])
        self._check_inputs(idx, targets, start)
        x = self.drop(self.pos.embed(self.wte(idx), start))  # (B, T, C)
        caches = [None] * len(self.blocks) if cache is None else cache.layers
        for block, layer_cache in zip(self.blocks, caches):
            if self.config.grad_checkpointing and torch.is_grad_enabled():
                # Keep only the block's input; recompute its activations in backward.
                x = checkpoint(block, x, self.pos, start, layer_cache, use_reentrant=False)
            else:
                x = block(x, self.pos, start, layer_cache)
        if cache is not None:
            cache.length += idx.size(1)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        if self.bigram is not None:
            logits = logits + self.bigram(idx)  # row idx[b, t]: the scores of what follows it
        if self.config.logit_softcap is not None:
            logits = soft_cap(logits, self.config.logit_softcap)
        if targets is None:
            return logits, None
        flat = logits.flatten(0, 1), targets.flatten()  # (B * T, V), (B * T,)
        loss = F.cross_entropy(*flat, ignore_index=-1, label_smoothing=label_smoothing)
        return logits, loss

    def _check_inputs(self, idx: Tensor, targets: Tensor | None, start: Start) -> None:
        """Turn the usual input mistakes into one clear ValueError instead of an index error
        deep inside the embedding (or a device-side assert on CUDA)."""
        cfg = self.config
        if not isinstance(idx, Tensor) or idx.dim() != 2:
            shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"idx must be a (batch, time) tensor of token ids, got {shape}")
        if idx.dtype not in (torch.long, torch.int32):
            raise ValueError(f"idx must hold integer token ids (torch.long), got {idx.dtype}")
        T = idx.size(1)
        if T == 0:
            raise ValueError("idx is empty: give at least one token per row")
        if (start if isinstance(start, int) else int(start.max())) + T > cfg.block_size:
            where = f" after {start} cached positions" if start else ""
            raise ValueError(
                f"sequence of {T} tokens{where} exceeds block_size {cfg.block_size}; "
                f"crop it to the last {cfg.block_size - start} tokens"
            )
        if targets is not None:
            if not isinstance(targets, Tensor) or targets.shape != idx.shape:
                got = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets)
                raise ValueError(
                    f"targets must have the shape of idx {tuple(idx.shape)}, got {got}"
                )
            if targets.dtype not in (torch.long, torch.int32):
                raise ValueError(f"targets must hold integer token ids, got {targets.dtype}")
        # NOTE: reading min/max synchronises with the device and would break a compiled graph,
        # so compiled models and training steps on an accelerator (whose batches come from data
        # checked when it was prepared) skip it; on CPU it costs next to nothing.
        if torch.compiler.is_compiling() or (self.training and idx.device.type != "cpu"):
            return
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(
                f"token ids must be in [0, {cfg.vocab_size}) for this model, got ids from {lo} "
                f"to {hi}; was the data made with a different tokenizer?"
            )
        if targets is not None:
            lo, hi = (int(v) for v in torch.aminmax(targets))
            if lo < -1 or hi >= cfg.vocab_size:
                raise ValueError(
                    f"targets must be in [0, {cfg.vocab_size}) or -1 (ignored), "
                    f"got values from {lo} to {hi}"
                )

    # ------------------------------------------------------------------------- generation

    def new_cache(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty KV cache for `batch_size` sequences (on the model's device and dtype)."""
        p = self.lm_head.weight
        return KVCache(self.config, batch_size, device or p.device, dtype or p.dtype)

    @torch.no_grad()
    def attention_maps(self, idx: Tensor) -> list[Tensor]:
        """Softmax attention weights of every layer, each (B, nh, T, T), for visualisation.

        Computed the manual way whatever `attn_impl` is (the fused kernels never form them).
        """
        self._check_inputs(idx, None, 0)
        x = self.drop(self.pos.embed(self.wte(idx), 0))  # (B, T, C)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.attention_input(x), self.pos))
            x = block(x, self.pos)
        return maps

    # ------------------------------------------------------------------------- accounting

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters (a tied matrix counts once).

        `non_embedding=True` leaves out lookup tables, which cost no FLOPs: the position
        embedding, and the token embedding unless it is tied to the LM head (then the shared
        matrix counts once, as the head's matmul).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if isinstance(self.pos, LearnedPositions):
                n -= self.pos.wpe.weight.numel()
            if self.lm_head.weight is not self.wte.weight:
                n -= self.wte.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward) at full context:
        6 N + 12 n_layer n_embd block_size.

        6 N: each of the N non-embedding weights does a multiply-add (2 FLOPs) forward and twice
        that backward. 12 L C T: the attention scores QK^T and the weighted sum AV take T C
        multiply-adds each per token and layer (4 T C FLOPs), times 3 with the backward. Counted
        over the full T x T square as in the PaLM paper (Chowdhery et al. 2022, appendix B),
        though the causal mask makes half of it unnecessary. Grouped-query attention does not
        change this term.
        """
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    # ------------------------------------------------------------------------- optimizer

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay every parameter with >= 2 dimensions (weight matrices and
        embeddings), not biases or norm gains.

        Decay pulls weights toward 0. For a matrix that only limits its scale; a gain or a bias
        is a single per-channel value whose 0 is not a neutral choice (a gain of 0 silences the
        channel), so they are left alone, as in GPT-2 and nanoGPT.
        """
        params = dict(self.named_parameters())  # a tied matrix appears once
        decay = [p for p in params.values() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in params.values() if p.requires_grad and p.dim() < 2]
        grouped = {id(p) for p in decay} | {id(p) for p in no_decay}
        trainable = {id(p) for p in params.values() if p.requires_grad}
        assert grouped == trainable and len(decay) + len(no_decay) == len(trainable), (
            "optimizer groups must cover every trainable parameter exactly once"
        )
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
