"""User-facing errors in `tok`: the exception, the check of integers, one-line usage errors."""

import argparse
from typing import NoReturn

EXIT_USAGE = 2


class TokenizerError(ValueError):
    """A user-facing tokenizer problem; command-line tools print it as one line, exit 2."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type if it has none), cut to `limit`."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_int(x: object) -> bool:
    """An integer and not a bool (``True`` is an ``int`` in Python, but never a valid id)."""
    return isinstance(x, int) and not isinstance(x, bool)


# NOTE: a near-copy of `llm_tiny.errors.ArgumentParser` (without its "(see --help)"): `tok` is
# standalone and must not import `llm_tiny`, which imports `tok`.
class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")
