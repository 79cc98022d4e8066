"""The math of task scores, as pure functions: log-likelihoods of continuations (batched),
the choice a model makes, centered accuracy, answer extraction, and the text-overlap metrics.

A continuation's log-likelihood is the sum over its tokens of log p(token | everything before),
from one forward pass over `context + continuation` (the model sees exactly the text it would
see when generating). The pair is tokenized as lm-evaluation-harness does, so that both score
the same tokens (the parity test holds them to 1e-4):

    white space at the end of the context moves to the continuation ("Q: ... A: " + "4" is
    scored as "Q: ... A:" + " 4", the way the text is tokenized as one piece);
    whole = encode(context + continuation); context_ids = encode(context);
    continuation_ids = whole[len(context_ids):]

A sequence longer than `block_size + 1` tokens keeps its last `block_size + 1` (the context is
cut on the left). Centered accuracy puts chance at 0 and a perfect score at 1, so tasks with
different numbers of choices average fairly (nanochat's CORE metric):

    centered = (accuracy - baseline) / (1 - baseline)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm_tiny.errors import UserError


@dataclass(frozen=True)
class Scored:
    """A continuation's log-likelihood (nats, summed over its tokens), its token count, and
    whether every one of its tokens is the model's most likely next token."""

    logprob: float
    tokens: int
    greedy: bool


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing white space to the continuation.

    >>> split_pair("Q: 2+2 A: ", "4")
    ('Q: 2+2 A:', ' 4')
    """
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The ids of the context alone, and the ids of the whole text past as many tokens.

    NOTE: the model reads `encode(context) + continuation_ids`, which is not always
    `encode(context + continuation)`: a merge can straddle the cut. lm-eval does the same, and
    parity needs the very same tokens."""
    context, continuation = split_pair(context, continuation)
    whole = tokenizer.encode(context + continuation)
    head = tokenizer.encode(context)
    return head, whole[len(head) :]


@torch.no_grad()
def score_continuations(
    model: nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    block_size: int,
    batch_size: int = 32,
) -> list[Scored]:
    """`Scored` for each (context ids, continuation ids): batches of up to `batch_size`
    sequences of similar length, padded on the right (causal attention never sees the
    padding), one forward pass each."""
    device = next(model.parameters()).device
    items = []
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            raise ValueError(f"request {i}: the continuation has no tokens")
        if len(cont) > block_size:
            raise UserError(
                f"a continuation of {len(cont)} tokens is longer than the context ({block_size})"
            )
        if not ctx:
            raise ValueError(f"request {i}: the context has no tokens")
        seq = (ctx + cont)[-(block_size + 1) :]
        items.append((i, seq[:-1], seq[-len(cont) :]))
    items.sort(key=lambda t: -len(t[1]))
    out: list[Scored | None] = [None] * len(items)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            width = len(chunk[0][1])
            x = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
            for row, (_, inp, _) in enumerate(chunk):
                x[row, : len(inp)] = torch.tensor(inp, device=device)
            logits, _ = model(x)  # (B, T, V)
            logp = F.log_softmax(logits.float(), dim=-1)
            for row, (i, inp, cont) in enumerate(chunk):
                n = len(cont)
                part = logp[row, len(inp) - n : len(inp)]  # (n, V): predictions of cont
                target = torch.tensor(cont, device=device)
                lp = part.gather(1, target[:, None]).sum()
                greedy = bool((part.argmax(dim=-1) == target).all())
                out[i] = Scored(float(lp), n, greedy)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def pick(logprobs: Sequence[float], lengths: Sequence[int] | None = None) -> int:
    """The chosen index: the highest log-likelihood, or per unit of length when `lengths` is
    given (lm-eval's acc_norm divides by the choice's length in characters). Ties: the first.

    >>> pick([-3.0, -2.0]), pick([-3.0, -2.0], [6, 2])
    (1, 0)
    """
    scores = list(logprobs) if lengths is None else [lp / n for lp, n in zip(logprobs, lengths)]
    return max(range(len(scores)), key=scores.__getitem__)


def centered(accuracy: float, baseline: float) -> float:
    """Accuracy rescaled so that chance is 0 and perfect is 1 (below chance is negative).

    >>> centered(0.625, 0.25), centered(0.25, 0.25), centered(0.5, 0.0)
    (0.5, 0.0, 0.5)
    """
    return (accuracy - baseline) / (1.0 - baseline)


def cut_at(text: str, until: Sequence[str]) -> str:
    """`text` up to the first of the stop strings.

    >>> cut_at("42\\nQ: next", ["\\n"])
    '42'
    """
    cut = min((i for i in (text.find(u) for u in until) if i >= 0), default=len(text))
    return text[:cut]


def extract_answer(text: str, until: Sequence[str], pattern: str | None = None) -> str:
    """The answer in a generation: the text before the first stop string, then, with
    `pattern`, its first group (or whole match) of the first match ("" when none); stripped.

    >>> extract_answer(" The answer is 12.\\nQ:", ["\\n"], r"answer is (\\d+)")
    '12'
    """
    text = cut_at(text, until)
    if pattern is not None:
        m = re.search(pattern, text)
        if m is None:
            return ""
        text = m.group(1) if m.groups() else m.group(0)
    return text.strip()


def text_overlap(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU and chrF (`sacrebleu`) and mean ROUGE-1/2/L F-measures (`rouge-score`,
    the best over an example's references), each 0-100. The libraries the field reports with:
    scores agree with papers only when computed the same way, so none is written here. A
    library that is not installed leaves its scores out."""
    out: dict[str, float] = {}
    try:
        import sacrebleu
    except ImportError:
        sacrebleu = None
    if sacrebleu is not None:
        # sacrebleu takes reference *streams*; an example with fewer references repeats its first.
        most = max(len(r) for r in references)
        streams = [[r[min(k, len(r) - 1)] for r in references] for k in range(most)]
        out["bleu"] = float(sacrebleu.corpus_bleu(predictions, streams).score)
        out["chrf"] = float(sacrebleu.corpus_chrf(predictions, streams).score)
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        return out
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=False)
    sums = dict.fromkeys(kinds, 0.0)
    for pred, refs in zip(predictions, references):
        best = scorer.score_multi(refs, pred)
        for k in kinds:
            sums[k] += best[k].fmeasure
    out |= {k: 100.0 * v / max(len(predictions), 1) for k, v in sums.items()}
    return out
