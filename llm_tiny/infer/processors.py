"""Logits processors: pure functions of next-token logits (B, V), each usable and tested alone.

    apply_temperature   logits / T; T = 0 keeps only the argmax (greedy decoding)
    top_k_filter        keep the k largest logits
    top_p_filter        keep the smallest set of tokens whose probability adds up to >= p
                        (nucleus sampling, Holtzman et al. 2019)
    repetition_penalty  CTRL's penalty on tokens already in the sequence (Keskar et al. 2019)
    no_repeat_ngram     forbid tokens that would repeat an n-gram of the sequence
    sample_next         the first three, then one draw per row

They trust their arguments: values are checked once, when a `params.SamplingParams` is built,
not on every token. Each matches the logits processor of the same name in Hugging Face
transformers (tests/unit/test_processors.py compares them on random and tied logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NEG_INF = float("-inf")


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide logits (..., V) by the temperature; 0 keeps only the largest logit.

    [1., 2., 4.] at 2.0 -> [0.5, 1.0, 2.0]; at 0.0 -> [-inf, -inf, 4.0]. Below 1 sharpens the
    distribution, above 1 flattens it. At 0 the first maximal entry survives, like argmax.
    """
    if temperature == 0:
        keep = F.one_hot(logits.argmax(dim=-1), logits.size(-1)).bool()
        return logits.masked_fill(~keep, NEG_INF)
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Set every logit (..., V) below the k-th largest of its row to -inf.

    [1., 3., 2., 5.] with k=2 -> [-inf, 3., -inf, 5.]. Logits tied with the k-th largest are
    kept too, so a row may keep more than k tokens; k >= V changes nothing.
    """
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep, per row of logits (..., V), the smallest set of most probable tokens whose total
    probability is >= p; set the rest to -inf. The most probable token always stays.

    Probabilities [0.5, 0.25, 0.125, 0.125]: p=0.5 keeps token 0, p=0.6 and p=0.75 keep tokens
    0 and 1, p=1 keeps all four. Among tied tokens the lower ids are kept first.
    """
    if p == 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = F.softmax(sorted_logits.float(), dim=-1)
    # A token is dropped when the tokens ranked above it already reach p, i.e. when it and
    # every less likely token together hold <= 1 - p. NOTE: summed from the least likely end,
    # not as cumsum - probs from the top: that subtraction of two rounded float32 sums lands
    # just below p when the exact answer is p (ten tied tokens with p = 0.6 kept 7, not 6).
    tail = probs.flip(-1).cumsum(dim=-1).flip(-1)  # this token's probability and all below
    drop_sorted = tail <= 1 - p
    drop_sorted[..., 0] = False  # the most probable token always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def repetition_penalty(logits: Tensor, seq: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019): in each row of logits (B, V), the tokens
    that occur in that row of `seq` (B, L) have a positive logit divided by `penalty` and a
    negative one multiplied by it, so with penalty > 1 they become less likely either way.

    [2., -1., 0.5] after tokens [0, 1] with penalty 2 -> [1., -2., 0.5]. Penalty 1 is a no-op.
    """
    if penalty == 1:
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, seq, True)
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def repeating_tokens(seq: list[int], n: int) -> set[int]:
    """The tokens that would end `seq` with an n-gram it already contains: for every earlier
    place where its last n - 1 tokens occur, the token that followed them there.

    [1, 2, 3, 1, 2] with n = 3 -> {3} (1 2 3 again); with n = 2 -> {3} (2 3 again); n = 1
    bans every token seen. n = 0 bans nothing.
    """
    if n < 1 or len(seq) < n - 1:
        return set()
    tail = seq[len(seq) - n + 1 :] if n > 1 else []
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i : i + n - 1] == tail}


def no_repeat_ngram(logits: Tensor, seq: Tensor, n: int) -> Tensor:
    """Set to -inf, in each row of logits (B, V), the tokens that would repeat an n-gram of
    that row of `seq` (B, L) (`repeating_tokens`); n = 0 is a no-op."""
    if n == 0:
        return logits
    banned = torch.zeros_like(logits, dtype=torch.bool)
    for row, tokens in enumerate(seq.tolist()):
        banned[row, sorted(repeating_tokens(tokens, n))] = True
    return logits.masked_fill(banned, NEG_INF)


def discourage_repeats(logits: Tensor, seq: Tensor, penalty: float, ngram: int) -> Tensor:
    """Both anti-repetition rules on the next-token logits (B, V) of sequences `seq` (B, L)."""
    return no_repeat_ngram(repetition_penalty(logits, seq, penalty), seq, ngram)


def filtered(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """Logits (B, V) in float32 after temperature (> 0), top-k and top-p: what to sample from."""
    logits = apply_temperature(logits.float(), temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def sample_next(
    logits: Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token id per row of logits (B, V) -> (B,). Temperature 0 is greedy argmax and
    draws nothing from the generator."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(filtered(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
