"""The unit tier's guard (tests/process_guard.py): each way of starting a process fails the test
with the message that says where the test belongs, even under `except Exception`."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest
from process_guard import no_processes

Failed = pytest.fail.Exception


def _double(x: int) -> int:
    return 2 * x


def _pool() -> int:
    with ProcessPoolExecutor(1) as pool:
        return pool.submit(_double, 2).result()


STARTS = {  # what a test does -> what the guard names
    "subprocess": (lambda: subprocess.run([sys.executable, "-c", "pass"]), "subprocess.Popen"),
    "os.system": (lambda: os.system("true"), "os.system"),
    "process": (
        lambda: multiprocessing.Process(target=print).start(),
        "multiprocessing Process.start",
    ),
    "pool": (_pool, "multiprocessing Process.start"),
}


@pytest.mark.parametrize("start", STARTS)
def test_starting_a_process_fails_with_where_the_test_belongs(start):
    # Nested inside the guard this test already runs in: the inner block records what was tried.
    call, what = STARTS[start]
    with no_processes() as seen, pytest.raises(Failed) as failure:
        call()
    assert seen == [what]
    assert f"may not start a process ({what})" in str(failure.value)
    assert "tests/integration" in str(failure.value) and "tests/e2e" in str(failure.value)


def test_except_exception_does_not_hide_it():
    with no_processes() as seen, pytest.raises(Failed), contextlib.suppress(Exception):
        subprocess.run(["true"])  # as library code that tolerates a missing tool would
    assert seen == ["subprocess.Popen"]


def test_the_guard_is_lifted_after_the_block():
    before = subprocess.Popen._execute_child
    with no_processes():
        assert subprocess.Popen._execute_child is not before
    with no_processes():
        pass
    # The outer guard (the unit tier's) is this test's own; within it the inner blocks restore it.
    assert subprocess.Popen._execute_child is before
