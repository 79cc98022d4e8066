"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): freeze a
trained model and learn, for some of its projections W (out, in), a low-rank update

    y = W x + b + (alpha / r) B A dropout(x),    A: (r, in), B: (out, r), r << min(in, out)

B starts at zero, so the adapted model starts as the base model exactly; A starts as PEFT's
(Kaiming-uniform), so B gets a gradient from the first step. Only A and B train: for rank 8 on
a 128-wide model that is a few percent of the weights, and the optimizer state shrinks with it.

Our attention has one fused QKV matrix and SwiGLU one fused [gate | up] matrix, while the
targets are per projection (q, k, v, o, gate, up, down, as PEFT names them for Llama): a fused
`Linear` carries one adapter per targeted block of rows (`target_rows`), so q and v can be
adapted without k, and the adapters map one to one onto Hugging Face's separate projections.

Adapters add parameters named `<linear>.lora.<target>.A` / `.B` next to the frozen
`<linear>.weight`, whose name does not change: the base part of an adapted model's state dict
is the base model's state dict (`split_state`). `merge_state` folds adapters into plain weights
(the export, the inference loader); `merge`/`unmerge` do it in place on a live model.

Token rows (`lora.tokens`, PEFT's `trainable_token_indices`): a frozen embedding cannot learn a
token that the base never saw, such as the turn tokens a chat run adds. Those tokens' rows of
the embedding and of the output head train whole, as `wte.lora.rows` / `lm_head.lora.rows`
(n, C) beside the frozen matrices (one shared Parameter when the two are tied); everything
else stays frozen. The adapter checkpoint holds them with the adapters, and `merge_state` writes
them over the base's rows (growing the matrices to the run's vocabulary first).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from llm_tiny.config import ConfigError, LoraConfig, ModelConfig
from llm_tiny.model.layers import Linear
from llm_tiny.model.model import mlp_width

ADAPTER_TAG = ".lora."  # in the name of every adapter parameter, and of no base parameter


# ----------------------------------------------------------------------------- the math


def lora_delta(a: Tensor, b: Tensor, scale: float) -> Tensor:
    """The weight update of one adapter: scale * B @ A, (out, r) @ (r, in) -> (out, in)."""
    return scale * (b @ a)


def target_rows(cfg: ModelConfig) -> dict[str, tuple[str, int, int]]:
    """Each target this model has -> (its `Linear` inside a block, first row, end row).

    >>> rows = target_rows(ModelConfig(n_embd=8, n_head=2, n_kv_head=1))
    >>> rows["q"], rows["k"], rows["v"], rows["up"]
    (('attn.qkv', 0, 8), ('attn.qkv', 8, 12), ('attn.qkv', 12, 16), ('mlp.fc', 0, 32))
    """
    q, kv, hidden = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, mlp_width(cfg)
    rows = {
        "q": ("attn.qkv", 0, q),
        "k": ("attn.qkv", q, q + kv),
        "v": ("attn.qkv", q + kv, q + 2 * kv),
        "o": ("attn.proj", 0, cfg.n_embd),
        "down": ("mlp.proj", 0, cfg.n_embd),
    }
    if cfg.mlp == "swiglu":  # fused rows [gate | up] (`SwiGLU.fc`)
        rows |= {"gate": ("mlp.fc", 0, hidden), "up": ("mlp.fc", hidden, 2 * hidden)}
    else:
        rows["up"] = ("mlp.fc", 0, hidden)
    return rows


def check_targets(model_cfg: ModelConfig, lora: LoraConfig) -> dict[str, tuple[str, int, int]]:
    """The rows of `lora.targets` in this model; a target it lacks is a one-line ConfigError."""
    rows = target_rows(model_cfg)
    for t in lora.targets:
        if t not in rows:
            raise ConfigError(
                f"lora.targets: {t!r} is not a projection of this model (model.mlp "
                f"{model_cfg.mlp!r} has {', '.join(rows)})"
            )
    return {t: rows[t] for t in lora.targets}


def check_tokens(model_cfg: ModelConfig, lora: LoraConfig) -> None:
    """`lora.tokens` must be ids of this vocabulary, and (NOTE) a bigram table would leave their
    rows frozen, so that combination is refused rather than half-trained."""
    vocab = model_cfg.vocab_size
    if vocab is not None and any(t >= vocab for t in lora.tokens):
        raise ConfigError(
            f"lora.tokens: {max(lora.tokens)} is not a token id of this model "
            f"(vocabulary of {vocab})"
        )
    if lora.tokens and model_cfg.bigram_logits:
        raise ConfigError(
            "lora.tokens with model.bigram_logits: the bigram table's rows of those tokens "
            "cannot train under LoRA; fine-tune every weight (lora.rank: 0) instead"
        )


def is_adapter_key(key: str) -> bool:
    return ADAPTER_TAG in key


