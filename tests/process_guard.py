"""`no_processes()`: a block in which starting a process fails the test. The unit tier runs every
test inside one (tests/unit/conftest.py); tests/unit/test_process_guard.py checks the guard."""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import subprocess
from collections.abc import Iterator

import pytest

MESSAGE = (
    "a unit test may not start a process ({what}): move the test that needs it to "
    "tests/integration (worker processes, in-process runs) or tests/e2e (CLIs and other "
    "subprocesses); see STYLE.md item 19"
)


def _refuse(what: str, seen: list[str]):
    def refused(*args, **kwargs):
        seen.append(what)
        pytest.fail(MESSAGE.format(what=what))

    return refused


@contextlib.contextmanager
def no_processes() -> Iterator[list[str]]:
    """Within the block, whatever would start a process (subprocess, os.system, a fork or spawn,
    a multiprocessing Process or pool) fails the test instead. pytest's failure is not an
    `Exception`, so `except Exception` in the code under test does not hide it; the block yields
    the list of what was tried, for a caller that wants to catch what was hidden anyway."""
    seen: list[str] = []
    targets = [
        (subprocess.Popen, "_execute_child", "subprocess.Popen"),
        (multiprocessing.process.BaseProcess, "start", "multiprocessing Process.start"),
    ]
    for name in ("system", "fork", "forkpty", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            targets.append((os, name, f"os.{name}"))
    with pytest.MonkeyPatch.context() as mp:
        for owner, attr, what in targets:
            mp.setattr(owner, attr, _refuse(what, seen))
        yield seen
