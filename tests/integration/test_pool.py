"""`tok.pool.ordered_map`, the project's one process pool, against the built-in `map`."""

from __future__ import annotations

import pytest

from tok.pool import IN_FLIGHT_PER_WORKER, ordered_map

_offset = 0  # set in each worker by `_init`


def _init(offset: int) -> None:
    global _offset
    _offset = offset


def _work(x: int) -> int:
    if x == 13:
        raise ValueError("unlucky task 13")
    return x * x + _offset


def test_results_come_in_input_order_as_a_plain_map_gives_them():
    tasks = list(range(40))
    got = list(ordered_map(_work, (t for t in tasks if t != 13), 3, _init, (5,)))
    assert got == [(t, t * t + 5) for t in tasks if t != 13]


def test_the_input_is_read_only_a_few_tasks_ahead():
    pulled = []

    def tasks():
        for t in range(100):
            pulled.append(t)
            yield t

    workers = 2
    for task, _ in ordered_map(_work, (t for t in tasks() if t != 13), workers):
        assert len(pulled) - (task + 1) <= IN_FLIGHT_PER_WORKER * workers
        if task == 20:
            break  # leaving early cancels the rest


def test_the_first_failing_task_is_the_one_raised_in_order():
    seen = []
    with pytest.raises(ValueError, match="unlucky task 13"):
        for task, _ in ordered_map(_work, range(30), 2):
            seen.append(task)
    assert seen == list(range(13))


def test_workers_die_when_their_parent_is_killed(tmp_path):
    # A parent that prints its workers' pids, then waits on a slow task; `kill -9` it and the
    # workers must go too (they held ~190 MB each when `prepare` was killed this way).
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from tok.pool import ordered_map\n"
        "def pid(x):\n"
        "    time.sleep(0.3 if x < 2 else 60)\n"
        "    return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    for _, p in ordered_map(pid, range(10), 2):\n"
        "        print(p, flush=True)\n"
    )
    (tmp_path / "parent.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "parent.py"], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=env
    )
    workers = {int(proc.stdout.readline()), int(proc.stdout.readline())}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, waiting for its reaper
            return f.read().split(")")[-1].split()[0] != "Z"

    deadline = time.monotonic() + 10
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, workers)), "workers outlived their killed parent"
