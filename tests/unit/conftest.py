"""The unit tier starts no processes.

Unit tests are pure functions and tiny random models: they run in this process, in
milliseconds to a few seconds each. A test that needs a subprocess (a CLI, a fresh
interpreter) or worker processes (a process pool, torchrun, inductor's compiler) belongs in
tests/integration or tests/e2e. While a unit test's fixtures, body and teardown run, starting a
process fails the test with a message that says so (tests/process_guard.py), and a failure that
the code under test caught and hid is reported after the phase.
"""

from __future__ import annotations

import contextlib

import pytest
from process_guard import no_processes

# NOTE: matplotlib builds its font cache on first import, asking `fc-list` (a subprocess) for the
# system fonts. Importing it here, at collection and outside any test, keeps that out of the
# guard on a fresh machine.
with contextlib.suppress(ImportError):
    import matplotlib.font_manager  # noqa: F401


def _guarded(phase: str):
    @pytest.hookimpl(wrapper=True)
    def hook(item):
        with no_processes() as seen:
            result = yield
        if seen:  # the failure was raised, but the code under test caught it
            pytest.fail(f"a unit test tried to start a process during {phase}: {seen[0]}")
        return result

    return hook


pytest_runtest_setup = _guarded("setup")
pytest_runtest_call = _guarded("the test")
pytest_runtest_teardown = _guarded("teardown")
