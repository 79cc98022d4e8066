"""`python -m llm_tiny chat --ckpt RUN`: talk to a chat run (docs/chat.md).

Interactive on a terminal: type a message, the reply streams back, the history is kept (`/reset`
forgets it, `/exit` or end of input leaves). `--system TEXT` starts every conversation with a
system message. Replies stop at the end-of-turn token; the sampling flags are the `sample`
command's, with the run's `sample` section as defaults.

With stdin not a terminal (or `--jsonl`) it reads JSON Lines, for scripts: a line
`{"role": "user", "content": "..."}` continues the running conversation (a system line sets
its system message), a line `{"messages": [...]}` is answered on its own; each answer is one
line `{"role": "assistant", "content": "...", "finish_reason": "stop" | "length"}`.

Between turns the conversation keeps its KV cache (`ChatSession`): the next turn computes only
the tokens after the longest prefix it shares with what the cache holds.

A run without a chat template (a base run) is refused: its tokenizer has no turn tokens.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

import torch

from llm_tiny.errors import ArgumentParser, UserError, add_ckpt_arg, add_device_arg, run_cli
from llm_tiny.infer.engine import Decoder, Row, generating
from llm_tiny.infer.params import SamplingParams, add_sampling_args
from llm_tiny.infer.prompt import chat_prompt_ids, chat_stop_tokens
from tok.chat import as_pairs, has_template


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids `a` and `b` share: [1, 2, 3], [1, 2, 5] -> 2."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ChatSession:
    """One conversation with a chat run: its messages and the KV cache of what it has read."""

    def __init__(
        self, model: Any, tokenizer: Any, params: SamplingParams, system: str | None = None
    ) -> None:
        if not has_template(tokenizer):
            raise UserError("this run has no chat template (a base run: its tokenizer has no "
                            "<|user|> token); fine-tune it with data.kind: chat (docs/chat.md)")  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.params = params.replace(stop_tokens=tuple(chat_stop_tokens(tokenizer)))
        self.system = system
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(params.seed)
        self.reset()

    def reset(self) -> None:
        self.messages: list[tuple[str, str]] = [("system", self.system)] if self.system else []
        self.cache, self.cached = None, []  # the cache and the ids whose keys it holds
        self.reused = 0  # prompt tokens the last turn did not compute again

    def reply(
        self, content: str, on_text: Callable[[str], None] = lambda t: None
    ) -> tuple[str, str]:
        """Add a user message, generate the reply (its text sent to `on_text` as it grows) and
        add it; the reply and why it ended ("stop": end of turn, or "length")."""
        from tok.bpe import StreamDecoder

        self.messages.append(("user", content))
        ids = chat_prompt_ids(self.tokenizer, self.messages, self.model.config.block_size,
                              lambda m: print(m, file=sys.stderr))  # fmt: skip
        shared = min(common_prefix(ids, self.cached), len(ids) - 1)
        cache = None
        if self.cache is not None and shared > 0:
            cache, cache.length = self.cache, shared  # later positions are written over
        self.reused = shared if cache is not None else 0
        row = Row(ids, self.params, self.generator, cache=cache, keep_cache=True)
        stream = StreamDecoder(self.tokenizer)
        stops = set(self.params.stop_tokens)
        with generating(self.model):
            decoder = Decoder(self.model)
            decoder.add(row)
            while decoder.busy:
                for _, event in decoder.step():
                    if event.token is not None and event.token not in stops:
                        on_text(stream.push(event.token))
        on_text(stream.flush())
        self.cache, self.cached = row.cache, row.tokens[: row.cache.length if row.cache else 0]
        text = self.tokenizer.decode([t for t in row.generated if t not in stops])
        self.messages.append(("assistant", text))
        return text, str(row.finish)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="llm_tiny chat", description="Talk to a chat run.")
    add_ckpt_arg(p)
    p.add_argument("--system", help="a system message that starts the conversation")
    p.add_argument("--jsonl", action="store_true", help="read JSON Lines from stdin (the "
                   "default when stdin is not a terminal)")  # fmt: skip
    add_sampling_args(p)
    add_device_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _chat(args, sys.stdin, sys.stdout), "llm_tiny chat")


def _chat(args: Any, stdin: TextIO, out: TextIO) -> int:
    from llm_tiny.runtime import resolve_device
    from llm_tiny.train.checkpoint import load_model

    model, tokenizer, cfg, _ = load_model(args.ckpt, resolve_device(args.device))
    params = SamplingParams.from_args(cfg.sample, args)
    session = ChatSession(model, tokenizer, params, args.system)
    if args.jsonl or not stdin.isatty():
        return _jsonl(session, stdin, out)
    print("chat with " + str(args.ckpt) + " (/reset forgets the conversation, /exit leaves)")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        if line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            session.reset()
            continue
        if not line.strip():
            continue
        out.write("assistant> ")

        def show(text: str) -> None:
            out.write(text)
            out.flush()

        _, finish = session.reply(line, show)
        out.write("\n" if finish == "stop" else " [cut: --max-new-tokens]\n")


def _jsonl(session: ChatSession, stdin: TextIO, out: TextIO) -> int:
    for lineno, line in enumerate(stdin, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UserError(f"stdin:{lineno}: not JSON") from None
        if not isinstance(record, dict):
            raise UserError(
                f"stdin:{lineno}: expected an object with role and content, or messages"
            )
        if "messages" in record:
            try:
                pairs = as_pairs(
                    record["messages"] if isinstance(record["messages"], list) else [0]
                )
            except ValueError as e:
                raise UserError(f"stdin:{lineno}: {e}") from None
            if not pairs or pairs[-1][0] != "user":
                raise UserError(f"stdin:{lineno}: the messages must end with a user message")
            alone = ChatSession(session.model, session.tokenizer, session.params)
            alone.messages = pairs[:-1]
            text, finish = alone.reply(pairs[-1][1])
        else:
            try:
                ((role, content),) = as_pairs([record])
            except ValueError as e:
                raise UserError(f"stdin:{lineno}: {e}") from None
            if role == "assistant":
                session.messages.append((role, content))
                continue
            if role == "system":
                session.system = content
                session.messages = [m for m in session.messages if m[0] != "system"]
                session.messages.insert(0, (role, content))
                continue
            text, finish = session.reply(content)
        out.write(json.dumps({"role": "assistant", "content": text, "finish_reason": finish},
                             ensure_ascii=False) + "\n")  # fmt: skip
        out.flush()
    return 0
