"""Our BPE tokenizer <-> a Hugging Face `tokenizer.json` (byte-level BPE), both directions.

Written by hand as JSON (the format is small and stable), so that export needs no `tokenizers`;
the tests check the result with the real `tokenizers` and `AutoTokenizer`.

- Tokens are bytes; `tokenizer.json` spells each byte as one printable character (GPT-2's
  byte-to-unicode table, `byte_alphabet`) and each token as the spelling of its bytes.
- Merge r of ours joins two ids into id 256 + r; HF's merges are the same pairs in the same
  rank order, written as pairs of spelled tokens (a list, not "a b": nothing forbids a token
  that holds a space in a hand-made vocabulary).
- The pre-tokenizer is `Split` on our regex (`Isolated`: every match is a chunk) followed by
  `ByteLevel` with `use_regex: false` (bytes -> characters only); `ignore_merges` is false
  because our encoder always applies the merges, even when a whole chunk is a token.
- Special tokens are HF "added tokens" with our ids (after the merges), matched in the text
  before splitting, as our `encode(text, allowed_special="all")` does.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from llm_tiny.errors import UserError

GPT2_BYTE_LEVEL_PATTERN = "gpt2"  # HF's `ByteLevel(use_regex=True)` splits with GPT-2's pattern


@cache
def byte_alphabet() -> tuple[str, ...]:
    """The character standing for each byte 0-255 (GPT-2's `bytes_to_unicode`): printable
    Latin-1 bytes stand for themselves, the others for chr(256 + n) in byte order.

    >>> byte_alphabet()[ord("A")], byte_alphabet()[ord(" ")], byte_alphabet()[10]
    ('A', 'Ġ', 'Ċ')
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def spell(data: bytes) -> str:
    """Bytes as `tokenizer.json` writes them: ``spell(b" hi\\n") == "Ġhi\\u010a"``."""
    alphabet = byte_alphabet()
    return "".join(alphabet[b] for b in data)


def unspell(word: str) -> bytes | None:
    """The bytes a spelled token stands for; None if it holds a character outside the table."""
    index = _byte_of()
    try:
        return bytes(index[c] for c in word)
    except KeyError:
        return None


@cache
def _byte_of() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_alphabet())}


# ----------------------------------------------------------------------------- export


STAND_IN_BYTE = b"\xff"  # never in UTF-8 text: its token can stand in for a missing end of text


def stand_in_of(vocab: dict[str, int], added: dict[str, int]) -> str | None:
    """The added token that renames the vocabulary's 0xFF byte token (`tokenizer_json`'s
    `stand_in`), or None."""
    if spell(STAND_IN_BYTE) in vocab:
        return None
    return next((name for name, i in added.items() if vocab.get(name) == i), None)


def tokenizer_json(tok: Any, stand_in: str | None = None) -> dict[str, Any]:
    """The `tokenizer.json` content for our `tok.bpe.Tokenizer`.

    `stand_in` names a special token that takes the place of the byte 0xFF token (id 255),
    for a run that has no end-of-text token of its own (`export.cli.write_hf`). 0xFF never
    occurs in UTF-8 text, so no text encodes to that byte token and no merge uses it; the
    vocabulary entry is renamed, because HF tokenizers give an added token the id of the
    vocabulary entry spelled like it (an id of its own would be past the model's rows)."""
    from tok.patterns import resolve_pattern

    n = 256 + len(tok.merges)
    words = [spell(tok.token_bytes(i)) for i in range(n)]
    if len(set(words)) != n:
        raise UserError(
            "the tokenizer has two tokens with the same bytes (a hand-edited merge list?); "
            "a Hugging Face BPE vocabulary cannot hold both"
        )
    if stand_in is not None:
        words[STAND_IN_BYTE[0]] = stand_in
    extra = {stand_in: STAND_IN_BYTE[0]} if stand_in is not None else {}
    specials = sorted([*tok.special_tokens.items(), *extra.items()], key=lambda kv: kv[1])
    # The regex our encoder splits with: a custom pattern is wrapped so that every character
    # it does not match is a chunk of its own (`tok.patterns`), and `Split` must do the same.
    regex = resolve_pattern(tok.pattern).compiled.pattern
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": name,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for name, i in specials
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": regex},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {w: i for i, w in enumerate(words)},
            "merges": [[words[a], words[b]] for a, b in tok.merges],
        },
    }


def tokenizer_config(
    bos: str | None, eos: str | None, max_length: int, chat_template: str | None = None
) -> dict[str, Any]:
    """`tokenizer_config.json`: the class AutoTokenizer builds, the special token names, and
    the chat template (Jinja, for `apply_chat_template`) of a chat run."""
    extra = {"chat_template": chat_template} if chat_template else {}
    return extra | {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }


# ----------------------------------------------------------------------------- import


