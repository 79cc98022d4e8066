"""`generate` and `generate_stream`: the tensor-in, tensor-out face of the decoding engine.

Both are thin wrappers over `engine.Decoder` (the one decoding loop; the window, the cache and
the stop rules are described there) with one `params.SamplingParams`: pass one, or name its
fields as keyword arguments (`temperature=0`, `top_p=0.9`, `stop_tokens=[eot]`, ...); a field
left out takes its one default, the run config's (`SampleConfig`: temperature 0.8, top-p 0.95).
Values are checked once, here, and raise `ValueError`.

Unlike `engine.run`, rows share the caller's `generator` (None: torch's global one), drawing
from it together as one `torch.multinomial` over the batch would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from llm_tiny.infer.engine import Decoder, Row, generating
from llm_tiny.infer.params import SamplingParams
from llm_tiny.model import TinyGPT
from llm_tiny.train.checkpoint import unwrap_model


def check_prompt(model: nn.Module, idx: Tensor, single: bool) -> TinyGPT:
    """Check the prompt idx (B, T) and return the bare TinyGPT: generation runs eagerly,
    because a compiled graph would be rebuilt for every cache length."""
    if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.size(1) == 0:
        shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a non-empty (batch, time) tensor of token ids, got {shape}")
    if idx.dtype not in (torch.long, torch.int32):
        raise ValueError(f"idx must hold integer token ids (torch.long), got {idx.dtype}")
    if single and idx.size(0) != 1:
        raise ValueError(f"expected one prompt, idx of shape (1, T); got {tuple(idx.shape)}")
    return unwrap_model(model)


def _params(params: SamplingParams | None, max_new_tokens: int | None, values: Any):
    if params is not None and not isinstance(params, SamplingParams):
        raise TypeError(
            f"params must be a SamplingParams, got {type(params).__name__}; pass sampling "
            "values by name (temperature=...)"
        )
    if max_new_tokens is not None:
        values["max_new_tokens"] = max_new_tokens
    return (params or SamplingParams()).replace(**values)


def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int | None = None,
    params: SamplingParams | None = None,
    *,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    **values: Any,
) -> Tensor:
    """Continue each row of idx (B, T) by up to `max_new_tokens` tokens: (B, T + new).

    A row ends after one of `stop_tokens` (included) and then repeats it, so that the result
    stays rectangular. Deterministic for a seeded `generator`, which must live on the model's
    device. `use_cache=False` recomputes the window every step (slow; the reference the cache
    is checked against) and gives the same tokens. A model wrapped by `torch.compile` or DDP
    is unwrapped: generation runs eagerly.
    """
    params = _params(params, max_new_tokens, values)
    model = check_prompt(model, idx, single=False)
    with generating(model):
        decoder = Decoder(model, use_cache=use_cache)
        rows = [decoder.add(Row(p, params, generator)) for p in idx.tolist()]
        while decoder.busy:
            decoder.step()
    longest = max(len(r.tokens) for r in rows)
    out = [r.tokens + r.tokens[-1:] * (longest - len(r.tokens)) for r in rows]
    return torch.tensor(out, dtype=torch.long, device=idx.device)


def generate_stream(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int | None = None,
    params: SamplingParams | None = None,
    *,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    **values: Any,
) -> Iterator[int]:
    """Like `generate` for one prompt idx (1, T), but yield each new token id as it is made.

    Arguments are checked at the call, before the first token is asked for.
    """
    params = _params(params, max_new_tokens, values)
    model = check_prompt(model, idx, single=True)

    def tokens() -> Iterator[int]:
        with generating(model):
            decoder = Decoder(model, use_cache=use_cache)
            decoder.add(Row(idx[0].tolist(), params, generator))
            while decoder.busy:
                for _, event in decoder.step():
                    if event.token is not None:
                        yield event.token

    return tokens()
