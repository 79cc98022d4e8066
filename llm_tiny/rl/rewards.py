"""The tasks whose answers RL can check, and their rewards.

A task is a list of `Problem`s: the prompt a model continues and the one right answer. The
answer is *computed* (the digit operations evaluate the expression, `tasks.evaluate`), not read
from the file, so a file of prompts alone would do and a wrong label cannot creep in. `TASKS`
maps each `rl.task` name (`config.RlTask`) to its loader; a task without a checker has no entry
and the config refuses its name.

The reward of a completion (`reward`):

    exact answer    1 if `tasks.answer_text(completion)` (the text before the first newline,
                    stripped: the evaluator's own reading) equals the answer, else 0
    format          + `rl.format_reward` if the completion is well formed: a number without
                    sign or leading zero, then the newline that ends an answer (`well_formed`)

The format reward is optional and off by default: it pays for something the exact answer
already needs, so all it can add is a way to score without being right (docs/rl.md).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_tiny.errors import UserError
from llm_tiny.tasks import answer_text, evaluate, parse_expr, read_examples, split_example

WELL_FORMED = re.compile(r"(0|[1-9][0-9]*)\n")  # ASCII digits only: "٧" is no answer here


@dataclass(frozen=True)
class Problem:
    prompt: str  # what the model continues, e.g. "Max(3,7,5)="
    answer: str  # the one right answer, e.g. "7"


def correct(completion: str, answer: str) -> bool:
    """Whether a completion answers `answer` exactly (as the evaluator reads answers).

    >>> correct("7\\n", "7"), correct(" 7\\n", "7"), correct("07\\n", "7"), correct("77\\n", "7")
    (True, True, False, False)
    """
    return answer_text(completion) == answer


def well_formed(completion: str) -> bool:
    """A number (no sign, no leading zero, ASCII digits) and the newline that ends it.

    >>> well_formed("7\\n"), well_formed("7"), well_formed(" 7\\n"), well_formed("07\\n")
    (True, False, False, False)
    """
    return WELL_FORMED.fullmatch(completion) is not None


def reward(completion: str, answer: str, format_weight: float = 0.0) -> float:
    """The exact-answer reward plus `format_weight` for a well-formed completion."""
    r = float(correct(completion, answer))
    if format_weight:
        r += format_weight * float(well_formed(completion))
    return r


def digits_problems(path: str | Path, key: str) -> list[Problem]:
    """The digit-operations prompts of an examples file (`tasks digits`), each with the value of
    its expression as the answer. A missing or malformed file is a UserError naming `key`."""
    try:
        lines = read_examples(path)
    except UserError as e:
        raise UserError(f"{key}: {e}") from None
    problems = []
    for line in lines:
        prompt, _ = split_example(line)
        problems.append(Problem(prompt, str(evaluate(parse_expr(prompt[:-1])))))
    return problems


TASKS: dict[str, Callable[[str | Path, str], list[Problem]]] = {"digits": digits_problems}


def load_problems(task: str, path: str | None, key: str) -> list[Problem]:
    """The problems of `task` in the file at `path` (the config key `key` names it)."""
    if path is None:
        raise UserError(f"{key} is not set: name an examples file, e.g. data/digits/train.txt")
    if task not in TASKS:  # the config's Literal allows only these; a bug if reached
        raise ValueError(f"rl.task {task!r} has no answer checker")
    return TASKS[task](path, key)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (a resumed run checks that its prompts are the same)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
