"""What a time budget keeps back for the end of a run (`llm_tiny.train.budget`)."""

from __future__ import annotations

import pytest

from llm_tiny.train.budget import FULL_SHARE, MAX_SHARE, Reserve, final_eval_note


def test_without_a_budget_nothing_is_reserved_and_the_end_scores_the_whole_split():
    r = Reserve(None, subset=1_000, full=50_000)
    assert r.update(train_rate=100.0) == 0.0
    assert r.final_full()
    assert not Reserve(None, subset=1_000, full=1_000).final_full()  # the subset is the split


def test_the_reserve_covers_the_final_evaluation_and_two_saves():
    r = Reserve(100.0, subset=1_000, full=4_000)
    # Before any evaluation, evaluation is assumed to run at twice the training rate.
    assert r.expected_eval_s(4_000, train_rate=1_000.0) == pytest.approx(2.0)
    assert r.update(train_rate=1_000.0) == pytest.approx(2.0)  # whole split: 2 s <= 25 s
    r.measured_eval(1_000, 5.0)  # 200 tokens/s: the whole split would take 20 s
    r.measured_save(0.5)
    assert r.final_full() and r.update(1_000.0) == pytest.approx(20.0 + 1.0)


def test_a_whole_split_too_slow_for_the_budget_leaves_the_final_evaluation_on_the_subset():
    r = Reserve(100.0, subset=1_000, full=40_000)
    r.measured_eval(1_000, 1.0)  # the whole split: 40 s, over a quarter of 100 s
    assert FULL_SHARE * 100.0 < 40.0 and not r.final_full()
    assert r.update(0.0) == pytest.approx(1.0)  # the subset's evaluation only
    val = {"tokens": 1_000, "loss": 3.0}
    note = final_eval_note(val, r, "out/x")
    assert "1,000 of the split's 40,000 tokens" in note and "about 40s" in note
    assert note.endswith("python -m llm_tiny eval --ckpt out/x")


def test_the_reserve_never_shrinks_and_is_at_most_half_the_budget():
    r = Reserve(10.0, subset=1_000, full=1_000)
    r.measured_eval(1_000, 2.0)
    assert r.update(0.0) == pytest.approx(2.0)
    r.measured_eval(1_000, 1.0)  # faster now: the reserve stays (the schedule never goes back)
    assert r.update(0.0) == pytest.approx(2.0)
    r.measured_eval(1_000, 60.0)  # an evaluation longer than the budget
    assert r.update(0.0) == pytest.approx(MAX_SHARE * 10.0)


def test_the_final_note_gives_the_whole_split_or_nothing():
    r = Reserve(None, subset=10, full=20)
    whole = {"tokens": 10, "full_tokens": 20, "full_loss": 2.0, "full_ppl": 7.39, "full_bpb": 1.5}
    assert final_eval_note(whole, r, "out/x").startswith("the whole validation split (20 tokens)")
    assert final_eval_note({"tokens": 10}, Reserve(None, subset=10, full=10), "out/x") is None
