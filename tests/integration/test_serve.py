"""`python -m llm_tiny serve` as a real process on 127.0.0.1, driven by the official `openai`
client: models, completions and chat (streamed and not), n > 1, seeds against the sample CLI,
stop strings, logprobs, bad requests, an API key, 16 concurrent streams against a sequential
run, and a disconnect that stops generation."""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from serve_helpers import live_server, request, tiny_checkpoint  # noqa: E402

CAP = 100_000  # --max-tokens-cap: long enough for the disconnect test's endless stream
SAMPLING = {"temperature": 0.9, "top_p": 0.95, "max_tokens": 24}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def url(run_dir):
    with live_server(run_dir, "--max-tokens-cap", str(CAP), "--max-body-bytes", "20000") as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def complete(client, **kw):
    return client.completions.create(model="tiny", **{"prompt": "ROMEO:", **SAMPLING, **kw})


def cli_sample(run_dir, seed: int, capsys) -> str:
    """`python -m llm_tiny sample` (its `main`, in this process) with SAMPLING and `seed`; its
    output is the prompt and the text."""
    from llm_tiny.infer.sample import main

    capsys.readouterr()
    argv = ["--ckpt", str(run_dir), "--prompt", "ROMEO:", "--temperature", "0.9", "--top-p",
            "0.95", "--max-new-tokens", "24", "--seed", str(seed), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    return capsys.readouterr().out


def test_models_and_health(client, url):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    status, health = request(url, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny"


def test_seeded_completions_equal_the_sample_cli(client, run_dir, capsys):
    # Seed 2 ends at the end-of-text token after 12 tokens, seed 1 runs to max_tokens.
    for seed, finish in [(1, "length"), (2, "stop")]:
        r = complete(client, seed=seed)
        assert r.choices[0].finish_reason == finish
        assert cli_sample(run_dir, seed, capsys) == "ROMEO:" + r.choices[0].text + "\n"
        assert r.usage.prompt_tokens == 6 and r.usage.completion_tokens == (24 if seed == 1 else 13)
    assert complete(client, seed=1).choices[0].text == complete(client, seed=1).choices[0].text
    assert complete(client, seed=1).choices[0].text != complete(client, seed=3).choices[0].text


def test_a_truncated_long_prompt_keeps_its_end_as_the_cli_does(client, run_dir, capsys):
    from llm_tiny.infer.sample import main

    prompt = "ROMEO: " + "What say you, my lord? " * 12  # well over the 48-token context
    r = complete(
        client, prompt=prompt, seed=1, max_tokens=8, extra_body={"truncate_prompt_tokens": 48}
    )
    assert r.usage.prompt_tokens == 48
    argv = ["--ckpt", str(run_dir), "--prompt", prompt, "--temperature", "0.9", "--top-p",
            "0.95", "--max-new-tokens", "8", "--seed", "1", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "keeping its last 48 tokens" in out.err
    assert out.out.endswith(r.choices[0].text + "\n")


def test_streamed_completion_equals_the_whole_one(client):
    whole = complete(client, seed=2)
    chunks = list(complete(client, seed=2, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_n_choices_use_consecutive_seeds(client):
    r = complete(client, seed=5, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for j, choice in enumerate(r.choices):
        assert choice.text == complete(client, seed=5 + j).choices[0].text
    streamed = dict.fromkeys(range(3), "")
    for chunk in complete(client, seed=5, n=3, stream=True):
        streamed[chunk.choices[0].index] += chunk.choices[0].text
    assert [streamed[i] for i in range(3)] == [c.text for c in r.choices]


def test_chat_streamed_and_not(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    kw = {"model": "tiny", "messages": messages, "seed": 4, **SAMPLING}
    r = client.chat.completions.create(**kw)
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in (
        "stop", "length",
    )  # fmt: skip
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == r.choices[0].message.content
    # The chat template is a plain prompt: the completions endpoint continues it identically.
    prompt = "Be brief.\n\nUser: Hi\n\nAssistant:"
    same = complete(client, prompt=prompt, seed=4, stop=["\nUser:"])
    assert same.choices[0].text == text


def test_stop_strings_cut_the_text(client):
    text = complete(client, seed=1).choices[0].text
    stop = text[6:9]
    r = complete(client, seed=1, stop=[stop, "never there"])
    assert r.choices[0].text == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in complete(client, seed=1, stop=stop, stream=True))
    assert streamed == r.choices[0].text


def test_logprobs_and_top_k(client):
    r = complete(client, seed=1, logprobs=3, extra_body={"top_k": 5})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens == 24
    for token_lp, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 3 and token_lp <= max(top.values()) + 1e-6 and token_lp < 0
    # top_k = 1 is greedy: the same text for every seed.
    greedy = [complete(client, seed=s, extra_body={"top_k": 1}).choices[0].text for s in (1, 2)]
    assert greedy[0] == greedy[1]


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": CAP + 1}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"logprobs": 9}, "logprobs"),
        ({"extra_body": {"top_k": 0}}, "top_k"),
        ({"prompt": ""}, "prompt"),
        ({"max_tokens": "many"}, "max_tokens"),
    ],
)
def test_bad_values_are_bad_requests(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, **kw)
    assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"
    assert complete(client, seed=1, max_tokens=2).choices[0].finish_reason == "length"


def test_unknown_model_malformed_and_oversized_bodies(client, url):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-5", prompt="x")
    assert e.value.body["code"] == "model_not_found"
    headers = {"Content-Type": "application/json"}
    cases = [
        (b'{"model": "tiny", "prompt": ', 400),  # malformed JSON
        (b'["a list"]', 400),
        (b'{"model": "tiny"}', 400),  # no prompt
        (json.dumps({"model": "tiny", "prompt": "x" * 30_000}).encode(), 413),
    ]
    for body, status in cases:
        got, answer = request(url, "POST", "/v1/completions", body, headers)
        assert got == status and set(answer["error"]) == {"message", "type", "param", "code"}
    got, answer = request(url, "GET", "/v1/nowhere")
    assert got == 404 and "error" in answer
    got, answer = request(url, "GET", "/v1/completions")
    assert got == 405
    assert answer["error"]["message"] == "Method not allowed: GET /v1/completions; use POST"
    assert request(url, "GET", "/favicon.ico") == (204, None)  # the browser's own request
    assert client.models.list().data[0].id == "tiny"  # still answering


def test_unknown_request_fields_are_refused_or_named_back_as_ignored(client):
    """OpenAI's own fields that change nothing here are accepted and named in the
    X-Ignored-Fields header; fields it would act on, and fields OpenAI does not know, are a 400
    in OpenAI's shape, naming the field."""
    raw = client.completions.with_raw_response.create(
        model="tiny", prompt="ab", max_tokens=2, user="me", extra_body={"store": False}
    )
    assert raw.headers["x-ignored-fields"] == "store, user"
    assert raw.parse().choices[0].text is not None
    plain = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert "x-ignored-fields" not in plain.headers
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="ab", extra_body={"tempreature": 0.1})
    assert e.value.body["message"] == "Unrecognized request argument supplied: tempreature"
    assert e.value.body["param"] == "tempreature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="ab", logit_bias={"1": 5})
    assert e.value.body["message"] == "logit_bias is not supported by this server"


def preflight_allows(url: str) -> str | None:
    """The Access-Control-Allow-Origin answer to a browser's preflight from example.org."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("OPTIONS", "/v1/completions", headers={
        "Origin": "http://example.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})  # fmt: skip
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.getheader("access-control-allow-origin")


def test_api_key_and_cors(run_dir, url):
    assert preflight_allows(url) is None  # CORS is off unless asked for
    with live_server(run_dir, "--api-key", "sesame", "--cors", "http://example.org") as keyed:
        good = openai.OpenAI(base_url=keyed + "/v1", api_key="sesame", max_retries=0)
        assert good.models.list().data[0].id == "tiny"
        for key in ("wrong", ""):
            bad = openai.OpenAI(base_url=keyed + "/v1", api_key=key or "x", max_retries=0)
            if not key:
                bad = bad.with_options(default_headers={"Authorization": ""})
            with pytest.raises(openai.AuthenticationError):
                bad.completions.create(model="tiny", prompt="x", max_tokens=1)
        assert request(keyed, "GET", "/health")[0] == 200  # open: it says nothing about the model
        assert preflight_allows(keyed) == "http://example.org"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ckpt", "no/such/run"], "not found"),
        (["--ckpt", "RUN", "--max-batch", "0"], "--max-batch must be >= 1"),
        (["--ckpt", "RUN", "--port", "70000"], "--port must be in"),
    ],
)
def test_serve_command_errors_are_one_line(run_dir, capsys, args, message):
    from llm_tiny.serve import main

    assert main([str(run_dir) if a == "RUN" else a for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("llm_tiny serve: error:")


def test_16_concurrent_streams_equal_a_sequential_run(client, url):
    def stream(seed: int) -> str:
        return "".join(c.choices[0].text for c in complete(client, seed=seed, stream=True))

    sequential = [stream(seed) for seed in range(16)]
    before = request(url, "GET", "/health")[1]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        concurrent_ = list(pool.map(stream, range(16), timeout=60))
    assert time.monotonic() - t0 < 60
    assert concurrent_ == sequential
    after = request(url, "GET", "/health")[1]
    # They were decoded together: some forward passes carried several sequences.
    assert after["max_rows"] > 1 and after["batched_rows"] > before["batched_rows"]


def test_a_disconnect_stops_the_generation(client, url):
    stream = complete(client, seed=1, max_tokens=CAP, stream=True)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    assert request(url, "GET", "/health")[1]["active"] == 1
    stream.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while (health := request(url, "GET", "/health")[1])["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health["active"] == 0 and health["cancelled"] >= 1
    time.sleep(0.3)
    assert request(url, "GET", "/health")[1]["generated_tokens"] == health["generated_tokens"]


def test_an_abandoned_request_that_is_not_streamed_stops_too(url):
    import socket

    # ignore_eos: without it the request may draw the end-of-text token and finish on its own
    # before the client goes away (seed 1 does after 116 tokens; greedy at once).
    body = json.dumps(
        {"model": "tiny", "prompt": "ROMEO:", "max_tokens": CAP, "ignore_eos": True}
    ).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 10
        while not request(url, "GET", "/health")[1]["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        cancelled = request(url, "GET", "/health")[1]["cancelled"]
    deadline = time.monotonic() + 10
    while (health := request(url, "GET", "/health")[1])["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health["active"] == 0 and health["cancelled"] == cancelled + 1, health


def test_playground_helpers_tokenize_and_attention(url, run_dir):
    import torch

    from llm_tiny.train.checkpoint import load_model

    status, tok = request(url, "POST", "/api/tokenize", json.dumps({"prompt": "ROMEO:"}).encode())
    assert status == 200 and "".join(tok["tokens"]) == "ROMEO:" and len(tok["ids"]) == 6
    ids = tok["ids"] + [5, 6]
    status, att = request(url, "POST", "/api/attention", json.dumps({"ids": ids}).encode())
    assert status == 200 and (att["n_layer"], att["n_head"]) == (2, 4)
    model = load_model(run_dir)[0]
    maps = model.attention_maps(torch.tensor([ids]))  # the model's own weights, recomputed
    want = torch.stack([m[0, :, -1] for m in maps])  # (layer, head, T) of the last token
    torch.testing.assert_close(torch.tensor(att["weights"]), want, atol=1e-4, rtol=0)
    status, err = request(url, "POST", "/api/attention", json.dumps({"ids": [10**6]}).encode())
    assert status == 400 and err["error"]["param"] == "ids"


def test_a_prompt_longer_than_the_context_is_refused_unless_truncation_is_asked(client, run_dir):
    from llm_tiny.train.checkpoint import load_model

    _, tok, cfg, _ = load_model(run_dir, torch.device("cpu"))
    block = cfg.model.block_size
    long = "to be or not " * block  # several tokens per repeat: well past the context
    n = len(tok.encode(long))
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, prompt=long, seed=1)
    err = e.value.body
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert f"maximum context length is {block} tokens; the prompt has {n} tokens" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": long}], max_tokens=4
        )
    assert e.value.body["param"] == "messages"
    # Asked for, the prompt keeps its last tokens: the CLI's rule for a long prompt.
    kept = complete(client, prompt=long, seed=1, extra_body={"truncate_prompt_tokens": block})
    assert kept.usage.prompt_tokens == block
    short = complete(client, prompt=long, seed=1, extra_body={"truncate_prompt_tokens": 8})
    assert short.usage.prompt_tokens == 8
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, prompt="hi", extra_body={"truncate_prompt_tokens": block + 1})
    assert e.value.body["param"] == "truncate_prompt_tokens"
