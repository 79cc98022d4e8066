"""The input files of a run: the run config's names for the input layer's errors
(`CONFIG_NAMES`, `CHAT_NAMES`), the check that they exist and hold something, and their hash
(which tells a preparation whether its input changed)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

from llm_tiny.errors import UserError
from tok.sources import OptionNames, expand_inputs

_HASH_CHUNK = 1 << 20
# How `tok.sources` errors name the options: the run config's keys.
CONFIG_NAMES = OptionNames(
    input="data.input",
    text_field="data.text_field",
    on_bad_record="data.on_bad_record",
    doc_separator="data.doc_separator",
    skip=(
        "data.on_bad_record: skip (--data.on_bad_record=skip; "
        "with make: ARGS=--data.on_bad_record=skip)"
    ),
)
CHAT_NAMES = dataclasses.replace(CONFIG_NAMES, text_field="data.messages_field")


def check_inputs(
    paths: tuple[str, ...] | list[str],
    key: str = "data.input",
    note: Callable[[str], None] | None = None,
) -> list[Path]:
    """The input files (`sources.expand_inputs`, which sends `note` what a folder skipped); a
    missing or (all) empty input is a UserError."""
    files = expand_inputs(paths, dataclasses.replace(CONFIG_NAMES, input=key), note)
    if sum(p.stat().st_size for p in files) == 0:
        names = ", ".join(map(str, files))
        raise UserError(f"{key}: {names} {'is' if len(files) == 1 else 'are'} empty")
    return files


def hash_inputs(files: list[Path]) -> str:
    """sha256 over the inputs' bytes in order (with each file's length, so that moving text
    from one file to the next changes the hash)."""
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.stat().st_size}\n".encode())
        with p.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    return h.hexdigest()
