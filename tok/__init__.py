"""tok: a byte-level BPE tokenizer (trainer, encoder, decoder, CLI: ``python -m tok.bpe``).

``from tok import Tokenizer`` works; the import is lazy so that ``python -m tok.bpe`` does not
load `tok.bpe` twice and importing `tok` costs nothing until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tok.bpe import StreamDecoder, Tokenizer

__all__ = ["StreamDecoder", "Tokenizer"]


def __getattr__(name: str):
    if name in __all__:
        from tok import bpe

        return getattr(bpe, name)
    raise AttributeError(f"module 'tok' has no attribute {name!r}")
