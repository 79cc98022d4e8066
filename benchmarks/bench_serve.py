"""Throughput of `llm_tiny serve`: total tokens/s with 1, 4 and 16 concurrent streams.

    .venv/bin/python benchmarks/bench_serve.py                      # a random tiny-sized model
    .venv/bin/python benchmarks/bench_serve.py --ckpt out/tiny --json-out out/bench_serve.json

The server runs in this process (uvicorn in a thread, a real socket on 127.0.0.1); client
threads send the same `--requests` streamed completions (seeds 0, 1, ...) at each
concurrency. Concurrency 1 is one-at-a-time generation through the server; the reference
without a server is `sampling.generate` (the CLI's path through the same engine) on the same requests one after the
other. Every variant must produce the same tokens (the script checks, and exits 1 if not).
Variants run in the same process, one after another, and are compared as ratios, because a
shared machine makes absolute numbers noisy. Prints a table, then one JSON line (also written
to --json-out if given).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from llm_tiny.errors import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "ROMEO:"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench_serve.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="serve this run (default: a random model of the tiny config)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64, help="max_tokens of every request")
    p.add_argument("--requests", type=int, default=16, help="requests per variant")
    p.add_argument("--streams", default="1,4,16", help="concurrencies to measure")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    p.add_argument("--json-out", "--json", dest="json", type=Path, default=None)
    p.add_argument(
        "--profile", action="store_true",
        help="also print where each server variant's time goes, in ms per engine step",
    )  # fmt: skip
    return p


def random_run(args):
    """A random model of the given size with a BPE tokenizer of data/tiny.txt."""
    from llm_tiny.config import RunConfig, config_from_dict, config_to_dict
    from llm_tiny.model import TinyGPT
    from tok.bpe import Tokenizer

    text = (ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:50_000]
    tokenizer = Tokenizer.train(text, args.vocab_size, special_tokens=["<|endoftext|>"])
    d = config_to_dict(RunConfig())
    d["model"] |= {"vocab_size": tokenizer.vocab_size, "block_size": args.block_size,
                   "n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd,
                   "pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "dropout": 0.0}  # fmt: skip
    d["data"]["vocab_size"] = tokenizer.vocab_size
    cfg = config_from_dict(d)
    torch.manual_seed(0)
    return TinyGPT(cfg.model), tokenizer, cfg


class ServerThread:
    """uvicorn serving `app` on a free port of 127.0.0.1 in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Profile:
    """--profile: per engine step of a variant, the engine thread's wall time in the forward
    pass (`Decoder.logits`, with admissions), in the rest of `Decoder.step` (sampling, events)
    and in handing the events over (`Engine._emit`), and the CPU time of the engine thread, the
    server's thread (event loop, SSE) and the client threads. The threads share one interpreter
    lock, so the CPU times add up to about the wall time per step when the lock is the limit."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.wall: dict[str, float] = {"forward": 0.0, "step": 0.0, "emit": 0.0}
        self.client_cpu = 0.0
        self.lock = threading.Lock()
        decoder = engine.decoder
        decoder.logits = self._timed(decoder.logits, "forward")
        decoder.step = self._timed(decoder.step, "step")
        engine._emit = self._timed(engine._emit, "emit")

    def _timed(self, fn, key: str):
        def timed(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.wall[key] += time.perf_counter() - t0

        return timed

    def client(self, fn):
        def timed(*args):
            t0 = time.thread_time()
            try:
                return fn(*args)
            finally:
                with self.lock:
                    self.client_cpu += time.thread_time() - t0

        return timed

    @staticmethod
    def cpu(thread: threading.Thread | None) -> float:
        if thread is None or thread.ident is None or not hasattr(time, "pthread_getcpuclockid"):
            return float("nan")
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))

    def start(self, server_thread: threading.Thread) -> None:
        self.server_thread = server_thread
        self.counters = dict(self.engine.decoder.counters)
        self.wall = dict.fromkeys(self.wall, 0.0)
        self.client_cpu = 0.0
        self.cpu0 = (self.cpu(self.engine._thread), self.cpu(server_thread))
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        cpu = (self.cpu(self.engine._thread), self.cpu(self.server_thread))
        c = self.engine.decoder.counters
        steps = max(1, c["steps"] - self.counters["steps"])
        ms = 1000 / steps
        return {
            "steps": steps,
            "rows_per_step": round(
                (c["generated_tokens"] - self.counters["generated_tokens"]) / steps, 2
            ),
            "wall_ms": round(wall * ms, 3),
            "forward_ms": round(self.wall["forward"] * ms, 3),
            "step_rest_ms": round((self.wall["step"] - self.wall["forward"]) * ms, 3),
            "emit_ms": round(self.wall["emit"] * ms, 3),
            "engine_cpu_ms": round((cpu[0] - self.cpu0[0]) * ms, 3),
            "server_cpu_ms": round((cpu[1] - self.cpu0[1]) * ms, 3),
            "client_cpu_ms": round(self.client_cpu * ms, 3),
        }


def stream_tokens(port: int, body: dict) -> list[int]:
    """One streamed completion, read as server-sent events: the generated token ids."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ids: list[int] = []
    for line in resp:
        if line.startswith(b"data: {"):
            ids += json.loads(line[6:])["choices"][0].get("token_ids", [])
    conn.close()
    return ids


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: bench(args), "bench_serve.py")


