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