# Conversations that tell two chat templates apart: roles, turns, empty and unusual content.
PROBES = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": ""}],
    [{"role": "user", "content": " x\n"}, {"role": "assistant", "content": "é 中"}],
]  # fmt: skip


def reproduces_template(source: str) -> bool:
    """Whether the Jinja chat template `source` renders every probe conversation, with and
    without the generation prompt, exactly as our template does (`tok.chat.chat_text`)."""
    from llm_tiny.export.files import need
    from tok.chat import chat_text

    sandbox = need("jinja2.sandbox")
    errors = need("jinja2.exceptions")

    def refuse(message: str) -> None:
        raise errors.TemplateError(message)

    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        template = env.from_string(source)
        for messages in PROBES:
            for reply in (False, True):
                text = template.render(
                    messages=messages, add_generation_prompt=reply, raise_exception=refuse,
                    bos_token="", eos_token="",
                )  # fmt: skip
                if text != chat_text(messages, reply):
                    return False
    except errors.TemplateError:
        return False
    return True


def _pattern_of(pre: Any, source: str) -> str:
    """Our split pattern from a byte-level pre-tokenizer (see the module docstring)."""
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) else []
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel":
        steps = [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is None:
        raise UserError(f"{source}: not a byte-level BPE tokenizer (pre-tokenizer {kinds})")
    if byte_level.get("add_prefix_space"):
        raise UserError(f"{source}: ByteLevel add_prefix_space is on, which ours does not do")
    if kinds == ["ByteLevel"] and byte_level.get("use_regex", True):
        return GPT2_BYTE_LEVEL_PATTERN
    split = steps[0] if kinds == ["Split", "ByteLevel"] else None
    if (
        split is None
        or byte_level.get("use_regex", True)
        or split.get("behavior") != "Isolated"
        or split.get("invert")
        or "Regex" not in split.get("pattern", {})
    ):
        raise UserError(
            f"{source}: pre-tokenizer {kinds} is not one import reads (ByteLevel, or Split on a "
            "regex, Isolated, then ByteLevel without its regex)"
        )
    regex = split["pattern"]["Regex"]
    wrapped = r"|[\s\S]"  # our own wrapping of a custom pattern (`tok.patterns`), undone
    if regex.startswith("(?:") and regex.endswith(")" + wrapped):
        regex = regex[3 : -len(wrapped) - 1]
    return regex


def from_tokenizer_json(data: Any, source: str) -> tuple[Any, dict[int, int]]:
    """Our `Tokenizer` from a byte-level BPE `tokenizer.json` (parsed), and the map from each
    HF token id to ours (the model's embedding rows are reordered with it)."""
    from tok.bpe import Tokenizer
    from tok.errors import TokenizerError

    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise UserError(f"{source}: not a byte-level BPE tokenizer (model type {kind!r})")
    if model.get("byte_fallback") or data.get("normalizer"):
        raise UserError(f"{source}: not a byte-level BPE tokenizer (byte fallback or normalizer)")
    pattern = _pattern_of(data.get("pre_tokenizer"), source)
    added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    vocab = {w: i for w, i in model["vocab"].items() if w not in added}
    stand_in = stand_in_of(model["vocab"], added)
    if stand_in is not None:  # our export of a run without an end-of-text token
        vocab[spell(STAND_IN_BYTE)] = added.pop(stand_in)
    ours: dict[str, int] = {spell(bytes([b])): b for b in range(256)}
    missing = [w for w in ours if w not in vocab]
    if missing:
        raise UserError(f"{source}: the vocabulary lacks byte tokens ({len(missing)} of 256)")
    merges = []
    for m in model.get("merges", []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a not in ours or b not in ours:
            raise UserError(f"{source}: merge {a!r} + {b!r} uses a token not made before it")
        merges.append((ours[a], ours[b]))
        ours.setdefault(a + b, 255 + len(merges))
    if len(ours) != 256 + len(merges):
        raise UserError(f"{source}: two merges make the same token; ours cannot hold that")
    strays = [w for w in vocab if w not in ours or unspell(w) is None]
    if strays:
        raise UserError(
            f"{source}: {len(strays)} vocabulary tokens are neither bytes nor made by a merge "
            f"(e.g. {strays[0]!r}); not a byte-level BPE tokenizer"
        )
    if len(ours) != len(vocab):
        raise UserError(f"{source}: some merges make tokens that are not in the vocabulary")
    specials = sorted(added, key=added.__getitem__)
    try:
        tok = Tokenizer(merges, pattern, specials)
    except TokenizerError as e:
        raise UserError(f"{source}: {e}") from None
    id_map = {vocab[w]: i for w, i in ours.items() if w in vocab}
    id_map.update({added[name]: tok.special_tokens[name] for name in specials})
    return tok, id_map
