"""The `serve` command: `python -m llm_tiny serve --ckpt RUN [options]`.

Loads the checkpoint, starts the decoding engine and serves the app with uvicorn. Binds
127.0.0.1 unless told otherwise (any other host prints a warning: the server has no
rate limits and, without `--api-key`, no authentication).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

from llm_tiny.errors import ArgumentParser, UserError, add_ckpt_arg, add_device_arg, run_cli

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="llm_tiny serve",
        description="Serve a checkpoint over an OpenAI-compatible HTTP API, with a playground.",
    )
    add_ckpt_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_device_arg(p)
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    p.add_argument(
        "--api-key",
        default=os.environ.get("LLM_TINY_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $LLM_TINY_API_KEY; none: open)",
    )
    p.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens allowed")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body")
    p.add_argument(
        "--cors", action="append", metavar="ORIGIN", help="allow this browser origin (repeatable)"
    )
    p.add_argument("--model-name", help="the model id clients use (default: the run's name)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _serve(args), "llm_tiny serve")


def model_name(ckpt: str) -> str:
    """A run directory's name, or the directory and stem of a .pt file: out/tiny ->
    "tiny", out/tiny/last.pt -> "tiny-last"."""
    p = Path(ckpt).resolve()
    return p.name if p.is_dir() else f"{p.parent.name}-{p.stem}"


def _serve(args) -> int:
    try:
        import uvicorn

        from llm_tiny.serve.app import Server, create_app
    except ImportError as e:
        raise UserError(
            f"serve needs the serve extra ({e.name}): pip install 'llm_tiny[serve]'"
        ) from None
    from llm_tiny.runtime import resolve_device
    from llm_tiny.serve.engine import Engine
    from llm_tiny.train.checkpoint import load_model

    for name in ("max_batch", "max_tokens_cap", "max_body_bytes"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    sock = bind_socket(args.host, args.port)  # before the model loads: a busy port fails fast
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    device = resolve_device(args.device)
    model, tokenizer, cfg, _ = load_model(args.ckpt, device)
    if args.host not in LOCAL_HOSTS:
        print(
            f"llm_tiny serve: warning: binding {args.host} makes the server reachable from "
            "other machines" + ("" if args.api_key else " by anyone (no --api-key)"),
            file=sys.stderr,
        )
    engine = Engine(model, device, args.max_batch).start()
    server = Server(
        engine, tokenizer, cfg, args.model_name or model_name(args.ckpt), args.api_key,
        args.max_tokens_cap, args.max_body_bytes,
    )  # fmt: skip
    app = create_app(server, args.cors)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"llm_tiny serve: model {server.model_id!r} on {device}; playground at "
        f"http://{host}:{port}/ and the OpenAI API at http://{host}:{port}/v1",
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()
    return 0


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port for uvicorn to serve on; a port in use or an address
    this machine does not have is a one-line UserError (before anything is printed)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise UserError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"--port {port}: {host}:{port} is already in use (another server?); stop it or "
                f"pass another --port, e.g. --port {port + 1 if port < 65535 else 8000}"
            ) from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock
