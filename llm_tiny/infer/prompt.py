"""Prompts and conversations as token ids: the one home of the prompt rules, shared by the
sample CLI, the server, `chat`, evaluation and training (no HTTP here).

A run whose tokenizer has the chat tokens (a chat run: `tok.chat`, whose `render` is the one
template with its training mask) is prompted with its template: `chat_prompt_ids` renders the
messages and `<|assistant|>`, and the reply stops at `<|end|>` (`chat_stop_tokens`).

The plain template (for base runs, which know no roles) writes each message as a paragraph,
`User:`/`Assistant:` then the text (a system message is its text alone), and, to ask for a
reply, ends with `Assistant:` for the model to continue:

    You are terse.            (a system message: its text alone)

    User: Hi!

    Assistant:

Generation of a reply also stops at "\\nUser:" (`CHAT_STOP`: the model starting the next turn).
For training, `chat_tokens` gives the ids of a whole conversation and a mask of the tokens the
assistant wrote (" " + text + "\\n\\n" of each assistant message: everything a model must learn
to produce after `Assistant:`, up to the blank line before the next turn).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from llm_tiny.errors import UserError
from tok.chat import has_template, render

ROLES = ("system", "user", "assistant")
CHAT_STOP = "\nUser:"
_LABELS = {"system": "", "user": "User:", "assistant": "Assistant:"}


# ----------------------------------------------------------------------------- prompts


def prompt_ids(
    tokenizer: Any,
    prompt: str,
    block_size: int,
    note: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> list[int]:
    """The prompt's token ids; a prompt longer than the context keeps its last `block_size`
    tokens (with a `note`), an empty one is a UserError."""
    return fit_prompt(tokenizer.encode(prompt), block_size, note)


def fit_prompt(
    ids: list[int], block_size: int, note: Callable[[str], None] = lambda m: None
) -> list[int]:
    """`prompt_ids`' rule on ids already encoded: longer than `block_size`, keep the last
    `block_size` (with a `note`); empty is a UserError. [1, 2, 3] at 2 -> [2, 3]."""
    if not ids:
        raise UserError("the prompt is empty; give --prompt with at least one character")
    if len(ids) > block_size:
        note(
            f"note: prompt is {len(ids)} tokens, longer than the context ({block_size}); "
            f"keeping its last {block_size} tokens"
        )
        ids = ids[-block_size:]
    return ids


def eot_ids(tokenizer: Any, cfg: Any, stop: bool | None = None) -> list[int]:
    """The end-of-text token to stop at: the run's `data.eot` (default `<|endoftext|>`) when
    the tokenizer has it and `stop` is not False; [] otherwise."""
    name = cfg.data.eot or "<|endoftext|>"
    return (
        [tokenizer.special_tokens[name]]
        if stop is not False and name in tokenizer.special_tokens
        else []
    )


def text_of(tokenizer: Any, ids: list[int], stops: Iterable[int]) -> str:
    """The text of `ids` up to (not including) the first stop token after the leading ones (a
    prompt of the end-of-text token alone starts a new document and shows no text)."""
    stops = set(stops)
    first = next((i for i, t in enumerate(ids) if t not in stops), len(ids))
    cut = next((i for i, t in enumerate(ids) if i >= first and t in stops), len(ids))
    return tokenizer.decode(ids[first:cut])


# ----------------------------------------------------------------------------- chat


def chat_segments(messages: Iterable[tuple[str, str]], reply: bool) -> list[tuple[str, bool]]:
    """The conversation's text in pieces, each marked True when the assistant wrote it; with
    `reply`, it ends with "Assistant:" for the model to continue. The template's one home.

    [("user", "Hi"), ("assistant", "Yo")] -> [("User: Hi\\n\\n", False), ("Assistant:", False),
    (" Yo\\n\\n", True)].
    """
    pieces: list[tuple[str, bool]] = []
    for role, content in messages:
        if role not in _LABELS:
            raise ValueError(f"a message's role must be one of {ROLES}, got {role!r}")
        if role == "assistant":
            pieces += [(_LABELS[role], False), (" " + content + "\n\n", True)]
        else:
            label = _LABELS[role] + " " if _LABELS[role] else ""
            pieces.append((label + content + "\n\n", False))
    if reply:
        pieces.append((_LABELS["assistant"], False))
    return pieces


def render_chat(messages: Iterable[tuple[str, str]], reply: bool = True) -> str:
    """The text of a conversation of (role, content) pairs (the template in the module
    docstring); `reply` ends it with "Assistant:", the prompt for the next answer."""
    return "".join(text for text, _ in chat_segments(messages, reply))


def chat_tokens(
    tokenizer: Any, messages: Iterable[tuple[str, str]]
) -> tuple[list[int], list[bool]]:
    """A whole conversation's token ids and, for each, whether the assistant wrote it: the
    tokens a chat model is trained to predict.

    NOTE: each piece is encoded on its own, so no token straddles the boundary between the
    assistant's text and the template's; `tokenizer.encode(render_chat(messages, False))` gives
    the same ids whenever the tokenizer's split pattern already cuts there (it does for the
    GPT-style patterns: before a space-led word and at line breaks).
    """
    ids: list[int] = []
    mask: list[bool] = []
    for text, mine in chat_segments(messages, reply=False):
        piece = tokenizer.encode(text)
        ids += piece
        mask += [mine] * len(piece)
    return ids, mask


# ----------------------------------------------------------------------------- chat runs


def chat_stop_tokens(tokenizer: Any) -> list[int]:
    """The token that ends a reply of a chat run (`<|end|>`); [] for a base run."""
    from tok.chat import END_OF_TURN

    return [tokenizer.special_tokens[END_OF_TURN]] if has_template(tokenizer) else []


def chat_prompt_ids(
    tokenizer: Any,
    messages: Sequence[Any],
    block_size: int,
    note: Callable[[str], None] = lambda m: None,
) -> list[int]:
    """The ids that ask a chat run for the next reply: the messages ({"role", "content"} or
    (role, content) pairs) rendered by the run's template, then `<|assistant|>`. For
    evaluation, `chat` and the server alike.

    Context rule: when they do not fit in `block_size`, the oldest turns after a leading system
    message are dropped, whole, until they do (with a `note`); a last turn too long on its own
    keeps its last `block_size` tokens (`fit_prompt`). A tokenizer without the chat tokens is a
    ValueError (see `has_template`).
    """
    messages = list(messages)
    ids, _ = render(tokenizer, messages, add_generation_prompt=True)
    head = 1 if messages and _role(messages[0]) == "system" else 0
    dropped = 0
    while len(ids) > block_size and len(messages) - head > 1:
        del messages[head]  # a turn: the message, and the replies up to the next user message
        dropped += 1
        while len(messages) - head > 1 and _role(messages[head]) != "user":
            del messages[head]
            dropped += 1
        ids, _ = render(tokenizer, messages, add_generation_prompt=True)
    if dropped:
        note(f"note: the conversation is longer than the context ({block_size} tokens); "
             f"left out its {dropped} oldest message(s)")  # fmt: skip
    return fit_prompt(ids, block_size, note)


def _role(message: Any) -> str:
    return message["role"] if isinstance(message, dict) else message[0]


def chat_request(
    tokenizer: Any, messages: Sequence[tuple[str, str]]
) -> tuple[str | list[int], list[int], list[str]]:
    """What the server decodes for a chat request: the prompt (a chat run's ids by its own
    template, else the plain template's text), the stop tokens (a chat run's end of turn) and
    the stop strings (the plain template's next turn)."""
    if has_template(tokenizer):
        ids, _ = render(tokenizer, messages, add_generation_prompt=True)
        return ids, chat_stop_tokens(tokenizer), []
    return render_chat(messages), [], [CHAT_STOP]
