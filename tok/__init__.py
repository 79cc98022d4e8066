"""tok: a byte-level BPE tokenizer."""
