"""The digit-operations task: generator, splits and scoring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_tiny.errors import UserError
from llm_tiny.tasks import (
    OPERATIONS,
    generate_examples,
    make_example,
    parse_example,
    read_examples,
    score,
    split_examples,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("op", "args", "expected"),
    [
        ("Max", [3, 7, 5], "Max(3,7,5)=7"),
        ("First", [8, 2], "First(8,2)=8"),
        ("Second", [4, 9, 1], "Second(4,9,1)=9"),
        ("Last", [2, 6], "Last(2,6)=6"),
        ("Min", [5, 0, 3], "Min(5,0,3)=0"),
        ("Max", [12, 99, 7], "Max(12,99,7)=99"),
    ],
)
def test_examples_from_the_issue(op, args, expected):
    assert make_example(op, args) == expected
    assert parse_example(expected) == (op, args, expected.split("=")[1])


def test_generator_is_seeded_distinct_and_in_range():
    a = generate_examples(2000, 9, seed=1)
    assert a == generate_examples(2000, 9, seed=1)
    assert a != generate_examples(2000, 9, seed=2)
    assert len(set(a)) == len(a)
    ops = set()
    for line in a:
        op, args, answer = parse_example(line)
        ops.add(op)
        assert 2 <= len(args) <= 5 and all(0 <= x <= 9 for x in args)
        assert answer == str(OPERATIONS[op](args))
    assert ops == set(OPERATIONS)
    wide = generate_examples(500, 99, seed=0)
    assert max(max(parse_example(line)[1]) for line in wide) > 9


def test_splits_do_not_overlap():
    splits = split_examples(generate_examples(1000, 9, seed=0))
    assert [len(v) for v in splits.values()] == [800, 100, 100]
    train, val, test = (set(v) for v in splits.values())
    assert not (train & val) and not (train & test) and not (val & test)


def test_score_counts_and_classifies_errors():
    examples = ["Max(3,7,5)=7", "Min(5,0,3)=0", "First(8,2)=8", "Last(2,6)=6"]
    result = score(examples, ["7", "3", "9", "x"])
    assert result["accuracy"] == 0.25
    assert result["per_operation"]["Max"]["accuracy"] == 1.0
    assert result["per_operation"]["Min"]["accuracy"] == 0.0
    assert result["errors"]["by_kind"] == {
        "other_argument": 1,
        "not_an_argument": 1,
        "malformed": 1,
    }


def test_read_examples_rejects_other_text(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Max(1,2)=2\nhello\n")
    with pytest.raises(UserError, match=r"bad\.txt:2: not a digit-operations example"):
        read_examples(bad)
    with pytest.raises(UserError, match="not found"):
        read_examples(tmp_path / "missing.txt")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_tiny", "tasks", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_cli_writes_disjoint_splits(tmp_path):
    result = cli("digits", "--out", str(tmp_path / "d"), "--n", "500", "--range", "99")
    assert result.returncode == 0, result.stderr
    files = {name: (tmp_path / "d" / f"{name}.txt").read_text().splitlines() for name in SPLITS}
    assert sum(len(v) for v in files.values()) == 500
    assert not set(files["train"]) & set(files["test"])


SPLITS = ("train", "val", "test")


@pytest.mark.parametrize(
    "args",
    [
        ("digits", "--range", "7"),
        ("digits", "--n", "3"),
        ("digits", "--n", "999999999"),
        ("eval", "--ckpt", "nowhere", "--data", "nowhere.txt"),
        ("frobnicate",),
    ],
)
def test_cli_errors_are_one_line(args, tmp_path):
    result = cli(*args, *(("--out", str(tmp_path)) if args[0] == "digits" else ()))
    assert result.returncode == 2, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_json_report_is_valid():
    result = score(["Max(1,2)=2"], ["2"])
    assert json.loads(json.dumps(result))["accuracy"] == 1.0
