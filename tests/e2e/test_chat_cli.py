"""Chat through real processes: `python -m llm_tiny chat` reading JSON Lines from a pipe, its
refusals (one line, exit 2), the demo's data command, and the server's chat route on a chat
run (its template, ending at the end-of-turn token) and on a base run (the plain template)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from serve_helpers import live_server, request

from llm_tiny.infer.prompt import chat_prompt_ids, render_chat
from llm_tiny.train.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]


def llm(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llm_tiny", *args], input=stdin, capture_output=True, text=True,
        cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip


def test_chat_reads_jsonl_keeps_history_and_stops_at_end_of_turn(chat_run):
    lines = [
        {"role": "system", "content": "hi"},
        {"role": "user", "content": "yes"},
        {"role": "user", "content": "no"},
        {"messages": [{"role": "user", "content": "ok"}]},
    ]
    stdin = "".join(json.dumps(x) + "\n" for x in lines)
    args = ("chat", "--ckpt", str(chat_run), "--temperature", "0", "--max-new-tokens", "5")
    out = llm(*args, "--device", "cpu", stdin=stdin)
    assert out.returncode == 0, out.stderr
    replies = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(replies) == 3 and all(r["role"] == "assistant" for r in replies)
    assert all(r["finish_reason"] in ("stop", "length") for r in replies)
    # Greedy and deterministic: the same input gives the same replies.
    assert llm(*args, "--device", "cpu", stdin=stdin).stdout == out.stdout


def test_chat_refusals_are_one_line(chat_run, tiny_run):
    base = llm("chat", "--ckpt", str(tiny_run), stdin="")
    assert base.returncode == 2 and "no chat template" in base.stderr
    assert len(base.stderr.strip().splitlines()) == 1
    bad = llm("chat", "--ckpt", str(chat_run), stdin='{"role": "robot", "content": "x"}\n')
    assert bad.returncode == 2 and "stdin:1: message 1: unknown role 'robot'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_chatdemo_data_is_seeded(tmp_path):
    for name in ("a", "b"):
        out = llm("chatdemo", "data", "--out", str(tmp_path / name), "--n-train", "50",
                  "--n-test", "10", "--seed", "3")  # fmt: skip
        assert out.returncode == 0, out.stderr
    for f in ("train.jsonl", "test.jsonl", "base.txt"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    test = [json.loads(x) for x in (tmp_path / "a" / "test.jsonl").read_text().splitlines()]
    assert len(test) == 10 and all(c["messages"][-1]["role"] == "assistant" for c in test)


def test_server_chat_uses_the_runs_template(chat_run, tiny_run):
    _, tok, _cfg, _ = load_model(chat_run, "cpu")
    messages = [{"role": "system", "content": "hi"}, {"role": "user", "content": "yes"}]
    body = {"messages": messages, "temperature": 0, "max_tokens": 8, "seed": 1}

    def chat(url: str) -> tuple[int, dict]:
        model = request(url, "GET", "/v1/models")[1]["data"][0]["id"]
        return request(
            url, "POST", "/v1/chat/completions", json.dumps(body | {"model": model}).encode()
        )

    with live_server(chat_run) as url:
        status, answer = chat(url)
    assert status == 200, answer
    assert answer["usage"]["prompt_tokens"] == len(chat_prompt_ids(tok, messages, 10_000))
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    assert "<|end|>" not in answer["choices"][0]["message"]["content"]
    # A base run keeps the plain template.
    _, base_tok, _, _ = load_model(tiny_run, "cpu")
    with live_server(tiny_run) as url:
        status, answer = chat(url)
    assert status == 200, answer
    plain = base_tok.encode(render_chat([(m["role"], m["content"]) for m in messages]))
    assert answer["usage"]["prompt_tokens"] == len(plain)


def test_make_chat_demo_runs_the_documented_steps():
    dry = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "chat-demo"], capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    steps = [
        line.split("-m llm_tiny ", 1)[1]
        for line in dry.stdout.splitlines()
        if "-m llm_tiny " in line
    ]
    assert steps == [
        "chatdemo data --out data/chat",
        "train configs/chat_base.yaml ",
        "train configs/chat_sft.yaml ",
        "chatdemo eval --base --ckpt out/chat_base --data data/chat/test.jsonl",
        "chatdemo eval --ckpt out/chat_sft --data data/chat/test.jsonl",
    ]
