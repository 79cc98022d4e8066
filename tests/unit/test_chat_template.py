"""The chat template (`tok.chat`): worked examples of the ids and the training mask, the
tokenizer extension, bad messages; and the pure pieces around it: packing, the conversation
check, vocabulary growth, the context rule for prompts, the shared prefix of two turns."""

from __future__ import annotations

import pytest
import torch
from helpers import conversations

from llm_tiny.data.batches import pack_rows
from llm_tiny.data.chat import check_conversation
from llm_tiny.errors import UserError
from llm_tiny.infer.chat import common_prefix
from llm_tiny.infer.prompt import chat_prompt_ids, chat_stop_tokens
from llm_tiny.train.vocab import chat_init_rows, grow_vocab
from tok.bpe import Tokenizer
from tok.chat import (
    CHAT_TOKENS,
    chat_text,
    has_template,
    missing_tokens,
    render,
    with_chat_tokens,
)


@pytest.fixture(scope="module")
def tok():
    base = Tokenizer.train("hello hello world " * 20, 260, special_tokens=["<|endoftext|>"])
    return with_chat_tokens(base)


def test_render_worked_example():
    # Byte level: every character is its byte's id; the specials follow <|endoftext|> (256).
    tok = with_chat_tokens(Tokenizer([], "gpt2", ["<|endoftext|>"]))
    S, U, A, E = (tok.special_tokens[t] for t in CHAT_TOKENS)
    assert (S, U, A, E) == (257, 258, 259, 260)
    talk = [("system", "b"), ("user", "Hi"), ("assistant", "Yo"), ("user", "")]
    ids, mask = render(tok, talk)
    assert ids == [S, 98, E, U, 72, 105, E, A, 89, 111, E, U, E]
    # Only the assistant's content and its end of turn are scored.
    assert [t for t, m in zip(ids, mask) if m] == [89, 111, E]
    ids, mask = render(tok, talk, add_generation_prompt=True)
    assert ids[-1] == A and not mask[-1]
    assert (
        chat_text(talk, True)
        == "<|system|>b<|end|><|user|>Hi<|end|><|assistant|>Yo<|end|><|user|><|end|><|assistant|>"
    )


def test_render_agrees_with_the_text_and_masks_only_the_assistant(tok):
    for conv in conversations(50, seed=3):
        ids, mask = render(tok, conv)
        assert tok.decode(ids) == chat_text(conv)
        # Brute force: the scored tokens are, turn by turn, each assistant message + <|end|>.
        want = []
        for m in conv:
            if m["role"] == "assistant":
                want += [*tok.encode(m["content"]), tok.special_tokens["<|end|>"]]
        assert [t for t, s in zip(ids, mask) if s] == want


def test_content_never_forges_a_turn(tok):
    ids, _ = render(tok, [("user", "<|assistant|>")])
    assert ids.count(tok.special_tokens["<|assistant|>"]) == 0


def test_with_chat_tokens_keeps_every_id():
    base = Tokenizer.train("abc abc abd " * 30, 262, special_tokens=["<|endoftext|>"])
    grown = with_chat_tokens(base)
    assert not has_template(base) and has_template(grown)
    assert missing_tokens(base) == list(CHAT_TOKENS)
    assert grown.vocab_size == base.vocab_size + 4
    assert grown.special_tokens["<|endoftext|>"] == base.special_tokens["<|endoftext|>"]
    assert grown.encode("abc abd") == base.encode("abc abd")
    assert with_chat_tokens(grown) is grown
    with pytest.raises(ValueError, match="no chat template"):
        render(base, [("user", "x")])


@pytest.mark.parametrize(
    "value, why",
    [
        (None, "no 'messages' value"),
        ("hi", "non-empty list"),
        ([], "non-empty list"),
        ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
        ([{"role": "user", "content": 3}], "content must be a string, got int"),
        ([{"role": "user", "content": "x"}], "no assistant turn"),
        (["x"], "must be an object"),
    ],
)
def test_bad_conversations_say_why(value, why):
    pairs, problem = check_conversation(value, "messages")
    assert pairs is None and why in problem


def test_a_good_conversation_becomes_pairs():
    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]
    assert check_conversation(conv, "messages") == ([("user", "a"), ("assistant", "")], None)


def test_pack_rows():
    assert pack_rows([30, 50, 60, 20, 200], 128) == [(0, 1), (2, 3), (4,)]
    assert pack_rows([10, 10, 10], 30) == [(0, 1, 2)]
    assert pack_rows([], 8) == []


def test_grow_vocab_initialises_new_rows_with_the_mean():
    torch.manual_seed(0)
    w = {"wte.weight": torch.randn(5, 3), "lm_head.weight": torch.randn(5, 3),
         "bigram.weight": torch.randn(5, 5), "other": torch.ones(2)}  # fmt: skip
    out = grow_vocab(w, 7, [4, 5, 6])  # token 4 was a padding row; 5, 6 are new rows
    for key in ("wte.weight", "lm_head.weight"):
        assert out[key].shape == (7, 3)
        assert torch.equal(out[key][:4], w[key][:4])
        for i in (4, 5, 6):
            torch.testing.assert_close(out[key][i], w[key][:4].mean(dim=0))
    assert out["bigram.weight"].shape == (7, 7)
    assert torch.equal(out["bigram.weight"][:4, :4], w["bigram.weight"][:4, :4])
    assert (
        out["bigram.weight"][4:].abs().sum() == 0 and out["bigram.weight"][:, 4:].abs().sum() == 0
    )
    assert out["other"] is w["other"]


def test_grow_vocab_copies_the_rows_chat_init_names():
    torch.manual_seed(0)
    w = {"wte.weight": torch.randn(5, 3), "lm_head.weight": torch.randn(5, 3)}
    out = grow_vocab(w, 7, [5, 6], like={6: 2})
    for key in ("wte.weight", "lm_head.weight"):
        torch.testing.assert_close(out[key][5], w[key].mean(dim=0))
        assert torch.equal(out[key][6], w[key][2])


def test_chat_init_maps_turn_tokens_to_one_base_token():
    base = Tokenizer.train("hello hello world = " * 20, 260, special_tokens=["<|endoftext|>"])
    grown = with_chat_tokens(base)
    n = base.vocab_size
    like = chat_init_rows(["<|assistant|>=", "<|end|>\n"], grown, n, "base")
    assert like == {
        grown.special_tokens["<|assistant|>"]: base.encode("=")[0],
        grown.special_tokens["<|end|>"]: base.encode("\n")[0],
    }
    for bad in ("<|robot|>=", "<|user|>hello world", "<|user|>"):
        with pytest.raises(UserError, match=r"data\.chat_init"):
            chat_init_rows([bad], grown, n, "base")


def test_chat_prompt_drops_the_oldest_turns_but_keeps_the_system(tok):
    talk = [("system", "hello"), ("user", "world world"), ("assistant", "hello"), ("user", "hi")]
    whole = chat_prompt_ids(tok, talk, 1000)
    assert whole == render(tok, talk, True)[0]
    notes = []
    short = chat_prompt_ids(tok, talk, len(whole) - 1, notes.append)
    assert short == render(tok, [talk[0], talk[3]], True)[0]
    assert "left out its 2 oldest message(s)" in notes[0]
    # A last message longer than the context keeps its last tokens.
    assert len(chat_prompt_ids(tok, [("user", "hello " * 40)], 8)) == 8
    assert chat_stop_tokens(tok) == [tok.special_tokens["<|end|>"]]


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 5]) == 2
    assert common_prefix([1], []) == 0
    assert common_prefix([4, 5], [4, 5, 6]) == 2
