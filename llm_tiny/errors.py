"""User-facing errors.

A `UserError` is a mistake the user can fix (a bad flag, a missing file, an impossible config
value). Command-line entry points print its message as one line and exit with status 2; any
other exception is a bug and keeps its traceback. `ArgumentParser` reports bad flags the same
way; `add_ckpt_arg` and `add_device_arg` are the flags the commands that load a checkpoint
share, worded and defaulted once.
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


# `runtime.resolve_device` reads these names; `auto` is CUDA, then MPS, then the CPU.
DEFAULT_DEVICE = "auto"


def add_ckpt_arg(parser: argparse.ArgumentParser) -> None:
    """`--ckpt`: the checkpoint a command loads (`checkpoint.resolve_checkpoint_path`)."""
    parser.add_argument(
        "--ckpt",
        required=True,
        help="run directory (its best checkpoint), a .pt file or a sharded NAME.dcp",
    )


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """`--device`: where a command runs the model (`runtime.resolve_device`)."""
    parser.add_argument(
        "--device", default=DEFAULT_DEVICE, help=f"{DEFAULT_DEVICE} (default) | cpu | cuda | mps"
    )
