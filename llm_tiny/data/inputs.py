"""The input files of a run: the run config's names for the input layer's errors
(`CONFIG_NAMES`, `CHAT_NAMES`), the check that they exist and hold something, and their hash
(which tells a preparation whether its input changed).

**The Python standard library** is a code corpus every machine that runs llm_tiny has. An
input entry ``stdlib:*`` names its ``.py`` files, found through the running Python
(``sysconfig.get_paths()["stdlib"]``), and ``stdlib:json`` or ``stdlib:argparse.py`` a package
or a module of it (`stdlib_files`). ``stdlib:`` alone means all too, but YAML reads an unquoted
``stdlib:`` as a mapping; ``*`` spares the quotes, on a command line too. Left out: folders of
third-party packages (``site-packages``, ``dist-packages``) and of test suites (``test``,
``tests``, ``idle_test``; some distributions ship them apart, so the corpus would differ
between machines). Each file is one document (`configs/stdlib_code.yaml`, docs/code_model.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sysconfig
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
STDLIB = "stdlib:"  # an input entry's prefix: the running Python's standard library
STDLIB_SKIPPED = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})


def stdlib_root() -> Path:
    """The running Python's standard library folder (e.g. /usr/lib/python3.11)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(entry: str, key: str = "data.input", root: Path | None = None) -> list[Path]:
    """The `.py` files an entry ``stdlib:PATH`` names: every one of the standard library
    (PATH ``*`` or empty), or those of the package or module PATH below `root` (default
    `stdlib_root`), sorted, folders in `STDLIB_SKIPPED` left out (see the module doc).

    stdlib_files("stdlib:json") -> [.../json/__init__.py, .../json/decoder.py, ...]
    """
    root = stdlib_root() if root is None else root
    name = entry[len(STDLIB) :].strip("/")
    name = "" if name == "*" else name
    top = root / name
    if not top.exists() and not name.endswith(".py") and (root / f"{name}.py").is_file():
        top = root / f"{name}.py"  # stdlib:argparse, the module argparse.py
    if not top.exists():
        raise UserError(f"{key}: {entry} not found (no {name} in the standard library {root})")
    if top.is_file():
        return [top]
    files = []
    for folder, dirs, names in os.walk(top):
        # prune: never walk into site-packages (it can hold gigabytes of third-party code)
        dirs[:] = [d for d in dirs if d not in STDLIB_SKIPPED and not d.startswith(".")]
        files += [Path(folder, n) for n in names if n.endswith(".py") and not n.startswith(".")]
    if not files:
        raise UserError(f"{key}: {entry} holds no .py files in {root}")
    return sorted(files, key=lambda p: p.relative_to(root).parts)


def check_inputs(
    paths: tuple[str, ...] | list[str],
    key: str = "data.input",
    note: Callable[[str], None] | None = None,
) -> list[Path]:
    """The input files (`sources.expand_inputs`, which sends `note` what a folder skipped; a
    ``stdlib:`` entry through `stdlib_files`); a missing or (all) empty input is a UserError."""
    entries: list[str] = []
    for entry in map(str, paths):
        if entry.startswith(STDLIB):
            entries += map(str, stdlib_files(entry, key))
        else:
            entries.append(entry)
    files = expand_inputs(entries, dataclasses.replace(CONFIG_NAMES, input=key), note)
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