def split_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """An adapted model's state dict -> (base weights, adapter weights)."""
    base = {k: v for k, v in state.items() if not is_adapter_key(k)}
    return base, {k: v for k, v in state.items() if is_adapter_key(k)}


def merge_state(
    base: Mapping[str, Tensor],
    adapters: Mapping[str, Tensor],
    model_cfg: ModelConfig,
    lora: LoraConfig,
) -> dict[str, Tensor]:
    """Base weights with the adapters folded in: W[rows] + scale * B @ A for every adapter
    (new tensors; `base` is left alone). The result loads into a plain TinyGPT."""
    rows = check_targets(model_cfg, lora)
    out = dict(base)
    for i in range(model_cfg.n_layer):
        for linear in {linear for linear, _, _ in rows.values()}:
            key = f"blocks.{i}.{linear}.weight"
            out[key] = base[key].clone()
        for target, (linear, start, end) in rows.items():
            prefix = f"blocks.{i}.{linear}"
            a, b = adapters[f"{prefix}.lora.{target}.A"], adapters[f"{prefix}.lora.{target}.B"]
            w = out[f"{prefix}.weight"]
            w[start:end] += lora_delta(a.to(w.dtype), b.to(w.dtype), lora.scale)
    if lora.tokens:  # the trained token rows replace the base's (grown to the run's vocabulary)
        ids = torch.tensor(lora.tokens)
        for key in ("wte.weight", "lm_head.weight"):
            w = base[key]
            grown = w.new_zeros(max(model_cfg.vocab_size, w.shape[0]), w.shape[1])
            grown[: w.shape[0]] = w
            grown[ids] = adapters[key.replace(".weight", ".lora.rows")].to(w.dtype)
            out[key] = grown
        if model_cfg.tie_weights:
            out["lm_head.weight"] = out["wte.weight"]
    return out


