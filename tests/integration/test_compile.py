"""`torch.compile` of a tiny model on the CPU: the same logits and gradients as eager mode.
(Inductor runs a C++ compiler and worker processes, so this is no unit test; the rest of the
model is tests/unit/test_model.py.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import lively_model

from llm_tiny.config import ModelConfig
from llm_tiny.model.model import TinyGPT

V = 32  # vocabulary of the test models


def tiny(**overrides) -> ModelConfig:
    base = {"vocab_size": V, "block_size": 8, "n_layer": 2, "n_head": 4, "n_embd": 16}
    return ModelConfig(**{**base, **overrides})


def build(seed: int = 0, **overrides) -> TinyGPT:
    """`helpers.lively_model` of the `tiny` config: every parameter ~ N(0, 0.3)."""
    return lively_model(seed, **dataclasses.asdict(tiny(**overrides)))


def tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method:DeprecationWarning")  # torch's own
def test_compiled_model_matches_eager():
    model = build(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2).train()
    compiled = torch.compile(model)
    idx, targets = tokens(2, 8), tokens(2, 8, seed=1)
    logits, loss = compiled(idx, targets)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    eager_logits, eager_loss = model(idx, targets)
    eager_loss.backward()
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=1e-5)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)
