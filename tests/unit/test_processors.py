"""The logits processors against Hugging Face transformers' own (an independent reference),
on random logits and on tied ones, where a float32 sum can land exactly on top-p's threshold."""

from __future__ import annotations

import pytest
import torch

from llm_tiny.infer.processors import (
    apply_temperature,
    no_repeat_ngram,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)

lp = pytest.importorskip("transformers.generation.logits_process")


def random_logits(seed: int, rows: int = 4, vocab: int = 50) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def tied_logits(seed: int, rows: int = 4, vocab: int = 20) -> torch.Tensor:
    """Logits from three values only: many ties, inside a row and at the cut."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (rows, vocab), generator=g).float()


def kept(logits: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(logits)


def test_top_p_on_exact_ties_keeps_what_transformers_keeps():
    # The cases: ten (or a hundred) equal tokens, p a multiple of 1/V.
    assert kept(top_p_filter(torch.zeros(1, 10), 0.6)).sum() == 6
    assert kept(top_p_filter(torch.zeros(1, 100), 0.2)).sum() == 20
    for vocab in range(2, 70):
        for k in range(1, vocab + 1):
            logits = torch.zeros(1, vocab)
            want = lp.TopPLogitsWarper(k / vocab)(None, logits.clone())
            assert kept(top_p_filter(logits, k / vocab)).sum() == kept(want).sum(), (vocab, k)


@pytest.mark.parametrize("seed", range(20))
def test_top_p_equals_transformers(seed):
    p = float(torch.rand(1, generator=torch.Generator().manual_seed(seed + 100)))
    logits = random_logits(seed)
    want = lp.TopPLogitsWarper(p)(None, logits.clone())
    assert torch.equal(kept(top_p_filter(logits, p)), kept(want))
    # Tied logits: the same number kept per row, and never a token less likely than a dropped one
    # (which of several tied tokens stays is the sort's choice, in either library).
    logits = tied_logits(seed)
    ours = top_p_filter(logits, p)
    want = lp.TopPLogitsWarper(p)(None, logits.clone())
    assert torch.equal(kept(ours).sum(-1), kept(want).sum(-1))
    for row in range(logits.size(0)):
        dropped = logits[row][~kept(ours)[row]]
        assert dropped.numel() == 0 or dropped.max() <= logits[row][kept(ours)[row]].min()


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("k", [1, 3, 20, 50])
def test_top_k_equals_transformers(seed, k):
    for logits in (random_logits(seed), tied_logits(seed)):
        want = lp.TopKLogitsWarper(k)(None, logits.clone())
        assert torch.equal(top_k_filter(logits, k), want)


@pytest.mark.parametrize("t", [0.3, 0.8, 1.0, 2.5])
def test_temperature_equals_transformers(t):
    logits = random_logits(0)
    torch.testing.assert_close(
        apply_temperature(logits, t), lp.TemperatureLogitsWarper(t)(None, logits.clone())
    )


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(penalty):
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        logits = random_logits(seed, vocab=16)
        seq = torch.randint(0, 16, (4, 9), generator=g)
        want = lp.RepetitionPenaltyLogitsProcessor(penalty)(seq, logits.clone())
        torch.testing.assert_close(repetition_penalty(logits, seq, penalty), want)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_equals_transformers(n):
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        seq = torch.randint(0, 5, (3, 25), generator=g)  # 5 tokens: repeats are frequent
        logits = random_logits(seed, rows=3, vocab=5)
        want = lp.NoRepeatNGramLogitsProcessor(n)(seq, logits.clone())
        assert torch.equal(no_repeat_ngram(logits, seq, n), want)
