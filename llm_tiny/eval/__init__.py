"""Scoring a model: validation loss, perplexity and bits per byte (`loss`, the `eval` command)."""
