"""The JSONL task schema: files read back as written, kinds and settings, and every broken
file or row refused with one line naming it; the bundled suite is deterministic."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import CORPUS, lively_model

from llm_tiny.errors import UserError
from llm_tiny.eval.harness import evaluate_task
from llm_tiny.eval.scoring import encode_pair, score_continuations
from llm_tiny.eval.suite import SUITE, suite, suite_task
from llm_tiny.eval.taskfile import TaskSettings, read_task, task_from_rows, write_task
from tok.bpe import Tokenizer


def write_lines(path, *rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_kinds_come_from_the_first_row_and_settings_from_the_header(tmp_path):
    path = write_lines(
        tmp_path / "capitals.jsonl",
        {"task": {"shots": 1, "until": ["\n", "."], "extract": r"(\w+)"}},
        {"context": "France:", "target": "Paris"},
        "",
        {"context": "Peru:", "targets": ["Lima", "lima"], "fewshot": True},
    )
    task = read_task(path)
    assert (task.name, task.kind, task.settings.shots) == ("capitals", "generation", 1)
    assert task.settings.until == ("\n", ".") and len(task.scored) == 1
    assert task.shot_pool[0].targets == ("Lima", "lima")
    assert read_task(write_task(task, tmp_path / "again.jsonl")).examples == task.examples
    mc = read_task(
        write_lines(tmp_path / "m.jsonl", {"context": "2+2=", "choices": ["3", "4"], "answer": 1})
    )
    assert mc.kind == "choice" and mc.baseline() == 0.5
    assert read_task(mc.source, shots=0, metric="acc_norm").settings.headline == "acc_norm"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ((), "no examples in this task file"),
        (("{not json",), ":1: not a JSON object"),
        (([1, 2],), ":1: cannot tell the task's kind"),
        (({"context": "a", "choices": ["x", "y"], "answer": 2},), ":1: 'answer' must be the index"),
        (({"context": "a", "choices": ["x", "x"], "answer": 0},), "the same choice twice"),
        (({"context": "a", "choices": ["x"], "answer": 0},), "2 or more strings"),
        (({"context": "", "continuation": "b"},), ":1: 'context' must not be empty"),
        (({"context": " \n", "continuation": "b"},), "more than white space"),
        (
            ({"context": "a", "continuation": "b"}, {"context": "a", "target": "b"}),
            ":2: a completion task's example needs 'continuation'",
        ),
        (({"context": "a", "continuation": "b", "colour": 1},), ":1: unknown field 'colour'"),
        (
            ({"context": "a", "continuation": "b"}, {"task": {}}),
            ':2: the {"task": ...} settings line must come first',
        ),
        (
            ({"task": {"shots": -1}}, {"context": "a", "continuation": "b"}),
            "'shots' must be an integer >= 0",
        ),
        (
            ({"task": {"kind": "essay"}}, {"context": "a", "continuation": "b"}),
            "'kind' must be one of",
        ),
        (
            ({"task": {"extract": "("}}, {"context": "a", "target": "b"}),
            "'extract' is not a regular expression",
        ),
        (
            ({"task": {"metric": "bleu"}}, {"context": "a", "target": "b"}),
            "'metric' of a generation task",
        ),
        (({"task": {"shot": 1}}, {"context": "a", "target": "b"}), "unknown setting 'shot'"),
        (({"context": "a", "target": "b", "fewshot": True},), "none is left to score"),
        (({"context": "a", "target": "b", "targets": ["c"]},), "not both"),
    ],
)
def test_broken_files_and_rows_are_one_line_errors(tmp_path, rows, message):
    path = write_lines(tmp_path / "bad.jsonl", *rows)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("{", r"\{")) as e:
        read_task(path)
    assert "\n" not in str(e.value) and str(e.value).startswith(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="task file not found"):
        read_task(tmp_path / "nope.jsonl")


def test_the_suite_is_deterministic_and_its_answers_are_right():
    docs = [CORPUS.read_text(encoding="utf-8")[:20000]]
    first, notes = suite(40, 5, docs)
    assert [t.name for t in first] == list(SUITE) and not notes
    again, _ = suite(40, 5, docs)
    assert [t.examples for t in first] == [t.examples for t in again]
    assert suite_task("copy", 40, 6).examples != suite_task("copy", 40, 5).examples
    by = {t.name: t for t in first}
    for e in by["reverse_choice"].scored:
        assert e.choices[e.answer] == e.context.split(" ")[0][::-1]
    for e in by["brackets"].scored:
        stack = []
        for c in e.context:
            if c in "([{":
                stack.append(c)
            else:
                assert "([{"[")]}".index(c)] == stack.pop()
        assert e.choices[e.answer] == {"(": ")", "[": "]", "{": "}"}[stack[-1]]
    for e in by["cloze"].scored:
        assert len(set(e.choices)) == 4 and all(c.isalpha() for c in e.choices)
    assert all(len(t.scored) == 40 for t in first)
    assert suite(10, 5, None)[1] == [
        "cloze skipped: the run's validation text is not available",
        "next_word skipped: the run's validation text is not available",
    ]


def test_completion_through_the_engine_agrees_with_teacher_forced_argmax():
    # Greedy decoding writes the continuation exactly when every one of its tokens is the
    # model's argmax given the ones before: the engine's answer against one forward pass.
    model = lively_model(vocab_size=260, block_size=24, n_layer=1, n_head=2, n_embd=16)
    tok = Tokenizer.train("abcd " * 50, 260)
    rows, g = [], torch.Generator().manual_seed(1)
    for i in range(12):
        ctx = "".join("abcd"[int(j)] for j in torch.randint(0, 4, (4,), generator=g))
        seq = tok.encode(ctx)
        with torch.no_grad():
            for _ in range(3):
                seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
        greedy = tok.decode(seq[len(tok.encode(ctx)) :])
        rows.append({"context": ctx, "continuation": greedy if i % 2 else greedy[::-1] + "x"})
    task = task_from_rows(TaskSettings("c", "completion", target_delimiter=""), rows)
    result = evaluate_task(model, tok, task)
    reqs = [encode_pair(tok, e.context, e.continuation) for e in task.scored]
    forced = [s.greedy for s in score_continuations(model, reqs, 24)]
    assert [r["exact"] for r in result["records"]] == forced
    assert sum(forced) >= 6
