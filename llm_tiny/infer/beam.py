"""Beam search: keep the `beam_width` most probable continuations instead of sampling.

The beams are rows of an `engine.Decoder`: the same window, cache and sliding as sampling;
each step asks the decoder for the logits of every beam, picks the best (beam, token) pairs,
and keeps those beams (`Decoder.keep`, which reorders the cache) with their new tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm_tiny.infer.engine import Decoder, Row, generating
from llm_tiny.infer.params import SamplingParams
from llm_tiny.infer.processors import discourage_repeats
from llm_tiny.infer.sampling import check_prompt

_DEFAULT = SamplingParams()


def beam_search(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    beam_width: int,
    length_penalty: float = 1.0,
    stop_tokens: Iterable[int] | None = None,
    *,
    use_cache: bool = True,
    repetition_penalty: float = _DEFAULT.repetition_penalty,
    no_repeat_ngram: int = _DEFAULT.no_repeat_ngram,
) -> Tensor:
    """The most probable continuation of one prompt idx (1, T) that a beam search finds: (1, T + n).

    Each step extends every kept sequence (beam) by every token and keeps the `beam_width` best
    by total log-probability. A beam that produces a stop token is finished (stop token
    included). Sequences are ranked by log p / n^length_penalty, n being the number of new
    tokens: 0 compares raw totals (favouring short), 1 the mean per token. The search ends after
    `max_new_tokens` or once `beam_width` beams have finished. Width 1 is greedy decoding.
    Beams rank the log-probabilities after `discourage_repeats` (beam search on its own tends
    to loop: the most probable continuation of a loop is the loop).
    """
    params = SamplingParams(
        max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=tuple(stop_tokens or ()),
        repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram,
    )  # fmt: skip
    model = check_prompt(model, idx, single=True)
    if isinstance(beam_width, bool) or int(beam_width) != beam_width or beam_width < 1:
        raise ValueError(f"beam_width must be an integer >= 1, got {beam_width}")
    if max_new_tokens == 0:
        return idx.clone()
    stops = set(params.stop_tokens)
    W = int(beam_width)

    def rank(logp: float, n: int) -> float:
        return logp / n**length_penalty

    finished: list[tuple[float, list[int]]] = []  # (rank, sequence)
    with generating(model):
        decoder = Decoder(model, use_cache=use_cache)
        prompt = idx[0].tolist()
        for _ in range(W):  # W copies, of which only the first is alive at first
            decoder.add(Row(prompt, params))
        scores = [float("-inf")] * W
        scores[0] = 0.0  # total log-probability of each beam's new tokens
        for step in range(1, max_new_tokens + 1):
            logits = decoder.logits()  # (W, V)
            seq = torch.tensor([r.tokens for r in decoder.rows], device=logits.device)  # (W, L)
            logits = discourage_repeats(logits, seq, repetition_penalty, no_repeat_ngram)
            logp = F.log_softmax(logits, dim=-1)
            V = logp.size(-1)
            candidates = (torch.tensor(scores, device=logp.device)[:, None] + logp).flatten()
            # 2W candidates leave W alive ones even if W of them end with a stop token.
            top, flat = candidates.topk(min(2 * W, candidates.numel()))
            beams, tokens, kept = [], [], []
            for score, f in zip(top.tolist(), flat.tolist()):
                if score == float("-inf") or len(kept) == W:
                    break
                beam, token = divmod(f, V)
                if token in stops:
                    finished.append((rank(score, step), [*decoder.rows[beam].tokens, token]))
                else:
                    beams.append(beam)
                    tokens.append(token)
                    kept.append(score)
            if len(finished) >= W or not kept:
                break
            while len(kept) < W:  # pad with dead beams to keep the batch shape
                beams.append(beams[0])
                tokens.append(tokens[0])
                kept.append(float("-inf"))
            decoder.keep(beams)
            decoder.push(tokens)
            scores = kept
        else:  # ran to max_new_tokens: the live beams compete with the finished ones
            finished += [
                (rank(s, max_new_tokens), r.tokens) for r, s in zip(decoder.rows, scores)
                if s > float("-inf")
            ]  # fmt: skip
        best = max(finished, key=lambda item: item[0])[1]
    return torch.tensor([best], dtype=idx.dtype, device=idx.device)  # (1, T + n)
