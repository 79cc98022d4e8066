"""The chat template: the special tokens of the turns and the one function that renders a
conversation as token ids with its training mask (`render`).

A conversation is a list of messages, each a role (system, user, assistant) and its content.
Each message is its role's token, the content, then the end-of-turn token:

    <|system|>Answer in words.<|end|><|user|>Max(3,7)?<|end|><|assistant|>seven<|end|>

To ask for a reply the ids end with `<|assistant|>` (`add_generation_prompt`); the model writes
the content and ends its turn with `<|end|>`, where generation stops. The training mask covers
each assistant message's content and its `<|end|>` and nothing else: the model learns to
answer and to stop, never to predict what the user will say.

A tokenizer has the template when it has the four tokens (`has_template`); a base tokenizer
gets them with `with_chat_tokens` (new ids after its own, so every old id keeps its meaning).
The same template as Jinja (`JINJA_TEMPLATE`) goes into Hugging Face and GGUF exports.

NOTE: content is encoded with special tokens as plain text, so a user who types `<|user|>`
cannot forge a turn. Hugging Face tokenizers split special tokens out of any text, so for such
content (only) `apply_chat_template` gives other ids than ours.

It lives in `tok` (not in `llm_tiny.infer`) because data preparation renders conversations
too and sits below inference; `llm_tiny.infer.prompt` re-exports it for generation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|end|>"
CHAT_TOKENS = (*ROLE_TOKENS.values(), END_OF_TURN)

# The same template for Hugging Face's `apply_chat_template` and llama.cpp (tested against
# transformers). `raise_exception` is transformers' way to refuse a message.
JINJA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('a message role must be system, user or assistant') }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '" + END_OF_TURN + "' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + ROLE_TOKENS["assistant"] + "' }}{%- endif -%}"
)

Message = Mapping[str, Any] | tuple[str, str]


def message_problem(message: Any) -> str | None:
    """What is wrong with one message ({"role", "content"} or a (role, content) pair), or None.

    >>> message_problem({"role": "robot", "content": "hi"})
    "unknown role 'robot' (roles: system, user, assistant)"
    """
    if isinstance(message, Mapping):
        role, content = message.get("role"), message.get("content")
    elif isinstance(message, (tuple, list)) and len(message) == 2:
        role, content = message
    else:
        return f"a message must be an object with role and content, got {type(message).__name__}"
    if role not in ROLES:
        return f"unknown role {role!r} (roles: {', '.join(ROLES)})"
    if not isinstance(content, str):
        return f"a {role} message's content must be a string, got {type(content).__name__}"
    return None


def as_pairs(messages: Iterable[Message]) -> list[tuple[str, str]]:
    """The messages as (role, content) pairs, checked (ValueError naming the first problem)."""
    pairs = []
    for i, m in enumerate(messages):
        problem = message_problem(m)
        if problem:
            raise ValueError(f"message {i + 1}: {problem}")
        pairs.append((m["role"], m["content"]) if isinstance(m, Mapping) else tuple(m))
    return pairs


def chat_text(messages: Iterable[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as text, special tokens spelled out (what `JINJA_TEMPLATE` renders).

    >>> chat_text([("user", "Hi")], add_generation_prompt=True)
    '<|user|>Hi<|end|><|assistant|>'
    """
    text = "".join(ROLE_TOKENS[r] + c + END_OF_TURN for r, c in as_pairs(messages))
    return text + (ROLE_TOKENS["assistant"] if add_generation_prompt else "")


def has_template(tokenizer: Any) -> bool:
    """Whether the tokenizer has the turn tokens (then its run chats with this template)."""
    return all(t in tokenizer.special_tokens for t in CHAT_TOKENS)


def missing_tokens(tokenizer: Any) -> list[str]:
    """The turn tokens the tokenizer lacks, in `CHAT_TOKENS` order."""
    return [t for t in CHAT_TOKENS if t not in tokenizer.special_tokens]


def with_chat_tokens(tokenizer: Any) -> Any:
    """The tokenizer with the turn tokens it lacks registered after its own special tokens
    (so every id it had keeps its meaning); the tokenizer itself when it has them all."""
    missing = missing_tokens(tokenizer)
    if not missing:
        return tokenizer
    specials = dict(tokenizer.special_tokens)
    for name in missing:
        specials[name] = tokenizer.vocab_size + len(specials) - len(tokenizer.special_tokens)
    return type(tokenizer)(tokenizer.merges, tokenizer.pattern, specials)


def render(
    tokenizer: Any, messages: Iterable[Message], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """A conversation's token ids and, for each, whether training scores it (an assistant
    message's content and its end-of-turn token). The template's one home (module docstring).

    Each content is encoded on its own, between special tokens, which is also how a Hugging
    Face tokenizer encodes the rendered text. A tokenizer without the turn tokens is a
    ValueError (`has_template`); a bad message too (`as_pairs`).
    """
    missing = missing_tokens(tokenizer)
    if missing:
        raise ValueError(f"the tokenizer has no chat template (no {', '.join(missing)})")
    special = tokenizer.special_tokens
    end = special[END_OF_TURN]
    ids: list[int] = []
    mask: list[bool] = []
    for role, content in as_pairs(messages):
        body = tokenizer.encode(content) if content else []
        scored = role == "assistant"
        ids += [special[ROLE_TOKENS[role]], *body, end]
        mask += [False] + [scored] * (len(body) + 1)
    if add_generation_prompt:
        ids.append(special[ROLE_TOKENS["assistant"]])
        mask.append(False)
    return ids, mask
