"""Logits processors on worked examples and brute-force references; generation with the KV
cache against a plain recomputing loop; beam search against greedy and exhaustive search.
(The processors against transformers' own: tests/unit/test_processors.py.)"""

from __future__ import annotations

import itertools
import math

import helpers
import pytest
import torch
import torch.nn.functional as F

from llm_tiny.infer.beam import beam_search
from llm_tiny.infer.engine import slide_start
from llm_tiny.infer.params import SamplingParams
from llm_tiny.infer.processors import (
    apply_temperature,
    no_repeat_ngram,
    repeating_tokens,
    repetition_penalty,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from llm_tiny.infer.sampling import generate, generate_stream
from llm_tiny.model import TinyGPT

INF = float("inf")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine every parallel
    region can wait milliseconds for the second core (10x slower tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lively_model(seed: int = 0, vocab_size: int = 32, **overrides) -> TinyGPT:
    """`helpers.lively_model`: weights ~ N(0, 0.3), so that greedy decoding does not repeat one
    token (a weak test of a decoding loop)."""
    base = {"vocab_size": vocab_size, "block_size": 8, "n_layer": 2, "n_head": 4, "n_embd": 16}
    return helpers.lively_model(seed, **{**base, **overrides})


def prompt(*shape: int, vocab_size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def reference_greedy(model: TinyGPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding by recomputing the visible window from scratch every step.

    The window is the documented one: at most block_size tokens; when the next token does not
    fit, it restarts from the last block_size // 2 tokens.
    """
    bs = model.config.block_size
    start = max(0, idx.size(1) - bs)
    with torch.no_grad():
        for _ in range(n):
            if idx.size(1) - start > bs:
                start = idx.size(1) - bs // 2
            logits, _ = model(idx[:, start:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


# ----------------------------------------------------------------------------- temperature


def test_temperature_divides_logits():
    logits = torch.tensor([[1.0, 2.0, 4.0]])
    torch.testing.assert_close(apply_temperature(logits, 2.0), torch.tensor([[0.5, 1.0, 2.0]]))
    torch.testing.assert_close(apply_temperature(logits, 1.0), logits)


def test_temperature_zero_keeps_only_the_first_argmax():
    logits = torch.tensor([[1.0, 4.0, 2.0, 4.0], [3.0, 0.0, -1.0, 2.0]])
    out = apply_temperature(logits, 0.0)
    assert out.tolist() == [[-INF, 4.0, -INF, -INF], [3.0, -INF, -INF, -INF]]


@pytest.mark.parametrize("bad", [-0.1, -1, float("nan")])
def test_negative_temperature_is_rejected(bad):
    with pytest.raises(ValueError, match=r"temperature must be >= 0 \(0 means greedy\)"):
        SamplingParams(temperature=bad)


# ----------------------------------------------------------------------------- top-k


def test_top_k_worked_example():
    logits = torch.tensor([[1.0, 3.0, 2.0, 5.0]])
    assert top_k_filter(logits, 2).tolist() == [[-INF, 3.0, -INF, 5.0]]
    assert top_k_filter(logits, 1).tolist() == [[-INF, -INF, -INF, 5.0]]


def test_top_k_keeps_ties_and_ignores_large_k():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert top_k_filter(logits, 2).tolist() == [[-INF, 3.0, 3.0, -INF]]
    assert top_k_filter(logits, 1).tolist() == [[-INF, 3.0, 3.0, -INF]]  # tie at the boundary
    assert torch.equal(top_k_filter(logits, 4), logits)
    assert torch.equal(top_k_filter(logits, 100), logits)


def test_top_k_rows_are_independent():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert top_k_filter(logits, 1).tolist() == [[-INF, -INF, 2.0], [2.0, -INF, -INF]]


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_invalid_top_k_is_rejected(bad):
    with pytest.raises(ValueError, match=r"top_k must be >= 1"):
        SamplingParams(top_k=bad)


# ----------------------------------------------------------------------------- top-p


def test_top_p_worked_example():
    logits = torch.tensor([[0.5, 0.125, 0.25, 0.0625, 0.0625]]).log()  # exact binary fractions
    ps = (0.5, 0.6, 0.75, 0.8, 1)
    kept = {p: torch.isfinite(top_p_filter(logits, p))[0].tolist() for p in ps}
    assert kept[0.5] == [True, False, False, False, False]
    assert kept[0.6] == [True, False, True, False, False]
    assert kept[0.75] == [True, False, True, False, False]  # 0.5 + 0.25 reaches 0.75 exactly
    assert kept[0.8] == [True, True, True, False, False]  # 0.875: the smallest set >= 0.8
    assert kept[1] == [True] * 5


def test_top_p_always_keeps_the_most_probable_token():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 5.0, -2.0]])
    out = top_p_filter(logits, 1e-9)
    assert torch.isfinite(out).tolist() == [[False, True, False], [True, False, False]]
    assert out[0, 1] == 3.0  # kept logits are unchanged


def test_top_p_matches_a_brute_force_smallest_set():
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for _ in range(300):
        logits = torch.randn(1, 10, generator=gen) * 2
        p = torch.rand(1, generator=gen).item()
        probs = F.softmax(logits[0].double(), dim=-1)
        order = probs.argsort(descending=True).tolist()
        cumulative = list(itertools.accumulate(probs[order].tolist()))
        if min(abs(c - p) for c in cumulative) < 1e-5:
            continue  # too close to call in float32
        n = next(i + 1 for i, c in enumerate(cumulative) if c >= p)  # smallest set with mass >= p
        expected = set(order[:n])
        kept = set(torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist())
        assert kept == expected
        checked += 1
    assert checked > 250


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, float("nan")])
def test_invalid_top_p_is_rejected(bad):
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        SamplingParams(top_p=bad)


# ----------------------------------------------------------------------------- sample_next


def test_sample_next_greedy_uses_no_randomness():
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert sample_next(logits, temperature=0, generator=gen).tolist() == [1, 0]
    assert torch.equal(gen.get_state(), state)
    assert sample_next(logits, 1.0, top_k=1, generator=gen).tolist() == [1, 0]


def test_sample_next_follows_the_filtered_distribution():
    logits = torch.tensor([0.1, 0.2, 0.3, 0.4]).log().expand(40_000, 4)
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, 1.0, generator=gen), minlength=4) / 40_000
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.01, rtol=0)
    counts = torch.bincount(sample_next(logits, 1.0, top_k=2, generator=gen), minlength=4)
    counts = counts / 40_000
    torch.testing.assert_close(counts, torch.tensor([0, 0, 3 / 7, 4 / 7]), atol=0.01, rtol=0)
    counts = torch.bincount(sample_next(logits, 0.5, generator=gen), minlength=4) / 40_000
    sharp = torch.tensor([0.01, 0.04, 0.09, 0.16]) / 0.30  # p^(1/T) renormalised, T = 0.5
    torch.testing.assert_close(counts, sharp, atol=0.01, rtol=0)


def test_sample_next_is_deterministic_for_a_seed():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    a = sample_next(logits, 1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = sample_next(logits, 1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- the window


def test_repetition_penalty_worked_example_and_reference():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    got = repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert got.tolist() == [[1.0, -2.0, 0.5]]
    assert repetition_penalty(logits, torch.tensor([[0]]), 1.0) is logits
    # Against an element-by-element reference on random rows.
    g = torch.Generator().manual_seed(0)
    logits, seq = torch.randn(4, 16, generator=g), torch.randint(0, 16, (4, 9), generator=g)
    want = logits.clone()
    for row in range(4):
        for token in set(seq[row].tolist()):
            v = want[row, token]
            want[row, token] = v / 1.3 if v > 0 else v * 1.3
    torch.testing.assert_close(repetition_penalty(logits, seq, 1.3), want)


def brute_force_repeating(seq: list[int], n: int, vocab: int) -> set[int]:
    """Tokens t for which seq + [t] ends with an n-gram that occurs earlier in seq + [t]."""
    out = set()
    for t in range(vocab):
        full = [*seq, t]
        grams = [tuple(full[i : i + n]) for i in range(len(full) - n + 1)]
        if n >= 1 and grams and grams[-1] in grams[:-1]:
            out.add(t)
    return out


def test_no_repeat_ngram_matches_a_brute_force_search():
    assert repeating_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert repeating_tokens([1, 2, 3, 1, 2], 2) == {3}
    assert repeating_tokens([1, 2, 3], 1) == {1, 2, 3} and repeating_tokens([1, 2], 0) == set()
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 3, 4):
        seq = torch.randint(0, 5, (3, 30), generator=g)
        logits = no_repeat_ngram(torch.zeros(3, 5), seq, n)
        for row in range(3):
            banned = {t for t in range(5) if logits[row, t] == -INF}
            assert banned == brute_force_repeating(seq[row].tolist(), n, 5)


def test_no_repeat_ngram_keeps_generated_text_free_of_repeats():
    model, idx = lively_model(), prompt(1, 4)
    for out in (
        generate(model, idx, 40, temperature=0.0, no_repeat_ngram=3),
        beam_search(model, idx, 40, beam_width=3, no_repeat_ngram=3),
    ):
        ids = out[0].tolist()
        grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
        assert len(grams) == len(set(grams))
    # The defaults change nothing: the same tokens as before the option existed.
    assert torch.equal(
        generate(model, idx, 20, temperature=0.0),
        generate(model, idx, 20, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram=0),
    )
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        generate(model, idx, 5, repetition_penalty=0.0)
    with pytest.raises(ValueError, match="no_repeat_ngram must be >= 0"):
        beam_search(model, idx, 5, beam_width=2, no_repeat_ngram=-1)


def test_slide_start_worked_examples():
    assert slide_start(0, 8, 8) == 0  # fits
    assert slide_start(0, 9, 8) == 5  # keep the last 4
    assert slide_start(5, 12, 8) == 5  # 7 tokens since 5: fits
    assert slide_start(5, 14, 8) == 10
    assert slide_start(0, 2, 1) == 1  # block of 1: keep the newest token


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize(
    "flags",
    [
        {"pos_emb": "learned"},
        {"pos_emb": "rope"},
        {"pos_emb": "rope", "n_kv_head": 2, "attn_impl": "manual"},
        {"pos_emb": "learned", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1},
        {"pos_emb": "alibi", "norm_position": "post", "attn_impl": "tiled"},
    ],
    ids=["learned", "rope", "rope-gqa-manual", "learned-mqa-swiglu", "alibi-post-tiled"],
)
@pytest.mark.parametrize("prompt_len", [1, 5, 11])  # 11 > block_size 8
def test_kv_cache_greedy_equals_full_recomputation(flags, prompt_len):
    model = lively_model(**flags)
    idx = prompt(2, prompt_len)
    expected = reference_greedy(model, idx, 21)  # well past block_size 8: the window slides
    cached = generate(model, idx, 21, temperature=0)
    assert cached.tolist() == expected.tolist()
    assert torch.equal(generate(model, idx, 21, temperature=0, use_cache=False), expected)


@pytest.mark.parametrize("pos_emb", ["learned", "rope", "alibi"])
def test_kv_cache_sampling_equals_full_recomputation(pos_emb):
    # Greedy decoding of a random model soon repeats itself; sampling gives varied sequences,
    # so a token fed at the wrong position or twice would show.
    model = lively_model(pos_emb=pos_emb, n_kv_head=2)
    idx = prompt(3, 2)
    bs, start, seq = model.config.block_size, 0, idx
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _ in range(30):
            if seq.size(1) - start > bs:
                start = seq.size(1) - bs // 2
            logits, _ = model(seq[:, start:])
            seq = torch.cat([seq, sample_next(logits[:, -1], 1.0, generator=gen)[:, None]], dim=1)
    gen = torch.Generator().manual_seed(5)
    out = generate(model, idx, 30, temperature=1.0, top_p=None, generator=gen)
    assert out.tolist() == seq.tolist()
    assert all(len(set(row[2:].tolist())) >= 8 for row in out)


def test_sampling_is_deterministic_for_a_seed_and_cache_independent():
    model = lively_model(pos_emb="rope")
    idx = prompt(3, 2)

    def run(seed: int, use_cache: bool = True) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return generate(
            model, idx, 20, temperature=1.2, top_k=10, top_p=0.9, generator=gen, use_cache=use_cache
        )

    assert torch.equal(run(1), run(1))
    assert torch.equal(run(1), run(1, use_cache=False))
    assert not torch.equal(run(1), run(2))


def test_stream_yields_the_same_tokens_as_generate():
    model = lively_model()
    idx = prompt(1, 3)
    out = generate(model, idx, 15, top_p=0.8, generator=torch.Generator().manual_seed(3))
    stream = generate_stream(model, idx, 15, top_p=0.8, generator=torch.Generator().manual_seed(3))
    first = next(stream)
    assert isinstance(first, int)
    assert [first, *stream] == out[0, 3:].tolist()


def test_stop_tokens_end_generation_and_are_included():
    model = lively_model()
    idx = prompt(2, 3)
    full = reference_greedy(model, idx, 12)
    stop = full[0, 3 + 4].item()  # a token row 0 produces as its 5th new token
    first_stop = [
        row[3:].tolist().index(stop) if stop in row[3:].tolist() else None for row in full
    ]
    out = generate(model, idx, 12, temperature=0, stop_tokens=[stop])
    stopped_at = first_stop[0]
    assert out[0, : 3 + stopped_at + 1].tolist() == full[0, : 3 + stopped_at + 1].tolist()
    assert out[0, -1].item() == stop
    if first_stop[1] is not None:  # row 1 stopped too: it ends on the stop token, repeated
        assert set(out[1, 3 + first_stop[1] :].tolist()) == {stop}
        assert out.size(1) == 3 + max(first_stop) + 1
    streamed = list(generate_stream(model, idx[:1], 12, temperature=0, stop_tokens={stop}))
    assert streamed == full[0, 3 : 3 + stopped_at + 1].tolist()


def test_generate_edge_cases_and_errors():
    model = lively_model().train()
    idx = prompt(2, 3)
    assert torch.equal(generate(model, idx, 0), idx)
    out = generate(model, idx, 4, temperature=0)
    assert model.training  # the mode is restored
    assert not out.is_inference()  # usable outside inference mode, e.g. as training data
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        generate(model, idx, -1)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate(model, idx, 3, temperature=-1)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        generate_stream(model, idx[:1], 3, top_p=0)  # raised at the call, not the first next()
    with pytest.raises(ValueError, match=r"one prompt, idx of shape \(1, T\)"):
        generate_stream(model, idx, 3)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, idx[:, :0], 3)
    with pytest.raises(ValueError, match="integer token ids"):
        generate(model, idx.float(), 3)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method:DeprecationWarning")  # torch's own
def test_generate_unwraps_a_compiled_model():
    model = lively_model()
    idx = prompt(1, 3)
    # generation runs the bare model eagerly: nothing is compiled here
    compiled = generate(torch.compile(model), idx, 5, temperature=0)
    assert torch.equal(compiled, generate(model, idx, 5, temperature=0))


# ----------------------------------------------------------------------------- beam search


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_beam_width_one_is_greedy(pos_emb):
    model = lively_model(pos_emb=pos_emb)
    idx = prompt(1, 3)
    greedy = generate(model, idx, 20, temperature=0)
    assert torch.equal(beam_search(model, idx, 20, beam_width=1), greedy)
    stop = greedy[0, 3 + 6].item()
    assert torch.equal(
        beam_search(model, idx, 20, beam_width=1, stop_tokens=[stop]),
        generate(model, idx, 20, temperature=0, stop_tokens=[stop]),
    )


def exhaustive_best(model, idx, n, stops, length_penalty):
    """Score every continuation of up to n tokens (ending at a stop token or at n) directly."""
    V = model.config.vocab_size
    best, best_rank = None, -math.inf
    for length in range(1, n + 1):
        for tail in itertools.product(range(V), repeat=length):
            if any(t in stops for t in tail[:-1]) or (length < n and tail[-1] not in stops):
                continue  # stopped earlier, or would have continued
            seq = torch.cat([idx, torch.tensor([tail])], dim=1)
            with torch.no_grad():
                logp = F.log_softmax(model(seq[:, :-1])[0][0, idx.size(1) - 1 :].double(), -1)
            total = logp[torch.arange(length), torch.tensor(tail)].sum().item()
            rank = total / length**length_penalty
            if rank > best_rank:
                best, best_rank = seq, rank
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("stops", [(), (0,)], ids=["no-stop", "stop"])
def test_wide_beam_search_equals_exhaustive_search(length_penalty, stops):
    # With 4 tokens and 3 steps, 16 beams hold every live prefix, so the search is exact.
    model = lively_model(vocab_size=4, seed=2)
    idx = prompt(1, 2, vocab_size=4)
    got = beam_search(model, idx, 3, 16, length_penalty=length_penalty, stop_tokens=stops)
    assert got.tolist() == exhaustive_best(model, idx, 3, set(stops), length_penalty).tolist()


def test_beam_search_beats_greedy_in_log_probability():
    model = lively_model(seed=4)
    idx = prompt(1, 2)

    def logprob(seq):
        with torch.no_grad():
            logp = F.log_softmax(model(seq[:, :-1])[0][0, 1:], -1)
        return logp[torch.arange(seq.size(1) - 2), seq[0, 2:]].sum().item()

    greedy = generate(model, idx, 5, temperature=0)
    beam = beam_search(model, idx, 5, beam_width=8, length_penalty=0.0)
    assert logprob(beam) >= logprob(greedy) - 1e-6


def test_beam_search_errors():
    model = lively_model()
    with pytest.raises(ValueError, match="beam_width must be an integer >= 1"):
        beam_search(model, prompt(1, 2), 3, beam_width=0)
    with pytest.raises(ValueError, match=r"one prompt"):
        beam_search(model, prompt(2, 2), 3, beam_width=2)
    assert torch.equal(beam_search(model, prompt(1, 2), 0, beam_width=2), prompt(1, 2))
