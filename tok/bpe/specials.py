"""Special tokens: checking a tokenizer's set, and finding them in text (tiktoken's semantics)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from itertools import pairwise
from typing import Literal

from tok.errors import TokenizerError, is_int

AllowedSpecial = Literal["all", "none", "none_raise"] | Collection[str]


def check_specials(specials: Mapping[str, int] | Sequence[str], first_id: int) -> dict[str, int]:
    """Special tokens as name -> id, checked: non-empty UTF-8 names, none a prefix of another,
    ids unique and exactly ``first_id, first_id + 1, ...`` (a sequence gets them in order)."""
    if isinstance(specials, str):
        specials = [specials]
    if isinstance(specials, Mapping):
        out = dict(specials)
    else:
        out = {}
        for name in specials:
            if name in out:
                raise TokenizerError(f"special token {name!r} is given twice")
            out[name] = first_id + len(out)
    by_id: dict[int, str] = {}
    for name, i in out.items():
        if not isinstance(name, str) or not name:
            raise TokenizerError(f"a special token must be a non-empty string, got {name!r}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise TokenizerError(f"special token {name!r} is not valid UTF-8") from None
        if not is_int(i):
            raise TokenizerError(f"special token {name!r} has a non-integer id {i!r}")
        if i in by_id:
            raise TokenizerError(f"special tokens {by_id[i]!r} and {name!r} have the same id {i}")
        if i < first_id:
            raise TokenizerError(
                f"special token {name!r} has id {i}, which overlaps the byte and merge ids "
                f"0-{first_id - 1}"
            )
        by_id[i] = name
    expected = range(first_id, first_id + len(out))
    for i in sorted(by_id):
        if i not in expected:
            raise TokenizerError(
                f"special token {by_id[i]!r} has id {i}; the {len(out)} special tokens must "
                f"take the ids {first_id}-{first_id + len(out) - 1}, right after the merges"
            )
    names = sorted(out)
    for x, y in pairwise(names):
        if y.startswith(x):
            raise TokenizerError(
                f"special token {x!r} is a prefix of {y!r}; which one a text holds would be "
                "ambiguous"
            )
    return out


def allowed_specials(
    allowed_special: AllowedSpecial, specials: Mapping[str, int]
) -> Mapping[str, int] | None:
    """The special tokens that `allowed_special` lets through, as name -> id; None for
    ``"none_raise"`` (see `Tokenizer.encode`)."""
    named = {"all": specials, "none": {}, "none_raise": None}
    if isinstance(allowed_special, str):
        if allowed_special in named:
            return named[allowed_special]
        raise TokenizerError(
            f"allowed_special must be 'all', 'none', 'none_raise' or a set of special "
            f"tokens, got {allowed_special!r}"
        )
    allowed = {}
    for name in allowed_special:
        if name not in specials:
            raise TokenizerError(f"{name!r} is not a special token of this tokenizer")
        allowed[name] = specials[name]
    return allowed


def special_regex(specials: Collection[str]) -> re.Pattern:
    """A regex that matches any of the special tokens' texts."""
    # Longest first: at one position the longest special token wins. (Specials that are
    # prefixes of one another are refused by `check_specials`, so this is also leftmost-first.)
    names = sorted(specials, key=lambda s: (-len(s), s))
    return re.compile("|".join(map(re.escape, names)))
