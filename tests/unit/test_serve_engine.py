"""The server's threaded driver of the decoding engine against `sampling.generate` (the CLI's
path), and the protocol's pure parts (stop strings, chat messages, request checks) on worked
examples."""

from __future__ import annotations

import queue

import helpers
import pytest
import torch

from llm_tiny.config import SampleConfig
from llm_tiny.infer.params import SamplingParams
from llm_tiny.infer.prompt import render_chat
from llm_tiny.infer.sampling import generate
from llm_tiny.model import TinyGPT
from llm_tiny.serve.engine import Engine

V = 40


def lively_model(**overrides) -> TinyGPT:
    """`helpers.lively_model`: weights ~ N(0, 0.3), so that mistakes show."""
    base = {"vocab_size": V, "block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32}
    return helpers.lively_model(0, **{**base, **overrides})


def run_all(engine: Engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[tuple[list, str]]:
    """Submit every job at once; (tokens, finish reason) of each, in order."""
    done: queue.Queue = queue.Queue()
    results: dict[int, tuple[list[int], str]] = {}

    def emitter(i: int):
        tokens: list[int] = []

        def emit(ev) -> None:
            if ev.token is not None:
                tokens.append(ev.token)
            if ev.finish is not None:
                results[i] = (tokens, ev.finish)
                done.put(i)

        return emit

    for i, (ids, settings) in enumerate(jobs):
        engine.submit(ids, settings, emitter(i))
    for _ in jobs:
        done.get(timeout=60)
    return [results[i] for i in range(len(jobs))]


def reference(model: TinyGPT, ids: list[int], s: SamplingParams) -> tuple[list[int], str]:
    """The CLI's path for one prompt: `generate` with the same params and seed."""
    g = torch.Generator().manual_seed(s.seed)
    out = generate(model, torch.tensor([ids]), params=s, generator=g)[0, len(ids) :].tolist()
    stopped = bool(out) and out[-1] in s.stop_tokens
    return out, "stop" if stopped else "length"


P = SamplingParams
SETTINGS = [
    P(max_new_tokens=40, temperature=0.9, top_k=20, seed=1),  # slides past block_size 16
    P(max_new_tokens=30, temperature=0.0, seed=2),
    P(max_new_tokens=25, temperature=1.2, top_p=0.8, seed=3, stop_tokens=(7, 8)),
    P(max_new_tokens=20, temperature=1.0, repetition_penalty=1.5, no_repeat_ngram=2, seed=4),
    P(max_new_tokens=1, temperature=0.7, top_p=None, seed=5),
]
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13] * 10, [3, 3, 3, 3]]


@pytest.mark.parametrize(
    ("pos_emb", "max_batch"), [("rope", 1), ("rope", 3), ("rope", 16), ("learned", 16)]
)
def test_batched_sequences_equal_the_cli_loop(pos_emb, max_batch):
    model = lively_model(pos_emb=pos_emb)
    jobs = [(p, s) for p in PROMPTS for s in SETTINGS]  # 25 sequences join and leave
    engine = Engine(model, torch.device("cpu"), max_batch=max_batch).start()
    try:
        got = run_all(engine, jobs)
        stats = engine.stats()
    finally:
        engine.stop()
    assert got == [reference(model, p, s) for p, s in jobs]
    assert stats["active"] == stats["waiting"] == 0 and stats["finished"] == len(jobs)
    assert stats["max_rows"] == max_batch  # the batch really filled up


def test_logprobs_are_the_models_own():
    model = lively_model()
    engine = Engine(model, torch.device("cpu")).start()
    events: queue.Queue = queue.Queue()
    try:
        engine.submit([1, 2, 3], P(max_new_tokens=1, temperature=0.0, logprobs=3), events.put)
        ev = events.get(timeout=30)
    finally:
        engine.stop()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([[1, 2, 3]]))[0][0, -1], dim=-1)
    top = logp.topk(3)
    assert ev.token == int(logp.argmax()) and ev.finish == "length"
    assert ev.logprob == pytest.approx(float(logp.max()), abs=1e-5)
    assert [t for t, _ in ev.top] == top.indices.tolist()
    assert [v for _, v in ev.top] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_cancel_stops_a_sequence_and_the_engine_keeps_going():
    engine = Engine(lively_model(), torch.device("cpu")).start()
    events: queue.Queue = queue.Queue()
    try:
        seq = engine.submit([1], P(max_new_tokens=10**9), events.put)
        events.get(timeout=30)
        seq.cancel()
        engine.wake()
        while (ev := events.get(timeout=30)).finish is None:
            pass
        assert ev.finish == "cancelled"
        assert engine.stats()["active"] == 0 and engine.stats()["cancelled"] == 1
        assert run_all(engine, [([2], P(max_new_tokens=3, seed=0))])[0][1] == "length"
        assert engine.call(lambda: 6 * 7).result(timeout=30) == 42
    finally:
        engine.stop()


# ----------------------------------------------------------------------------- protocol

protocol = pytest.importorskip("llm_tiny.serve.protocol", exc_type=ImportError)


def test_text_stream_holds_back_a_possible_stop_string():
    t = protocol.TextStream(["\nUser:", "END"])
    assert [t.push(x) for x in ["Hello", " E", "N", "D?", "x"]] == ["Hello", " ", "", "", ""]
    assert t.stopped
    t = protocol.TextStream(["END"])
    assert [t.push("a E"), t.push("nd"), t.push("E", final=True)] == ["a ", "End", "E"]
    assert not t.stopped
    assert protocol.TextStream([]).push("anything") == "anything"


def test_chat_template_of_a_request():
    msgs = [{"role": r, "content": c} for r, c in
            [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye")]]  # fmt: skip
    req = protocol.ChatRequest(model="m", messages=msgs)
    assert render_chat(req.conversation()) == (
        "Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:"
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"n": 17}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"seed": -1}, "seed"),
    ],
)
def test_request_checks_name_the_field(fields, param):
    req = protocol.CompletionRequest(model="m", prompt="x", **fields)
    with pytest.raises(protocol.ApiError) as e:
        protocol.sampling_params(req, SampleConfig())
        protocol.check_values(req, None, cap=100)
    assert e.value.status == 400 and e.value.param == param
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}