def bench(args) -> int:
    try:
        from llm_tiny.serve.app import Server, create_app
    except ImportError as e:
        raise UserError(
            f"needs the serve extra ({e.name}): pip install 'llm_tiny[serve]'"
        ) from None
    from llm_tiny.infer.prompt import eot_ids
    from llm_tiny.infer.sampling import generate
    from llm_tiny.runtime import resolve_device
    from llm_tiny.serve.engine import Engine
    from llm_tiny.train.checkpoint import load_model

    streams = [int(s) for s in args.streams.split(",")]
    if min(streams) < 1 or args.requests < 1 or args.new_tokens < 1:
        raise UserError("--streams, --requests and --new-tokens must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.ckpt:
        model, tokenizer, cfg, _ = load_model(args.ckpt, device)
    else:
        model, tokenizer, cfg = random_run(args)
        model = model.to(device).eval()
    seeds = range(args.requests)
    # The run's sample settings (as the server applies them), at temperature 1.
    sampling = {"temperature": 1.0, "top_k": cfg.sample.top_k, "top_p": cfg.sample.top_p}
    repeats = {k: getattr(cfg.sample, k) for k in ("repetition_penalty", "no_repeat_ngram")}
    ids = tokenizer.encode(PROMPT)
    stops = eot_ids(tokenizer, cfg)

    # The reference: the CLI's loop, one request after another, no server.
    def cli_loop() -> list[list[int]]:
        out = []
        for seed in seeds:
            g = torch.Generator(device=device).manual_seed(seed)
            t = generate(model, torch.tensor([ids], device=device), args.new_tokens, **sampling,
                         stop_tokens=stops, generator=g, **repeats)[0, len(ids):].tolist()  # fmt: skip
            out.append(t)
        return out

    cli_loop()  # warm-up
    t0 = time.perf_counter()
    reference = cli_loop()
    timings = {"generate, one at a time": (time.perf_counter() - t0, reference)}

    load_before = os.getloadavg()[0]
    engine = Engine(model, device, max_batch=max(streams)).start()
    server = Server(engine, tokenizer, cfg, "bench", max_tokens_cap=args.new_tokens)
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": args.new_tokens, "stream": True,
            "return_token_ids": True, **sampling}  # fmt: skip
    profile = Profile(engine) if args.profile else None
    profiles: dict[str, dict[str, float]] = {}
    client = profile.client(stream_tokens) if profile else stream_tokens
    try:
        with ServerThread(create_app(server)) as srv:
            stream_tokens(srv.port, body | {"seed": 0, "max_tokens": 4})  # warm-up
            for c in streams:
                name = f"server, {c} concurrent"
                if profile:
                    profile.start(srv.thread)
                with ThreadPoolExecutor(c) as pool:
                    t0 = time.perf_counter()
                    got = list(pool.map(lambda s: client(srv.port, body | {"seed": s}), seeds))
                    timings[name] = (time.perf_counter() - t0, got)
                if profile:
                    profiles[name] = profile.stop()
            stats = engine.stats()
    finally:
        engine.stop()

    # Server tokens exclude the end-of-text token the reference keeps.
    def text_tokens(t: list[int]) -> list[int]:
        return [x for x in t if x not in stops]

    same = all(
        [text_tokens(t) for t in got] == [text_tokens(t) for t in reference]
        for _, got in timings.values()
    )
    base = timings["server, 1 concurrent"][0]
    rows = {
        name: {
            "seconds": round(sec, 3),
            "tokens": sum(len(t) for t in got),
            "tokens_per_s": round(sum(len(t) for t in got) / sec, 1),
            "speedup_vs_one_stream": round(base / sec, 2),
        }
        for name, (sec, got) in timings.items()
    }
    cfgm = cfg.model
    result = {
        "bench": "serve",
        "model": f"{cfgm.n_layer}L/{cfgm.n_head}H/{cfgm.n_embd}, block {cfgm.block_size}, "
        f"vocab {cfgm.vocab_size}" + (f" ({args.ckpt})" if args.ckpt else " (random)"),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "requests": args.requests,
        "max_tokens": args.new_tokens,
        "variants": rows,
        "largest_batch": stats["max_rows"],
        "same_tokens": same,
    }
    if profile:
        result["profile"] = profiles
    print(f"model {result['model']}, {result['threads']} threads, {args.requests} requests")
    print(f"{'variant':<28}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'vs 1 stream':>13}")
    for name, r in rows.items():
        print(f"{name:<28}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tokens_per_s']:>11.1f}"
              f"{r['speedup_vs_one_stream']:>12.2f}x")  # fmt: skip
    print(f"same tokens in every variant: {same}")
    if profiles:
        keys = list(next(iter(profiles.values())))
        print("profile, ms per engine step (forward, step_rest, emit: the engine's wall time)")
        heads = [k.removesuffix("_ms") for k in keys]
        print(f"{'variant':<24}" + "".join(f"{h:>{len(h) + 2}}" for h in heads))
        for name, prof in profiles.items():
            print(f"{name:<24}" + "".join(f"{prof[k]:>{len(h) + 2}g}" for k, h in zip(keys, heads)))
    line = json.dumps(result)
    print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n", encoding="utf-8")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
