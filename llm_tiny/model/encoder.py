"""TinyEncoder: an encoder-only transformer (BERT, Devlin et al. 2019) built from TinyGPT's parts.

The blocks are TinyGPT's (`Block(cfg, causal=False)`) with the causal mask lifted: every
position attends to every other, before and after it. What a decoder predicts one token at a
time from the left, an encoder reads all at once, so it suits answers read *from* a sequence
(a class, a filled-in blank) rather than text written after it.

A row is `[CLS] t_1 ... t_n [PAD] ...`: the start token (`cfg.bos_id`), the tokens, then
padding (`cfg.pad_id`) to the row's end. Padding is hidden from attention (`keep`), so a row
encodes the same however much padding follows it. The three special ids sit after the
vocabulary (`ModelConfig.pad_id`, `mask_id`, `bos_id`): the embedding has V + 3 rows.

Two heads read the encoding (the choices of `ModelConfig` that concern layers apply as in
TinyGPT; `pos_emb: alibi` is causal-only and refused):

- the masked-LM head (V outputs; the token embedding's first V rows when `tie_weights`):
  where a token of the input was hidden or replaced, predict the original (BERT's objective);
- the classifier (`n_classes` outputs) on the [CLS] position: for the digit task, the answer
  read from a bidirectional encoding of the question.

Targets are one (B, T) tensor, so the training loop and the validation loss treat this model
like TinyGPT: column 0 is the class (or -1), columns 1.. the masked-LM targets (or -1); the
loss is the mean cross-entropy over every target of both kinds. The rows come from
`llm_tiny.data.encoded.EncoderBatches`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm_tiny.config import ModelConfig
from llm_tiny.model.layers import Linear
from llm_tiny.model.model import BLOCKS, NORMS, POSITIONS, LearnedPositions, TinyGPT

N_SPECIAL = 3  # padding, [MASK], start ([CLS]): ids vocab_size, vocab_size + 1, vocab_size + 2
RESIDUAL_PROJECTIONS = ("attn.proj.weight", "mlp.proj.weight", "cross.proj.weight")


def init_weights(model: nn.Module, n_layer: int) -> None:
    """TinyGPT's initialisation: linear and embedding weights ~ N(0, 0.02), biases 0 (norm gains
    start at 1 when built); residual projections ~ N(0, 0.02 / sqrt(2 n_layer))."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith(RESIDUAL_PROJECTIONS):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


def check_ids(idx: Tensor, cfg: ModelConfig, what: str = "idx") -> None:
    """One clear ValueError for the usual input mistakes (as `TinyGPT._check_inputs`)."""
    if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"{what} must be a non-empty (batch, time) tensor of token ids")
    if idx.dtype not in (torch.long, torch.int32):
        raise ValueError(f"{what} must hold integer token ids (torch.long), got {idx.dtype}")
    if idx.size(1) > cfg.block_size:
        raise ValueError(f"{what} has {idx.size(1)} tokens, more than block_size {cfg.block_size}")
    if torch.compiler.is_compiling() or idx.device.type != "cpu":
        return  # reading min/max would synchronise with the device
    lo, hi = (int(v) for v in torch.aminmax(idx))
    if lo < 0 or hi >= cfg.vocab_size + N_SPECIAL:
        raise ValueError(f"{what} ids must be in [0, {cfg.vocab_size + N_SPECIAL}), got {lo}..{hi}")


class Encoder(nn.Module):
    """Token embedding (V + 3 rows), positions, `n_layer` bidirectional blocks, final norm:
    ids (B, T) -> encoding (B, T, C) and `keep` (B, T), False at padding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pad_id = cfg.pad_id
        self.wte = nn.Embedding(cfg.vocab_size + N_SPECIAL, cfg.n_embd)
        self.pos = POSITIONS[cfg.pos_emb](cfg)
        self.drop = nn.Dropout(cfg.dropout)
        block = BLOCKS[cfg.norm_position]
        self.blocks = nn.ModuleList(block(cfg, causal=False) for _ in range(cfg.n_layer))
        self.norm_f = NORMS[cfg.norm](cfg) if block.final_norm else nn.Identity()

    def forward(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        keep = idx != self.pad_id  # (B, T)
        x = self.drop(self.pos.embed(self.wte(idx), 0))  # (B, T, C)
        for block in self.blocks:
            x = block(x, self.pos, 0, None, keep)
        return self.norm_f(x), keep


def num_params(model: nn.Module, encoder: Encoder, head: nn.Module | None) -> int:
    """Parameters less the lookup tables (as `TinyGPT.num_params`): learned positions, and the
    token embedding unless it doubles as the output head (`head` is None when tied)."""
    n = sum(p.numel() for p in model.parameters())
    for pos in (m for m in model.modules() if isinstance(m, LearnedPositions)):
        n -= pos.wpe.weight.numel()
    return n - (encoder.wte.weight.numel() if head is not None else 0)


class TinyEncoder(nn.Module):
    """The encoder, a masked-LM head and a classifier on the [CLS] position."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None or cfg.n_classes is None:
            raise ValueError("TinyEncoder needs ModelConfig.vocab_size and n_classes set")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.mlm_head = None if cfg.tie_weights else Linear(cfg.n_embd, cfg.vocab_size, False)
        self.classifier = Linear(cfg.n_embd, cfg.n_classes, bias=cfg.bias)
        init_weights(self, cfg.n_layer)

    def mlm_logits(self, h: Tensor) -> Tensor:
        """Token scores (B, T, V) from the encoding h (B, T, C); never a special id."""
        if self.mlm_head is not None:
            return self.mlm_head(h)
        return F.linear(h, self.encoder.wte.weight[: self.config.vocab_size])  # tied

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, label_smoothing: float = 0.0
    ) -> tuple[Tensor, Tensor | None]:
        """Masked-LM logits (B, T, V) and, with `targets` (B, T), the mean cross-entropy over
        the class in column 0 and the masked-LM targets after it (-1: none)."""
        check_ids(idx, self.config)
        h, _ = self.encoder(idx)  # (B, T, C)
        logits = self.mlm_logits(h)
        if targets is None:
            return logits, None
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}")
        ce = {"ignore_index": -1, "reduction": "sum", "label_smoothing": label_smoothing}
        cls_loss = F.cross_entropy(self.classifier(h[:, 0]), targets[:, 0], **ce)
        mlm_loss = F.cross_entropy(logits[:, 1:].flatten(0, 1), targets[:, 1:].flatten(), **ce)
        return logits, (cls_loss + mlm_loss) / (targets != -1).sum()

    def classify(self, idx: Tensor) -> Tensor:
        """Class scores (B, n_classes) of rows idx (B, T), read at the [CLS] position."""
        check_ids(idx, self.config)
        return self.classifier(self.encoder(idx)[0][:, 0])

    def num_params(self, non_embedding: bool = True) -> int:
        if not non_embedding:
            return sum(p.numel() for p in self.parameters())
        return num_params(self, self.encoder, self.mlm_head)

    def flops_per_token(self) -> int:
        """6 N + 12 n_layer n_embd block_size, as `TinyGPT.flops_per_token`."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    param_groups = TinyGPT.param_groups  # decay the matrices, not gains and biases
