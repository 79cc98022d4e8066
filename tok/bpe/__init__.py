"""A byte-level BPE tokenizer: trainer, encoder, decoder, files (CLI: ``python -m tok.bpe``).

The model:

- Ids 0-255 are the raw bytes; merge ``i`` creates id ``256 + i``; special tokens (such as
  ``<|endoftext|>``) take the ids after the last merge. ``vocab_size = 256 + merges + specials``.
- Text is pre-tokenized by a split pattern (`tok.patterns`: ``gpt2``, ``gpt4`` or a regex) and
  merges never cross chunk boundaries. Every valid Python string round-trips,
  ``decode(encode(s)) == s``; a string holding a lone surrogate is not valid UTF-8 and raises
  `TokenizerError` (a ``ValueError``).
- Encoding applies the merges inside each chunk by rank, lowest rank first (the GPT-2
  algorithm), in pure Python behind caches (`encoder`), or, with a named pattern, through
  tiktoken fed our own pattern and ranks once it agrees with our merges (`fast_path`, extra
  ``fast``): the results are identical (tested), and ``fast=False`` turns it off.
- Special tokens follow tiktoken's semantics, with the default of ``encode_ordinary``: see
  `Tokenizer.encode`.
- Decoding joins the tokens' bytes; `decode` turns them into text with ``errors="replace"``
  (an arbitrary id sequence may cut a character), `decode_bytes` returns them raw, and
  `StreamDecoder` yields text token by token without ever splitting a character.
"""

from tok.bpe.tokenizer import StreamDecoder, Tokenizer
from tok.serialize import DEFAULT_PATH
