"""The OpenAI wire format: request schemas, errors and stop strings.

Requests are validated by pydantic models, then converted into the decoding engine's own
types: `sampling_params` builds the one `SamplingParams` (its rules: `config.SAMPLING_RULES`),
`ChatRequest.conversation` gives the (role, content) pairs that a chat template renders (a chat
run's own, `tok.chat.render`, else the plain `infer.prompt.render_chat`; both free of HTTP). Every problem becomes an `ApiError`,
sent in OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with a 4xx status.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_tiny.config import SampleConfig
from llm_tiny.errors import UserError
from llm_tiny.infer.params import SamplingError, SamplingParams
from llm_tiny.infer.prompt import fit_prompt

MAX_N = 16  # choices per request
MAX_LOGPROBS = 5  # alternatives per token, as OpenAI's completions endpoint allows


class ApiError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status, message, param, code, type,
        )  # fmt: skip

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param,
                      "code": self.code}
        }  # fmt: skip


# Fields of OpenAI's requests that change nothing here: accepted, and named in the response's
# `X-Ignored-Fields` header when a request sets them (`_Request.ignored_fields`).
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier", "stream_options",
                  "parallel_tool_calls")  # fmt: skip
# Fields of OpenAI's requests whose meaning this server cannot honour: refused with a 400.
UNSUPPORTED_FIELDS = ("logit_bias", "tools", "tool_choice", "functions", "function_call",
                      "response_format", "suffix", "best_of", "top_logprobs", "modalities",
                      "audio", "prediction")  # fmt: skip


class _Request(BaseModel):
    # Extra fields are kept to be checked: OpenAI's harmless ones are ignored (and named back),
    # the ones it would act on are refused, and a field OpenAI does not know is refused as
    # OpenAI refuses it ("Unrecognized request argument supplied").
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's: an extra field, as vLLM accepts it
    repetition_penalty: float | None = None  # extra (vLLM's name)
    no_repeat_ngram: int | None = None  # extra
    ignore_eos: bool = False  # extra (vLLM's): go on past the end-of-text token
    # extra (vLLM's): keep only the prompt's last N tokens; without it a prompt longer than
    # the context is refused with OpenAI's context_length_exceeded
    truncate_prompt_tokens: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    def check_fields(self) -> None:
        """A 400 for the first extra field this server refuses (see `IGNORED_FIELDS`)."""
        for name, value in (self.model_extra or {}).items():
            if name in IGNORED_FIELDS:
                continue
            if name in UNSUPPORTED_FIELDS:
                if value is None:
                    continue
                raise ApiError(400, f"{name} is not supported by this server", param=name)
            raise ApiError(400, f"Unrecognized request argument supplied: {name}", param=name)

    def ignored_fields(self) -> list[str]:
        """The fields the request set that change nothing here."""
        extra = self.model_extra or {}
        return sorted(k for k, v in extra.items() if k in IGNORED_FIELDS and v is not None)


class CompletionRequest(_Request):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool = False
    return_token_ids: bool = False  # extra: each choice also lists its token ids (playground)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None

    def conversation(self) -> list[tuple[str, str]]:
        """The messages as (role, content) pairs, for `infer.prompt.render_chat`."""
        return [(m.role, m.content) for m in self.messages]


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or a 400."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            400, "We could not parse the JSON body of your request: it is not valid JSON."
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return data


def parse_request(cls: type[_Request], data: dict[str, Any]) -> Any:
    """`data` validated as `cls`; the first problem becomes a 400 naming its field."""
    try:
        req = cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(400, f"{param}: {err['msg']}", param=param) from None
    if isinstance(req, _Request):
        req.check_fields()
    return req


def sampling_params(req: _Request, sample: SampleConfig) -> SamplingParams:
    """The request's sampling values over the run's `sample` section (a field left out takes
    the run's value, as a flag left out does for the CLI); a broken rule is a 400 naming it."""
    try:
        return SamplingParams.from_config(
            sample, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
            repetition_penalty=req.repetition_penalty, no_repeat_ngram=req.no_repeat_ngram,
        )  # fmt: skip
    except SamplingError as e:
        raise ApiError(400, str(e), param=e.key) from None


def check_values(req: _Request, max_tokens: int | None, cap: int) -> None:
    """The checks a schema cannot make: the token cap, unsupported fields."""
    if max_tokens is not None and not 1 <= max_tokens <= cap:
        raise ApiError(
            400, f"max_tokens must be between 1 and {cap} (this server's cap), got {max_tokens}",
            param="max_tokens",
        )  # fmt: skip
    if not 1 <= req.n <= MAX_N:
        raise ApiError(400, f"n must be between 1 and {MAX_N}, got {req.n}", param="n")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name):
            raise ApiError(
                400, f"{name} is not supported; use repetition_penalty (> 1 discourages "
                "repeats) or no_repeat_ngram", param=name,
            )  # fmt: skip
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise ApiError(400, f"seed must be in [0, 2**63), got {req.seed}", param="seed")


def stop_strings(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or any(s == "" for s in stops):
        raise ApiError(400, "stop must be up to 4 non-empty strings", param="stop")
    return stops


class TextStream:
    """Text of one choice, token by token, cut before the first stop string.

    `push(text)` returns the text that is safe to send: text that might be the beginning of a
    stop string is held back until the next push settles it. `stopped` turns True once a stop
    string appeared (the text before it has been returned; nothing after it ever is).

    >>> t = TextStream(["\\nUser:"]); t.push("Hi\\nUs"), t.push("er: x"), t.stopped
    ('Hi', '', True)
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.pending = ""
        self.stopped = False

    def push(self, text: str, final: bool = False) -> str:
        if self.stopped:
            return ""
        self.pending += text
        cuts = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped = True
            out, self.pending = self.pending[: min(cuts)], ""
            return out
        held = 0 if final else _held_back(self.pending, self.stops)
        out = self.pending[: len(self.pending) - held]
        self.pending = self.pending[len(out) :]
        return out


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that begins some stop string: "ab\\nUs" -> 3."""
    return max(
        (k for s in stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])),
        default=0,
    )


def request_prompt_ids(
    tokenizer: Any, prompt: str | list[int], block: int, req: Any, param: str = "prompt"
) -> list[int]:
    """A request's prompt ids (`prompt` text, or ids already rendered). Longer than the context (`block` tokens), it is refused as
    OpenAI refuses it, unless the request asks for `truncate_prompt_tokens` (vLLM's field):
    then its last N tokens are kept, the CLI's rule (`infer.prompt.fit_prompt`)."""
    keep = req.truncate_prompt_tokens
    if keep is not None and not 1 <= keep <= block:
        raise ApiError(
            400, f"truncate_prompt_tokens must be between 1 and {block}, got {keep}",
            param="truncate_prompt_tokens",
        )  # fmt: skip
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if keep is None and len(ids) > block:
        raise ApiError(
            400,
            f"This model's maximum context length is {block} tokens; the {param} has "
            f"{len(ids)} tokens. Shorten it, or send truncate_prompt_tokens to keep its last tokens.",
            param=param, code="context_length_exceeded",
        )  # fmt: skip
    try:
        return fit_prompt(ids, keep or block)
    except UserError:
        raise ApiError(400, f"{param} must not be empty", param=param) from None
