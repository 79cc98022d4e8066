"""The model class of each `model.arch`: decoder-only (TinyGPT), encoder-only (TinyEncoder) and
encoder-decoder (TinySeq2Seq). Training, checkpoints and evaluation build models here."""

from __future__ import annotations

from torch import nn

from llm_tiny.config import ModelConfig
from llm_tiny.model.encoder import TinyEncoder
from llm_tiny.model.model import TinyGPT
from llm_tiny.model.seq2seq import TinySeq2Seq

MODELS: dict[str, type[nn.Module]] = {
    "decoder": TinyGPT,
    "encoder": TinyEncoder,
    "encoder_decoder": TinySeq2Seq,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of `cfg.arch`."""
    return MODELS[cfg.arch](cfg)
