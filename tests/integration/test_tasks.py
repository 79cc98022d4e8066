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
    confusion,
    depth,
    evaluate,
    example_depth,
    generate_examples,
    make_example,
    ordinal,
    parse_example,
    parse_expr,
    predict,
    read_examples,
    score,
    split_examples,
)

ROOT = Path(__file__).resolve().parents[2]


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


def reference_value(text: str) -> int:
    """The value of an expression by Python itself: the operations as functions of *args."""
    env = {
        "First": lambda *a: a[0],
        "Second": lambda *a: a[1],
        "Last": lambda *a: a[-1],
        "Max": lambda *a: max(a),
        "Min": lambda *a: min(a),
    }
    return eval(text, {"__builtins__": {}}, env)  # our own generated text, never user input


def test_nested_examples_from_the_issue_and_their_depths():
    line = "Max(First(2,8),Second(5,1))=2"  # the issue wrote =5; Max(2, 1) is 2
    assert parse_example(line) == ("Max", [2, 1], "2")
    assert evaluate(parse_expr("Max(First(2,8),Second(5,1))")) == 2  # Max(2, 1)
    assert example_depth("Max(3,7)=7") == 1 and example_depth("Last(3,Min(7,Max(4,1)))=4") == 3
    for bad in ("Max(First(2,8)", "Max()", "Max(3)", "Foo(1,2)", "Max(1,2)x", "3"):
        with pytest.raises(ValueError):
            parse_expr(bad)


def test_nested_generator_answers_are_right_depths_mixed_and_lines_short():
    lines = generate_examples(3000, 9, seed=3, max_depth=2)
    assert lines == generate_examples(3000, 9, seed=3, max_depth=2)
    assert len(set(lines)) == len(lines)
    depths = [example_depth(line) for line in lines]
    # Half are drawn at each depth; repeats of the 5,500 distinct depth-1 lines are dropped.
    assert set(depths) == {1, 2} and 0.4 < depths.count(2) / len(depths) < 0.7
    for line in lines:
        head, answer = line.split("=")
        assert int(answer) == reference_value(head) == evaluate(parse_expr(head))
        assert depth(parse_expr(head)) <= 2 and len(line) <= 51
    deep = generate_examples(200, 99, seed=0, max_depth=3)
    assert max(map(example_depth, deep)) == 3
    result = score(lines[:4], [line.split("=")[1] for line in lines[:4]])
    assert sum(r["n"] for r in result["per_depth"].values()) == 4 and result["accuracy"] == 1


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


def test_confusion_names_what_was_answered_instead():
    assert [ordinal(k) for k in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
    ]  # fmt: skip
    assert confusion("Max", [3, 7, 5], "5") == "2nd largest"
    assert confusion("Max", [7, 7, 5], "5") == "2nd largest"  # ranks count distinct values
    assert confusion("Min", [3, 7, 5], "7") == "3rd smallest"
    assert confusion("Second", [4, 9, 1], "1") == "argument 3"
    assert confusion("First", [4, 9, 4], "9") == "argument 2"
    assert confusion("Last", [2, 6], "3") == "not an argument"
    assert confusion("Last", [2, 6], "") == "malformed"
    examples = ["Max(3,7,5)=7", "Max(1,8,2)=8", "Max(9,4)=9", "First(8,2)=8"]
    result = score(examples, ["5", "1", "9", "2"])
    assert result["correct"] == 1 and result["per_operation"]["Max"]["correct"] == 1
    assert result["errors"]["confusion"] == {
        "First": {"argument 2": 1},
        "Max": {"2nd largest": 1, "3rd largest": 1},
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
    result = cli("digits", "--out", str(tmp_path / "n"), "--n", "300", "--depth", "2")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "n" / "train.txt").read_text().splitlines()
    assert {example_depth(line) for line in lines} == {1, 2}


SPLITS = ("train", "val", "test")


@pytest.mark.parametrize(
    "args",
    [
        ("digits", "--range", "7"),
        ("digits", "--n", "3"),
        ("digits", "--n", "999999999"),
        ("digits", "--depth", "0"),
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


# ----------------------------------------------------------------------------- end to end


def tiny_digits_run(tmp_path: Path) -> tuple[Path, Path]:
    """Generate a small digits dataset with the CLI and train a tiny model on it in-process,
    the way configs/digits.yaml does (val.txt is exactly the validation split)."""
    from llm_tiny.config import config_from_dict
    from llm_tiny.train.loop import train

    data = tmp_path / "digits"
    result = cli("digits", "--out", str(data), "--n", "450", "--seed", "3")
    assert result.returncode == 0, result.stderr
    cfg = config_from_dict(
        {
            "model": {"block_size": 20, "n_layer": 1, "n_head": 2, "n_embd": 32, "pos_emb": "rope"},
            "data": {
                "kind": "examples",
                "input": [str(data / "train.txt"), str(data / "val.txt")],
                "val_fraction": 1 / 9,
                "vocab_size": 256,
                "tokenizer": str(tmp_path / "tok.json"),
                "data_dir": str(tmp_path / "prepared"),
            },
            "optim": {"lr": 3e-3, "warmup_iters": 2},
            "train": {
                "out_dir": str(tmp_path / "run"),
                "max_iters": 20,
                "batch_size": 32,
                "eval_interval": 10,
                "threads": 1,
                "device": "cpu",
                "sample_at_end": False,
            },
        }
    )
    train(cfg, progress=False, log=lambda _: None)
    return tmp_path / "run", data


def test_generate_train_and_evaluate_end_to_end(tmp_path):
    run, data = tiny_digits_run(tmp_path)
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    # val_fraction 1/9 of train.txt + val.txt makes val.txt exactly the validation split.
    assert meta["splits"]["val"]["examples"] == len((data / "val.txt").read_text().splitlines())

    result = cli("eval", "--ckpt", str(run), "--data", str(data / "test.txt"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    lines = (data / "test.txt").read_text().splitlines()
    assert report["n"] == len(lines) == 45
    per_op = report["per_operation"]
    assert sum(r["n"] for r in per_op.values()) == report["n"]
    assert sum(r["correct"] for r in per_op.values()) == report["correct"]
    assert report["errors"]["total"] == report["n"] - report["correct"]
    assert (
        sum(sum(c.values()) for c in report["errors"]["confusion"].values())
        == (report["errors"]["total"])
    )

    text = cli("eval", "--ckpt", str(run), "--data", str(data / "test.txt"))
    assert text.returncode == 0 and text.stdout.splitlines()[0].split() == [
        "operation", "n", "exact", "match",
    ]  # fmt: skip


def test_batched_prediction_equals_one_by_one_greedy_decoding(tmp_path):
    """`predict` batches prompts of equal length through the KV cache; the reference decodes
    each example alone by full recomputation, one argmax at a time."""
    import torch

    from llm_tiny.train.checkpoint import load_model

    run, data = tiny_digits_run(tmp_path)
    model, tokenizer, _, _ = load_model(run)
    examples = (data / "test.txt").read_text().splitlines()
    ours = predict(model, tokenizer, examples, batch_size=7)
    reference = []
    for line in examples:
        ids = tokenizer.encode(line.split("=", 1)[0] + "=")
        new: list[int] = []
        with torch.no_grad():
            for _ in range(3):
                logits, _ = model(torch.tensor([ids + new]))
                new.append(int(logits[0, -1].argmax()))
        reference.append(tokenizer.decode(new).split("\n", 1)[0].strip())
    assert ours == reference