def state_sha256(state: Mapping[str, Tensor]) -> str:
    """sha256 of a state dict: names, dtypes, shapes and bytes in name order. It identifies the
    base weights an adapter run was trained over (the same on any device)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- modules


class Adapter(nn.Module):
    """One low-rank update of rows [start, end) of a `Linear`: A (r, in), B (end - start, r)."""

    def __init__(self, in_features: int, start: int, end: int, rank: int) -> None:
        super().__init__()
        self.start, self.end = start, end
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(end - start, rank))  # zero: the model starts unchanged
        # PEFT's and the paper's choice for A: nn.Linear's default init (Kaiming-uniform).
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))


class LoRALinear(Linear):
    """A frozen `Linear` (the same Parameters, under the same names) plus adapters on blocks of
    its output rows: y = W x + b + scale * [B_t A_t dropout(x) on each target's rows]."""

    def __init__(
        self, base: Linear, rows: dict[str, tuple[int, int]], rank: int, alpha: float, p: float
    ) -> None:
        nn.Module.__init__(self)  # not Linear.__init__: keep the base's Parameters, no new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.scale = alpha / rank
        self.drop = nn.Dropout(p)
        ordered = sorted(rows.items(), key=lambda kv: kv[1][0])
        self.lora = nn.ModuleDict(
            {t: Adapter(self.in_features, s, e, rank) for t, (s, e) in ordered}
        )
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # (..., out)
        if self.merged:
            return y
        h = self.drop(x)
        pieces, row = [], 0
        for ad in self.lora.values():  # in row order; untargeted rows get zeros
            if ad.start > row:
                pieces.append(y.new_zeros(*y.shape[:-1], ad.start - row))
            pieces.append((h @ ad.A.t()) @ ad.B.t() * self.scale)  # (..., r) -> (..., rows)
            row = ad.end
        if row < self.out_features:
            pieces.append(y.new_zeros(*y.shape[:-1], self.out_features - row))
        return y + torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def merge(self, sign: float = 1.0) -> None:
        """Fold the adapters into the weight (sign -1: take them out again)."""
        if self.merged == (sign > 0):
            return
        for ad in self.lora.values():
            self.weight[ad.start : ad.end] += sign * lora_delta(ad.A, ad.B, self.scale)
        self.merged = sign > 0


class TokenRows(nn.Module):
    """Trainable rows `rows` (n, C) standing for rows `ids` of frozen (V, C) matrices: the
    embedding's, and the output head's (the same matrix when they are tied)."""

    def __init__(self, weight: Tensor, ids: tuple[int, ...]) -> None:
        super().__init__()
        index = torch.tensor(ids, dtype=torch.long, device=weight.device)
        slot = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
        slot[index] = torch.arange(len(ids), device=weight.device)
        self.register_buffer("ids", index, persistent=False)
        self.register_buffer("slot", slot, persistent=False)  # token id -> its row, or -1
        self.rows = nn.Parameter(weight.detach()[index].clone())
        self.merged: list[tuple[Tensor, Tensor]] = []  # (weight, its own rows) while merged

    @torch.no_grad()
    def merge(self, weights: list[Tensor], sign: float) -> None:
        if sign > 0 and not self.merged:
            self.merged = [(w, w[self.ids].clone()) for w in weights]
            for w in weights:
                w[self.ids] = self.rows.to(w.dtype)
        elif sign < 0:
            for w, own in self.merged:
                w[self.ids] = own
            self.merged = []


class RowsEmbedding(nn.Embedding):
    """The frozen `nn.Embedding` (the same Parameter, under the same name) whose rows `ids`
    come from `lora.rows`."""

    def __init__(self, base: nn.Embedding, rows: TokenRows) -> None:
        super().__init__(base.num_embeddings, base.embedding_dim, _weight=base.weight.detach())
        self.weight, self.lora = base.weight, rows

    def forward(self, idx: Tensor) -> Tensor:
        out = super().forward(idx)  # (..., C)
        if self.lora.merged:
            return out
        slot = self.lora.slot[idx]
        own = self.lora.rows[slot.clamp(min=0)].to(out.dtype)
        return torch.where((slot >= 0).unsqueeze(-1), own, out)


class RowsLinear(Linear):
    """The frozen output head (the same Parameter, under the same name) whose outputs `ids`
    come from `lora.rows`: logits[..., ids] = x @ rows^T."""

    def __init__(self, base: Linear, rows: TokenRows) -> None:
        nn.Module.__init__(self)  # as LoRALinear: keep the base's Parameters
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias, self.lora = base.weight, base.bias, rows

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # (..., V)
        if self.lora.merged:
            return y
        return y.index_copy(-1, self.lora.ids, x @ self.lora.rows.t().to(x.dtype))


def add_token_rows(model: nn.Module, ids: tuple[int, ...]) -> None:
    """Give the rows `ids` of the (frozen) embedding and output head their own trainable
    Parameters: one `TokenRows` for a tied pair, one each otherwise."""
    tied = model.lm_head.weight is model.wte.weight
    emb_rows = TokenRows(model.wte.weight, ids)
    head_rows = emb_rows if tied else TokenRows(model.lm_head.weight, ids)
    model.wte = RowsEmbedding(model.wte, emb_rows)
    model.lm_head = RowsLinear(model.lm_head, head_rows)


def add_lora(model: nn.Module, lora: LoraConfig) -> list[nn.Parameter]:
    """Freeze every weight of a TinyGPT and put adapters on `lora.targets` in every block (and
    trainable rows for `lora.tokens`); returns the adapters' parameters (now the only trainable
    ones). Call it after loading the base weights: it draws A from the global RNG. Rank 0 (LoRA
    off) changes nothing."""
    if not lora.rank:
        return []
    rows = check_targets(model.config, lora)
    check_tokens(model.config, lora)
    for p in model.parameters():
        p.requires_grad_(False)
    by_linear: dict[str, dict[str, tuple[int, int]]] = {}
    for target, (linear, start, end) in rows.items():
        by_linear.setdefault(linear, {})[target] = (start, end)
    for block in model.blocks:
        for linear, targets in by_linear.items():
            owner_name, _, attr = linear.rpartition(".")
            owner = block.get_submodule(owner_name)
            base = getattr(owner, attr)
            adapted = LoRALinear(base, targets, lora.rank, lora.alpha, lora.dropout)
            setattr(owner, attr, adapted.to(base.weight.device))
    if lora.tokens:
        add_token_rows(model, lora.tokens)
    return [p for n, p in model.named_parameters() if is_adapter_key(n)]


def trainable_note(model: nn.Module) -> str:
    """` (N trainable)` when some weights are frozen (a LoRA run), else nothing: for the line
    that starts a run."""
    params = dict(model.named_parameters())  # a tied matrix once
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    total = sum(p.numel() for p in params.values())
    return "" if trainable == total else f" ({trainable / 1e6:.3f}M trainable)"


def merge(model: nn.Module) -> None:
    """Fold every adapter into its weight in place (outputs unchanged, faster; `unmerge` undoes
    it up to rounding)."""
    _merge_all(model, 1.0)


def unmerge(model: nn.Module) -> None:
    _merge_all(model, -1.0)


def _merge_all(model: nn.Module, sign: float) -> None:
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge(sign)
    owners: dict[int, tuple[TokenRows, list[Tensor]]] = {}  # a tied pair's rows merge once
    for m in model.modules():
        if isinstance(m, (RowsEmbedding, RowsLinear)):
            rows, weights = owners.setdefault(id(m.lora), (m.lora, []))
            if all(w is not m.weight for w in weights):
                weights.append(m.weight)
    for rows, weights in owners.values():
        rows.merge(weights, sign)
