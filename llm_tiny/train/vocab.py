"""Growing a run's vocabulary: the rows of tokens added to a trained model's tokenizer (the chat
template's turn tokens, `train.init_from` with `data.kind: chat`), and where they start."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from llm_tiny.errors import UserError
from tok.chat import CHAT_TOKENS


def grow_vocab(
    weights: Mapping[str, Tensor],
    vocab_size: int,
    new_ids: Sequence[int],
    like: Mapping[int, int] | None = None,
) -> dict[str, Tensor]:
    """The weights with room for `vocab_size` tokens (never fewer rows than they had) and
    the rows of `new_ids` (tokens added to the tokenizer) initialised: in the embedding and the
    output head, the mean of the rows before the first new id, so a new token starts as an
    average token, neither favoured nor ruled out by the head (Hewitt 2021, "Initializing new
    word embeddings"), or a copy of the rows of an existing token where `like` maps the new id
    to one (`data.chat_init`); in the bigram table, zero (its value at initialisation).
    """
    out = dict(weights)
    known = min(new_ids)
    for key in ("wte.weight", "lm_head.weight"):
        if key in out:
            w = out[key]
            grown = w.new_zeros(max(vocab_size, w.shape[0]), w.shape[1])
            grown[: w.shape[0]] = w
            grown[list(new_ids)] = w[:known].mean(dim=0)
            for new, old in (like or {}).items():
                grown[new] = w[old]
            out[key] = grown
    if "bigram.weight" in out:
        w = out["bigram.weight"]
        n = max(vocab_size, w.shape[0])
        grown = w.new_zeros(n, n)
        grown[: w.shape[0], : w.shape[1]] = w
        grown[list(new_ids)] = 0.0
        grown[:, list(new_ids)] = 0.0
        out["bigram.weight"] = grown
    return out


def chat_init_rows(entries: Sequence[str], tok: Any, base: int, path: Any) -> dict[int, int]:
    """`data.chat_init` (`["<|assistant|>=", ...]`) as {new token id: id of the existing token
    whose rows it copies}; a turn token the base already had, a text that is not one token
    of the base's, or an unknown name is a UserError."""
    like = {}
    for entry in entries:
        name = next((t for t in CHAT_TOKENS if entry.startswith(t)), None)
        if name is None:
            raise UserError(
                f"data.chat_init: {entry!r} does not start with a turn token "
                f"({', '.join(CHAT_TOKENS)})"
            )
        ids = tok.encode(entry[len(name) :])
        new = tok.special_tokens[name]
        if len(ids) != 1 or ids[0] >= base:
            raise UserError(
                f"data.chat_init: {entry[len(name) :]!r} is not one token of {path}'s tokenizer"
            )
        if new < base:
            raise UserError(f"data.chat_init: {path}'s tokenizer already has {name}")
        like[new] = ids[0]
    return like
