"""The FastAPI application: OpenAI-compatible routes, the playground page and its helpers.

    GET  /                      the playground (static/playground.html)
    GET  /health                status and the engine's counters (active sequences, ...)
    GET  /v1/models             the one model this server holds
    POST /v1/completions        text completion, streamed (server-sent events) or not
    POST /v1/chat/completions   chat, in the run's template (`infer.prompt.chat_request`)
    POST /api/tokenize          a text's token ids and their text
    POST /api/attention         attention weights of the last of some ids, every layer and head

Choice j of a request with `seed` s samples with seed s + j: the text of `python -m llm_tiny
sample --seed s+j`; values a request leaves out take the run's `sample` settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_tiny.infer.engine import Event, Row
from llm_tiny.infer.params import SamplingParams
from llm_tiny.infer.prompt import chat_request, eot_ids
from llm_tiny.serve.engine import Engine
from llm_tiny.serve.protocol import (
    MAX_LOGPROBS,
    ApiError,
    ChatRequest,
    CompletionRequest,
    TextStream,
    check_values,
    parse_json,
    parse_request,
    request_prompt_ids,
    sampling_params,
    stop_strings,
)
from tok.bpe import StreamDecoder
from tok.chat import has_template


@dataclass
class Server:
    """What the routes share: the engine, the tokenizer and run config, and the options."""

    engine: Engine
    tokenizer: Any
    cfg: Any
    model_id: str
    api_key: str | None = None
    max_tokens_cap: int = 1024
    max_body_bytes: int = 1 << 20
    created: int = field(default_factory=lambda: int(time.time()))
    inbox: _Inbox | None = None  # the engine's events on their way to the event loop

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str


class AttentionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ids: list[int] = Field(min_length=1)


def create_app(server: Server, cors: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="llm_tiny", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=cors, allow_methods=["*"], allow_headers=["*"]
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        messages = {
            404: f"Unknown request URL: {where}",
            405: f"Method not allowed: {where}; use {(e.headers or {}).get('Allow', 'another')}",
        }
        err = ApiError(e.status_code, messages.get(e.status_code, str(e.detail)))
        return JSONResponse(err.body(), status_code=e.status_code, headers=e.headers)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)  # no icon: a browser's automatic request is not an error

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        # A bug: the traceback goes to the server's log, the client gets OpenAI's shape.
        err = ApiError(500, f"internal error: {type(e).__name__}", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        page = resources.files("llm_tiny.serve").joinpath("static/playground.html")
        return HTMLResponse(page.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": server.model_id, **server.engine.stats()}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _check_key(server, request)
        return {"object": "list", "data": [_model_card(server)]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        _check_key(server, request)
        _check_model(server, model_id)
        return _model_card(server)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = await _read(server, request, CompletionRequest)
        params = sampling_params(req, server.cfg.sample)
        check_values(req, req.max_tokens, server.max_tokens_cap)
        if req.logprobs is not None and not 0 <= req.logprobs <= MAX_LOGPROBS:
            raise ApiError(400, f"logprobs must be between 0 and {MAX_LOGPROBS}", "logprobs")
        if req.echo:
            raise ApiError(400, "echo is not supported", param="echo")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt must not be an empty list", param="prompt")
        block = server.cfg.model.block_size
        ids = [request_prompt_ids(server.tokenizer, p, block, req) for p in prompts]
        jobs = [
            (p, _choice_params(server, params, req, req.max_tokens, j, req.logprobs))
            for p in ids
            for j in range(req.n)
        ]
        run = _Run(server, request, jobs, stop_strings(req.stop), "text_completion")
        run.prompt_tokens = sum(map(len, ids))
        run.token_ids = req.return_token_ids
        return await run.respond(req.stream, req.ignored_fields())

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req = await _read(server, request, ChatRequest)
        max_tokens = req.max_completion_tokens or req.max_tokens
        params = sampling_params(req, server.cfg.sample)
        check_values(req, max_tokens, server.max_tokens_cap)
        if req.logprobs:
            raise ApiError(400, "logprobs are not supported for chat", param="logprobs")
        prompt, turn, stops = chat_request(server.tokenizer, req.conversation())
        ids = request_prompt_ids(
            server.tokenizer, prompt, server.cfg.model.block_size, req, "messages"
        )
        jobs = [
            (ids, _choice_params(server, params, req, max_tokens, j, None, turn))
            for j in range(req.n)
        ]
        run = _Run(server, request, jobs, [*stops, *stop_strings(req.stop)], "chat")
        run.prompt_tokens = len(ids)
        return await run.respond(req.stream, req.ignored_fields())

    @app.post("/api/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        req = await _read(server, request, TokenizeRequest, check_model=False)
        ids = server.tokenizer.encode(req.prompt)
        return {
            "ids": ids,
            "tokens": [server.token_text(t) for t in ids],
            "block_size": server.cfg.model.block_size,
        }

    @app.post("/api/attention")
    async def attention(request: Request) -> dict[str, Any]:
        req = await _read(server, request, AttentionRequest, check_model=False)
        model = server.engine.model
        ids = req.ids[-model.config.block_size :]  # the context the model can see
        if not all(0 <= t < model.config.vocab_size for t in ids):
            raise ApiError(400, f"ids must be in [0, {model.config.vocab_size})", param="ids")

        def last_row() -> list:  # (n_layer, n_head, T): what the last token attends to
            maps = model.attention_maps(torch.tensor([ids], device=server.engine.device))
            return torch.stack([m[0, :, -1, :] for m in maps]).float().cpu().tolist()

        weights = await asyncio.wrap_future(server.engine.call(last_row))
        return {
            "ids": ids,
            "tokens": [server.token_text(t) for t in ids],
            "n_layer": len(weights),
            "n_head": len(weights[0]),
            "weights": [[[round(w, 5) for w in head] for head in layer] for layer in weights],
        }

    return app


# ----------------------------------------------------------------------------- request helpers


def _check_key(server: Server, request: Request) -> None:
    if server.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        token.strip().encode(), server.api_key.encode()
    ):
        raise ApiError(
            401, "Incorrect or missing API key: send the header 'Authorization: Bearer KEY'",
            code="invalid_api_key",
        )  # fmt: skip


def _check_model(server: Server, model_id: str) -> None:
    if model_id != server.model_id:
        raise ApiError(
            404, f"The model '{model_id}' does not exist; this server has '{server.model_id}'",
            param="model", code="model_not_found",
        )  # fmt: skip


def _model_card(server: Server) -> dict[str, Any]:
    # chat_template: which template /v1/chat/completions renders (the playground shows it).
    template = "llm_tiny" if has_template(server.tokenizer) else "plain"
    return {"id": server.model_id, "object": "model", "created": server.created,
            "owned_by": "llm_tiny", "max_model_len": server.cfg.model.block_size,
            "chat_template": template}  # fmt: skip


async def _read(server: Server, request: Request, cls: type, check_model: bool = True) -> Any:
    """The request's body, size-limited, parsed and validated as `cls`."""
    _check_key(server, request)
    limit = server.max_body_bytes
    too_big = ApiError(413, f"The request body is larger than {limit} bytes", code="too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    data = parse_json(bytes(body))
    if cls in (CompletionRequest, ChatRequest):
        req = parse_request(cls, data)
        if check_model:
            _check_model(server, req.model)
        return req
    return parse_request(cls, data)


def _choice_params(
    server: Server, params: SamplingParams, req: Any, max_tokens: int | None, j: int,
    logprobs: int | None, turn: list[int] = (),
) -> SamplingParams:  # fmt: skip
    """Choice j's params: the request's, with seed + j, the token cap and the stop tokens
    (end of text, and `turn`: a chat run's end of turn)."""
    base = req.seed if req.seed is not None else secrets.randbits(62)
    default_max = max(1, min(server.cfg.sample.max_new_tokens, server.max_tokens_cap))
    return params.replace(
        max_new_tokens=max_tokens or default_max, seed=base + j, logprobs=logprobs,
        stop_tokens=() if req.ignore_eos else (*eot_ids(server.tokenizer, server.cfg), *turn),
    )  # fmt: skip


# ----------------------------------------------------------------------------- responses


class _Choice:
    """The text, tokens and finish reason of one choice as its events arrive."""

    def __init__(self, server: Server, stops: list[str]) -> None:
        self.server = server
        self.decoder = StreamDecoder(server.tokenizer)
        self.text = TextStream(stops)
        self.finish: str | None = None
        self.tokens: list[int] = []  # those that are text (not a stop token)
        self.generated = 0  # every token sampled, for the usage counts
        self.logprobs: dict[str, list] = {
            "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": [],
            "top_tokens": [],
        }  # fmt: skip
        self.offset = 0

    def add(self, ev: Event) -> tuple[str, int]:
        """Take one event; return the new text and how many tokens it added."""
        delta, added = "", 0
        self.generated += ev.token is not None
        if ev.token is not None and ev.finish != "stop":  # a stop token is not text
            added = 1
            self.tokens.append(ev.token)
            delta = self.text.push(self.decoder.push(ev.token))
            if ev.logprob is not None:
                self._log(ev)
        if self.text.stopped:
            self.finish = "stop"
        elif ev.finish is not None:
            delta += self.text.push(self.decoder.flush(), final=True)
            self.finish = ev.finish
        return delta, added

    def _log(self, ev: Event) -> None:
        text = self.server.token_text(ev.token)
        top = ev.top or []
        lp = self.logprobs
        lp["tokens"].append(text)
        lp["token_logprobs"].append(ev.logprob)
        lp["top_logprobs"].append({self.server.token_text(t): v for t, v in top})
        lp["top_tokens"].append([[t, self.server.token_text(t), v] for t, v in top])
        lp["text_offset"].append(self.offset)
        self.offset += len(text)


class _Inbox:
    """Events from the engine's thread to the event loop's queues, with one wake-up of the loop
    per batch: a step of 16 streams makes 16 events, and waking the loop for each costs the
    engine's thread time it needs for the next step."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.items: list[tuple[asyncio.Queue, Any]] = []

    def put(self, queue: asyncio.Queue, item: Any) -> None:
        """From any thread: deliver `item` to `queue` soon."""
        with self.lock:
            self.items.append((queue, item))
            if len(self.items) > 1:
                return  # a delivery is already scheduled
        # RuntimeError: the event loop has closed (the server is shutting down).
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for queue, item in items:
            queue.put_nowait(item)


class _Run:
    """One request's sequences in the engine, answered as one JSON body or as a stream."""

    def __init__(self, server, request, jobs, stops: list[str], kind: str) -> None:
        self.server, self.request, self.jobs, self.stops, self.kind = (
            server, request, jobs, stops, kind,
        )  # fmt: skip
        self.token_ids = False
        self.prompt_tokens = 0
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.choices = [_Choice(server, stops) for _ in jobs]
        self.seqs: list[Row] = []

    async def respond(self, stream: bool, ignored: list[str] | None = None) -> Any:
        """The response, streamed or whole; `ignored`: the `X-Ignored-Fields` header."""
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        if self.server.inbox is None or self.server.inbox.loop is not loop:
            self.server.inbox = _Inbox(loop)
        inbox = self.server.inbox

        def emitter(i: int):
            return lambda ev: inbox.put(self.queue, (i, ev))

        engine = self.server.engine
        self.seqs = [engine.submit(ids, st, emitter(i)) for i, (ids, st) in enumerate(self.jobs)]
        headers = {"X-Ignored-Fields": ", ".join(ignored)} if ignored else None
        if stream:
            sse = self._sse()
            return StreamingResponse(sse, media_type="text/event-stream", headers=headers)
        try:
            return JSONResponse(await self._collect(), headers=headers)
        finally:
            self._cancel()

    def _cancel(self) -> None:
        """Stop every sequence still generating (the client left, or a stop string matched)."""
        for seq in self.seqs:
            if not seq.done:
                seq.cancel()
        self.server.engine.wake()

    async def _events(self) -> AsyncIterator[tuple[int, str, int]]:
        """(choice, new text, tokens added) until every choice has finished."""
        left = len(self.choices)
        while left:
            i, ev = await self.queue.get()
            choice = self.choices[i]
            if choice.finish is not None:
                continue  # events after a stop string matched
            delta, added = choice.add(ev)
            if choice.finish is not None:
                left -= 1
                self.seqs[i].cancel()
                if choice.finish.startswith("error"):
                    raise ApiError(500, f"generation failed: {choice.finish}", type="server_error")
            yield i, delta, added

    async def _collect(self) -> dict[str, Any]:
        texts = [""] * len(self.choices)
        watcher = asyncio.create_task(self._watch_disconnect())
        try:
            async for i, delta, _ in self._events():
                texts[i] += delta
        finally:
            watcher.cancel()
        prompt_tokens = self.prompt_tokens
        completion = sum(c.generated for c in self.choices)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion}  # fmt: skip
        choices = [self._choice_body(i, texts[i], full=True) for i in range(len(self.choices))]
        return self._envelope(choices, chunk=False) | {"usage": usage}

    async def _watch_disconnect(self) -> None:
        while not await self.request.is_disconnected():
            await asyncio.sleep(0.25)
        self._cancel()

    async def _sse(self) -> AsyncIterator[str]:
        try:
            if self.kind == "chat":  # the first chunk of each choice names the role
                for i in range(len(self.choices)):
                    delta = {"role": "assistant", "content": ""}
                    yield _sse(self._envelope([self._chunk(i, delta, None)], chunk=True))
            try:
                async for i, delta, added in self._events():
                    finish = self.choices[i].finish
                    if self.kind == "chat" and delta:
                        body = self._chunk(i, {"content": delta}, None)
                        yield _sse(self._envelope([body], chunk=True))
                    elif self.kind != "chat" and (delta or added):
                        body = self._choice_body(i, delta, full=False, last=added)
                        yield _sse(self._envelope([body], chunk=True))
                    if finish is not None:
                        body = self._chunk(i, {}, _reason(finish)) if self.kind == "chat" else (
                            {"index": i, "text": "", "logprobs": None,
                             "finish_reason": _reason(finish)}
                        )  # fmt: skip
                        yield _sse(self._envelope([body], chunk=True))
            except ApiError as e:
                yield _sse(e.body())
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects: the server cancels this generator
            self._cancel()

    def _chunk(self, i: int, delta: dict, finish: str | None) -> dict[str, Any]:
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}

    def _choice_body(self, i: int, text: str, full: bool, last: int = 0) -> dict[str, Any]:
        c = self.choices[i]
        if self.kind == "chat":
            message = {"role": "assistant", "content": text}
            return {"index": i, "message": message, "logprobs": None,
                    "finish_reason": _reason(c.finish)}  # fmt: skip
        logprobs = None
        if self.jobs[i][1].logprobs is not None:
            n = len(c.logprobs["tokens"]) if full else last
            logprobs = {k: v[len(v) - n :] for k, v in c.logprobs.items()}
            if not self.token_ids:
                logprobs.pop("top_tokens")  # [id, text, logprob] per alternative: an extra
        body = {"index": i, "text": text, "logprobs": logprobs,
                "finish_reason": _reason(c.finish) if full else None}  # fmt: skip
        if self.token_ids:
            body["token_ids"] = c.tokens if full else c.tokens[len(c.tokens) - last :]
        return body

    def _envelope(self, choices: list[dict], chunk: bool) -> dict[str, Any]:
        obj = "text_completion"
        if self.kind == "chat":
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        return {"id": self.id, "object": obj, "created": self.created,
                "model": self.server.model_id, "choices": choices}  # fmt: skip


def _reason(finish: str | None) -> str | None:
    """OpenAI's finish reasons: "stop" (end of text or a stop string) or "length"."""
    return finish if finish in (None, "length") else "stop"


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
