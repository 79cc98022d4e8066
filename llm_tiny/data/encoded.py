"""Batches for the encoder-only and encoder-decoder models (`model.arch`), made from the same
prepared examples (data.kind `examples`, `Max(3,7,5)=7`) as the decoder's `ExampleBatches`.

- `EncoderBatches` (TinyEncoder): x is `[CLS] prompt [PAD]...` (`encoder_row`); y holds the
  answer's class in column 0 (the answer text read as an integer 0 .. n_classes - 1), -1
  elsewhere. In training a share `model.mlm_prob` of the rows are masked-LM rows instead
  (BERT, Devlin et al. 2019): 15% of their prompt tokens (at least one) are chosen; of those
  80% become [MASK], 10% a random token and 10% stay; y holds the original token at the chosen
  positions and no class. Evaluation rows are never masked: the validation loss is the
  classifier's.
- `Seq2SeqBatches` (TinySeq2Seq): x is the prompt padded to `block_size` (`source_row`), then
  `[START] answer[:-1]`; y is the answer (its newline included, so the decoder learns to
  stop), -1 past its end. x has `block_size + D` columns, D the split's longest answer.

Both draw their rows as `ExampleBatches` does (a pure function of seed and step), and so does
the masking: one draw per global batch, sliced per micro-batch, so resume stays exact and
accumulation equals one big batch. `open_split` is the package's: these for those archs,
`batches.open_split`'s sources for the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from llm_tiny.config import ModelConfig
from llm_tiny.data import batches
from llm_tiny.data.batches import ExampleBatches, _to_device
from llm_tiny.data.prepare import PreparedData
from llm_tiny.errors import UserError

if TYPE_CHECKING:
    from llm_tiny.config import RunConfig

MASK_RATE = 0.15  # BERT's share of the tokens chosen in a masked-LM row
MASK_SPLIT = (0.8, 0.1)  # of those: [MASK], a random token; the rest stay as they were


def encoder_row(prompt: Sequence[int], cfg: ModelConfig) -> list[int]:
    """TinyEncoder's input row: [CLS], the prompt, padding to `block_size`."""
    return [cfg.bos_id, *prompt] + [cfg.pad_id] * (cfg.block_size - 1 - len(prompt))


def source_row(prompt: Sequence[int], cfg: ModelConfig) -> list[int]:
    """TinySeq2Seq's source row: the prompt, padding to `block_size`."""
    return [*prompt] + [cfg.pad_id] * (cfg.block_size - len(prompt))


def class_labels(data: PreparedData, split: str, index: np.ndarray, n_classes: int) -> np.ndarray:
    """Each example's answer read as a class 0 .. n_classes - 1 (UserError if it is not one)."""
    tokens = data.tokens(split)
    labels = np.zeros(len(index), dtype=np.int64)
    for i, (start, n_prompt, n) in enumerate(index.tolist()):
        text = data.tokenizer.decode(tokens[start + n_prompt : start + n].tolist()).strip()
        if not (text.isdigit() and int(text) < n_classes):
            raise UserError(
                f"{split} example {i + 1}: answer {text!r} is not a class 0..{n_classes - 1}; "
                "model.arch encoder classifies integer answers (raise model.n_classes?)"
            )
        labels[i] = int(text)
    return labels


class EncoderBatches(ExampleBatches):
    """TinyEncoder's rows: classification rows and, in training, masked-LM rows."""

    def __init__(
        self, tokens, index: np.ndarray, labels: np.ndarray, cfg: ModelConfig, *args, **kw
    ):
        self.labels, self.cfg = labels, cfg
        super().__init__(tokens, index, *args, **kw)

    def _open(self) -> None:
        self.tokens = self.tokens[0 : len(self.tokens)].astype(np.int64)  # examples are small
        longest = int(self.index[:, 1].max()) + 1 if len(self.index) else 0
        if longest > self.block_size:
            raise UserError(
                f"{self.name}: a prompt plus [CLS] has {longest} tokens, more than "
                f"model.block_size = {self.block_size}; raise model.block_size"
            )

    def _batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.full((len(rows), self.block_size), self.cfg.pad_id, dtype=np.int64)
        y = np.full((len(rows), self.block_size), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            start, n_prompt, _ = self.index[r]
            x[i, 0] = self.cfg.bos_id
            x[i, 1 : 1 + n_prompt] = self.tokens[start : start + n_prompt]
            y[i, 0] = self.labels[r]
        return x, y

    def get_batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._batch(self._rows(step, micro, len(self.index)))
        self._mask(x, y, step, micro)
        return _to_device(x, self.device), _to_device(y, self.device)

    def _mask(self, x: np.ndarray, y: np.ndarray, step: int, micro: int) -> None:
        """Turn a share `mlm_prob` of the rows into masked-LM rows, in place."""
        B, T = x.shape
        G = self.micro_batches * B  # the draws cover the global batch; this micro-batch's slice
        rng = np.random.default_rng([self.seed, step, 1])
        mine = slice(micro * B, (micro + 1) * B)
        mlm_row = rng.random(G)[mine] < self.cfg.mlm_prob  # (B,)
        u, how = rng.random((G, T))[mine], rng.random((G, T))[mine]  # (B, T) each
        random_ids = rng.integers(0, self.cfg.vocab_size, (G, T))[mine]
        prompt = (x != self.cfg.pad_id) & (np.arange(T) > 0)  # not [CLS], not padding
        u = np.where(prompt, u, 2.0)
        chosen = (u < MASK_RATE) | (u == u.min(axis=1, keepdims=True))  # at least one a row
        chosen &= prompt & mlm_row[:, None]
        y[mlm_row, 0] = -1  # a masked-LM row has no class target
        y[chosen] = x[chosen]
        x[chosen & (how < MASK_SPLIT[0])] = self.cfg.mask_id
        swap = chosen & (how >= MASK_SPLIT[0]) & (how < sum(MASK_SPLIT))
        x[swap] = random_ids[swap]

    def _eval_rows(self, stride: int | None) -> tuple[Sequence, np.ndarray]:
        return np.arange(len(self.index)), np.ones(len(self.index), dtype=np.int64)  # a class each


class Seq2SeqBatches(ExampleBatches):
    """TinySeq2Seq's rows: the source, then the decoder's input; the target answer."""

    def __init__(self, tokens, index: np.ndarray, cfg: ModelConfig, *args, **kw):
        self.cfg = cfg
        super().__init__(tokens, index, *args, **kw)

    def _open(self) -> None:
        self.tokens = self.tokens[0 : len(self.tokens)].astype(np.int64)
        answers = self.index[:, 2] - self.index[:, 1]
        self.answer_len = int(answers.max()) if len(self.index) else 1  # D
        longest = max(int(self.index[:, 1].max()) if len(self.index) else 0, self.answer_len)
        if longest > self.block_size:
            raise UserError(
                f"{self.name}: a prompt or answer has {longest} tokens, more than "
                f"model.block_size = {self.block_size}; raise model.block_size"
            )

    def _batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        S, D = self.block_size, self.answer_len
        x = np.full((len(rows), S + D), self.cfg.pad_id, dtype=np.int64)
        y = np.full((len(rows), D), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            start, n_prompt, n = self.index[r]
            answer = self.tokens[start + n_prompt : start + n]
            x[i, :n_prompt] = self.tokens[start : start + n_prompt]
            x[i, S] = self.cfg.bos_id
            x[i, S + 1 : S + len(answer)] = answer[:-1]
            y[i, : len(answer)] = answer
        return x, y


def open_split(
    data: PreparedData,
    split: str,
    cfg: RunConfig,
    device: torch.device | str = "cpu",
    *,
    micro_batches: int = 1,
    batch_size: int | None = None,
) -> ExampleBatches | batches.TokenWindows:
    """The batch source of a prepared split for `cfg.model.arch` (see `batches.open_split`)."""
    m = cfg.model
    if m.arch == "decoder":
        return batches.open_split(
            data, split, cfg, device, micro_batches=micro_batches, batch_size=batch_size
        )
    B = cfg.train.batch_size if batch_size is None else batch_size
    args = (m.block_size, B, cfg.train.seed, device, micro_batches)
    name = f"{split} split ({data.data_dir})"
    index = np.load(data.data_dir / f"{split}.idx.npy", allow_pickle=False)
    if m.arch == "encoder":
        labels = class_labels(data, split, index, m.n_classes)
        return EncoderBatches(data.tokens(split), index, labels, m, *args, name=name)
    return Seq2SeqBatches(data.tokens(split), index, m, *args, name=name)
