"""Writing an output folder all at once, and the optional packages export and import need."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from llm_tiny.errors import UserError
from tok.serialize import make_shareable


def need(module: str, extra: str = "export") -> ModuleType:
    """Import an optional package, or a one-line UserError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"this command needs the {extra} extra ({module} is missing): "
            f"pip install 'llm_tiny[{extra}]'"
        ) from None


def check_out(out: Path, force: bool, flag: str = "--out") -> None:
    """Refuse an existing non-empty output (a file, or a folder with files) unless `force`."""
    if out.is_dir() and not any(out.iterdir()):
        return
    if out.exists() and not force:
        raise UserError(f"{flag} {out} already exists; pass --force to replace it")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: cannot write in {existing}")


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out`, renamed to `out` when the block ends without error
    (an old `out` is moved aside first and removed after), removed otherwise: a reader never
    sees half an export."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        make_shareable(tmp)  # mkdtemp's folder is owner-only
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
