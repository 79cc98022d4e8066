"""A tiny checkpoint and a live `python -m llm_tiny serve` for the server and browser tests."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def request(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, Any]:
    """A raw HTTP request (no client library in between): status and the JSON answer."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def tiny_checkpoint(run_dir: Path, block_size: int = 48) -> Path:
    """A run directory with a best.pt: a 300-token BPE tokenizer of data/tiny.txt (with
    <|endoftext|>) and a random 2-layer model whose weights are large enough to give varied
    text, and whose end-of-text logit is boosted so that some samples end early."""
    from llm_tiny.config import RunConfig, config_from_dict, config_to_dict
    from llm_tiny.model import TinyGPT
    from llm_tiny.train.checkpoint import FORMAT, VERSION
    from tok.bpe import Tokenizer

    text = (ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:20_000]
    tokenizer = Tokenizer.train(text, 300, special_tokens=["<|endoftext|>"], workers=1)
    cfg = RunConfig()
    model_cfg = {"vocab_size": tokenizer.vocab_size, "block_size": block_size, "n_layer": 2,
                 "n_head": 4, "n_embd": 32, "pos_emb": "rope", "tie_weights": False,
                 "dropout": 0.0}  # fmt: skip
    cfg_dict = config_to_dict(cfg)
    cfg_dict["model"].update(model_cfg)
    cfg_dict["data"]["vocab_size"] = tokenizer.vocab_size
    cfg_dict["sample"].update({"prompt": "ROMEO:", "max_new_tokens": 24})
    cfg = config_from_dict(cfg_dict)
    torch.manual_seed(0)
    model = TinyGPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.25)
        eot = tokenizer.special_tokens["<|endoftext|>"]
        model.lm_head.weight[eot] *= 3.0
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = {"format": FORMAT, "version": VERSION, "config": config_to_dict(cfg),
            "model": model.state_dict(), "step": 0, "tokenizer": tokenizer.to_json()}  # fmt: skip
    torch.save(ckpt, run_dir / "best.pt")
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(ckpt: Path, *args: str, timeout: float = 60.0) -> Iterator[str]:
    """`python -m llm_tiny serve` as a real subprocess on a free port; yields its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_tiny", "serve", "--ckpt", str(ckpt), "--port", str(port),
         "--device", "cpu", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read()}")
            with contextlib.suppress(OSError):
                if request(url, "GET", "/health")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("server did not answer /health")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
