"""Prompt rules and the chat template: worked examples, the text the server has always sent,
and the training mask (which tokens the assistant wrote) against the rendered text."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_tiny.errors import UserError
from llm_tiny.infer.prompt import (
    CHAT_STOP,
    chat_segments,
    chat_tokens,
    prompt_ids,
    render_chat,
    text_of,
)
from tok.bpe import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
TALK = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye")]


@pytest.fixture(scope="module")
def tokenizer():
    text = (ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:20_000]
    return Tokenizer.train(text, 300, special_tokens=["<|endoftext|>"], workers=1)


def test_render_chat_is_the_servers_template():
    assert render_chat(TALK) == (
        "Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:"
    )
    assert render_chat(TALK[:2], reply=False) == "Be brief.\n\nUser: Hi\n\n"
    # A model that goes on past its turn starts the next one, which the server stops at.
    assert (render_chat(TALK[:3], reply=False) + "User:").endswith(CHAT_STOP)
    with pytest.raises(ValueError, match="role must be one of"):
        render_chat([("robot", "beep")])


def test_chat_segments_mark_the_assistants_text():
    assert chat_segments([("user", "Hi"), ("assistant", "Yo")], reply=False) == [
        ("User: Hi\n\n", False), ("Assistant:", False), (" Yo\n\n", True),
    ]  # fmt: skip


def test_chat_tokens_mask_exactly_the_assistants_tokens(tokenizer):
    talk = [*TALK, ("assistant", "Farewell, my lord.")]
    ids, mask = chat_tokens(tokenizer, talk)
    assert len(ids) == len(mask)
    assert tokenizer.decode(ids) == render_chat(talk, reply=False)
    assistant = [t for t, m in zip(ids, mask) if m]
    assert tokenizer.decode(assistant) == " Hello.\n\n Farewell, my lord.\n\n"
    # This tokenizer's split pattern cuts at the pieces' edges: training sees the ids the
    # server's prompt encoding gives.
    assert ids == tokenizer.encode(render_chat(talk, reply=False))


def test_prompt_ids_and_text_of(tokenizer):
    notes = []
    ids = prompt_ids(tokenizer, "ROMEO: " * 30, 8, notes.append)
    assert len(ids) == 8 and "keeping its last 8 tokens" in notes[0]
    with pytest.raises(UserError, match="prompt is empty"):
        prompt_ids(tokenizer, "", 8)
    eot = tokenizer.special_tokens["<|endoftext|>"]
    hi = tokenizer.encode("Hi")
    assert text_of(tokenizer, [*hi, eot, *hi], [eot]) == "Hi"
    # A prompt of the end-of-text token alone (a new document) shows no text of its own.
    assert text_of(tokenizer, [eot, *hi, eot, *hi], [eot]) == "Hi"
    assert text_of(tokenizer, [eot, eot], [eot]) == ""
    assert text_of(tokenizer, hi, []) == "Hi"
