"""tok: a byte-level BPE tokenizer (trainer, encoder, decoder, CLI: ``python -m tok.bpe``)."""

from tok.bpe import StreamDecoder, Tokenizer
