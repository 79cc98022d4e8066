"""The decoding engine: its draw against torch.multinomial, `run` on prompts of different
lengths against one prompt at a time, rows joining a batch mid-way, and logprobs against the
model's own."""

from __future__ import annotations

import helpers
import pytest
import torch

from llm_tiny.infer.engine import Decoder, Row, generating, run
from llm_tiny.infer.params import SamplingParams
from llm_tiny.infer.processors import filtered
from llm_tiny.infer.sampling import generate
from llm_tiny.model import TinyGPT

V = 40


def lively_model(**overrides) -> TinyGPT:
    """`helpers.lively_model`: weights ~ N(0, 0.3), so that mistakes show."""
    base = {"vocab_size": V, "block_size": 12, "n_layer": 2, "n_head": 4, "n_embd": 32}
    return helpers.lively_model(0, **{**base, **overrides})


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13] * 8, [3, 3, 3, 3]]


def alone(model, prompt: list[int], params: SamplingParams, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    out = generate(model, torch.tensor([prompt]), params=params, generator=g)
    tokens = out[0, len(prompt) :].tolist()
    stop = next((i for i, t in enumerate(tokens) if t in params.stop_tokens), None)
    return tokens if stop is None else tokens[: stop + 1]


@pytest.mark.parametrize("shape", [(1, 512), (3, 512), (1, 40), (5, 40)])
def test_the_batched_draw_is_torch_multinomial(shape):
    # Rows with their own generators, and a block of rows sharing one, as the engine draws.
    model = lively_model()
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0])) * 3
    for k, p in [(None, None), (5, None), (None, 0.8)]:
        probs = torch.softmax(filtered(logits, 0.9, k, p), dim=-1)
        for seed in range(20):
            rows = [
                Row([1], SamplingParams(temperature=0.9, top_k=k, top_p=p), g)
                for g in [torch.Generator().manual_seed(seed + i) for i in range(shape[0])]
            ]
            shared = torch.Generator().manual_seed(seed)
            decoder = Decoder(model)
            decoder.rows = rows
            got = decoder._draw(logits)
            want = [
                int(
                    torch.multinomial(
                        probs[i : i + 1], 1, generator=torch.Generator().manual_seed(seed + i)
                    )
                )
                for i in range(shape[0])
            ]
            assert got == want
            for r in rows:
                r.generator = shared
            shared.manual_seed(seed)
            got = decoder._draw(logits)
            want = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))
            assert got == want.squeeze(-1).tolist()


@pytest.mark.parametrize("max_batch", [None, 2])
@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_run_equals_each_prompt_alone(max_batch, pos_emb):
    model = lively_model(pos_emb=pos_emb)
    for params in [
        SamplingParams(max_new_tokens=30, temperature=1.1, top_k=20, seed=5),  # slides past 12
        SamplingParams(max_new_tokens=20, temperature=0.0, stop_tokens=(7,)),
        SamplingParams(max_new_tokens=15, repetition_penalty=1.5, no_repeat_ngram=2, seed=1),
    ]:
        got = run(model, PROMPTS, params, max_batch=max_batch)
        for i, (prompt, completion) in enumerate(zip(PROMPTS, got)):
            want = alone(model, prompt, params, params.seed + i)
            assert completion.tokens == want
            stopped = bool(want) and want[-1] in params.stop_tokens
            assert completion.finish == ("stop" if stopped else "length")


def test_rows_joining_a_running_batch_equal_rows_alone():
    model = lively_model(pos_emb="rope")
    params = SamplingParams(max_new_tokens=18, temperature=1.0, top_p=0.9, seed=0)
    rows = []
    with generating(model):
        decoder = Decoder(model, max_rows=3)
        for i, prompt in enumerate(PROMPTS):
            rows.append(decoder.add(Row(prompt, params, torch.Generator().manual_seed(i))))
            decoder.step()  # each prompt joins a batch that is already decoding
        while decoder.busy:
            decoder.step()
    for i, (prompt, row) in enumerate(zip(PROMPTS, rows)):
        assert row.generated == alone(model, prompt, params, i)


def test_run_reports_the_models_logprobs_and_stops_nothing_at_zero():
    model = lively_model()
    params = SamplingParams(max_new_tokens=3, temperature=0.0, logprobs=0)
    (got,) = run(model, [[1, 2, 3]], params)
    seq = [1, 2, 3, *got.tokens]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq]))[0][0], dim=-1)
    want = [float(logp[2 + j, seq[3 + j]]) for j in range(3)]
    assert got.logprobs == pytest.approx(want, abs=1e-5)
    assert run(model, [[1]], params.replace(max_new_tokens=0))[0].tokens == []


def test_a_forked_row_grows_on_its_own():
    row = Row([1, 2], SamplingParams())
    row.tokens.append(3)
    twin = row.fork()
    twin.tokens.append(4)
    assert (row.generated, twin.generated) == ([3], [3, 4])
    with pytest.raises(ValueError, match="at least one prompt token"):
        Row([], SamplingParams())
