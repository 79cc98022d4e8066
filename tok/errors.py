"""Errors raised by `tok` for problems in the user's input (bad files, ids, patterns)."""


class TokenizerError(ValueError):
    """A user-facing tokenizer problem; command-line tools print it as one line, exit 2."""
