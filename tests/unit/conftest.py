"""The unit tier starts no processes.

Unit tests are pure functions and tiny random models: they run in this process, in
milliseconds to a few seconds each. A test that needs a subprocess (a CLI, a fresh
interpreter) or worker processes (a process pool, torchrun, inductor's compiler) belongs in
tests/integration or tests/e2e. While a unit test's fixtures, body and teardown run, starting a
process fails the test with a message that says so, even where the code that tried catches the
error (a failure is recorded and reported after the phase).
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import subprocess
from collections.abc import Iterator

import pytest

# NOTE: matplotlib builds its font cache on first import, asking `fc-list` (a subprocess) for the
# system fonts. Importing it here, at collection and outside any test, keeps that out of the
# guard on a fresh machine.
with contextlib.suppress(ImportError):
    import matplotlib.font_manager  # noqa: F401


def _refuse(what: str, seen: list[str]):
    def refused(*args, **kwargs):
        seen.append(what)
        pytest.fail(
            f"a unit test may not start a process ({what}): move the test that needs it to "
            "tests/integration (worker processes, in-process runs) or tests/e2e (CLIs and other "
            "subprocesses); see STYLE.md item 19",
            pytrace=True,
        )

    return refused


@contextlib.contextmanager
def _no_processes() -> Iterator[list[str]]:
    """Within the block, anything that would start a process fails the test instead. Yields
    the list of what was tried, for the cases where the caller swallowed the failure."""
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


def _guarded(phase: str):
    @pytest.hookimpl(wrapper=True)
    def hook(item):
        with _no_processes() as seen:
            result = yield
        if seen:  # the failure was raised, but something caught and hid it
            pytest.fail(f"a unit test tried to start a process during {phase}: {seen[0]}")
        return result

    return hook


pytest_runtest_setup = _guarded("setup")
pytest_runtest_call = _guarded("the test")
pytest_runtest_teardown = _guarded("teardown")
