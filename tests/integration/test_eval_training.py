"""Tasks scored during training (`train.eval_tasks`): the headline in metrics.csv, each task
in tasks.csv, the picture beside the loss, and a resumed run that stays exact."""

from __future__ import annotations

import csv
import json

from test_train import quiet, rows, write_config

from llm_tiny.config import load_config, override
from llm_tiny.plots import pyplot
from llm_tiny.train.loop import train

TASKS = {"eval_tasks": ["brackets", "next_word", "TASKFILE"], "eval_tasks_n": 8}


def task_file(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "mine.jsonl"
    lines = [
        {"context": f"ROMEO{i}:", "choices": [" yes", " no"], "answer": i % 2} for i in range(6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def config(tmp_path, **train_values):
    values = {**TASKS, "eval_tasks": [*TASKS["eval_tasks"][:2], task_file(tmp_path)]}
    return write_config(tmp_path, train={"max_iters": 20, **values, **train_values})


def read(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_scores_are_logged_plotted_and_resume_exactly(tmp_path):
    whole = tmp_path / "whole"
    cfg = load_config(config(whole, eval_tasks_interval=20))
    result = train(override(cfg, **{"optim.lr_decay_iters": 20}), progress=False, log=quiet)
    assert result.step == 20
    table = rows(whole / "run")
    scored = {int(r["step"]): float(r["task_score"]) for r in table if r["task_score"]}
    assert sorted(scored) == [0, 20]  # every 20 steps (eval_interval 10) and at the end
    tasks = read(whole / "run" / "tasks.csv")
    assert [(int(r["step"]), r["task"]) for r in tasks] == [
        (s, t) for s in (0, 20) for t in ("brackets", "next_word", "mine")
    ]
    for step, score in scored.items():
        mine = [float(r["centered"]) for r in tasks if int(r["step"]) == step]
        assert score == sum(mine) / 3
    image = pyplot().imread(whole / "run" / "loss.png")
    assert image.shape[1] == 1800  # three columns of panels: the tasks beside the loss

    # Stopped at 10 and resumed to 20: every row of both files as the uninterrupted run's.
    part = tmp_path / "part"
    cfg = load_config(config(part, eval_tasks_interval=20))
    train(
        override(cfg, **{"train.max_iters": 10, "optim.lr_decay_iters": 20}),
        progress=False,
        log=quiet,
    )
    assert [r["task_score"] for r in rows(part / "run") if r["task_score"]] != []
    resumed = override(cfg, **{"train.resume": "always", "optim.lr_decay_iters": 20})
    train(resumed, progress=False, log=quiet)
    want, got = rows(whole / "run"), rows(part / "run")
    keys = ("step", "train_loss", "val_loss", "task_score")
    # The interrupted run scored tasks at its own last step (10) too; the rest is equal.
    assert [{k: r[k] for k in keys} for r in got if r["step"] != "10"] == [
        {k: r[k] for k in keys} for r in want if r["step"] != "10"
    ]
    both = [read(d / "run" / "tasks.csv") for d in (whole, part)]
    assert [r for r in both[1] if r["step"] != "10"] == [r for r in both[0] if r["step"] != "10"]


def test_a_metrics_file_from_before_task_scores_resumes_with_the_new_column(tmp_path):
    from llm_tiny.train.metrics import COLUMNS, MetricsLog

    old = [c for c in COLUMNS if c != "task_score"]
    path = tmp_path / "metrics.csv"
    path.write_text(
        ",".join(old)
        + "\n"
        + "\n".join(f"{s},,{s / 10}" + "," * (len(old) - 3) for s in (1, 2, 3))
        + "\n"
    )
    log = MetricsLog(tmp_path, resume_step=2)
    log.write(3, train_loss=0.5, task_score=0.25)
    log.close()
    table = read(path)
    assert list(table[0]) == list(COLUMNS)
    assert [(r["step"], r["train_loss"], r["task_score"]) for r in table] == [
        ("1", "0.1", ""), ("2", "0.2", ""), ("3", "0.5", "0.25")
    ]  # fmt: skip
