"""User-facing errors.

A `UserError` is a mistake the user can fix (a bad flag, a missing file, an impossible config
value). Command-line entry points print its message as one line and exit with status 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def run_cli(main: Callable[[], int | None], prog: str = "llm_tiny") -> int:
    """Run `main`, turning a `UserError` into one line on stderr and exit status 2."""
    # Imported here so that `llm_tiny` never needs `tok` unless a command uses it.
    from tok.errors import TokenizerError

    try:
        return main() or 0
    except (UserError, TokenizerError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `prog: error: MESSAGE (see --help)`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")
