"""The bundled task suite: offline, generated deterministically from a seed, sized for the
models this project trains (a few million parameters down to under one).

    digits          few-shot digit operations, `Max(3,7,5)=` -> `7` (`llm_tiny.tasks`'
                    generator): greedy completion; chance 1/10 (a digit at random)
    digits_nested   the same nested two deep, `Max(First(2,8),5)=` -> `5`
    digits_choice   the flat operations as multiple choice, the wrong choices the other
                    arguments (the plausible mistakes): chance 1/#choices
    copy            few-shot copying of a random letter string, `qhtva =` -> ` qhtva`
    reverse         the same reversed, `qhtva <` -> ` avthq`
    reverse_choice  reversal as multiple choice: the wrong choices are the string itself, a
                    rotation and one swap of neighbours
    brackets        which bracket closes next in `([{}](`: multiple choice among `)`, `]`, `}`
    cloze           the run's own validation text: the next word after a passage, among it and
                    three words of the same text of about its length (skipped without the
                    run's data)
    next_word       the same passages: does greedy decoding write the next word exactly

Each task draws its questions and a pool of shots (rows marked `fewshot`) from
`random.Random(f"{seed}:{name}")`, so a task's rows depend on the seed, its name and `n` only:
adding or leaving out a task never changes another's questions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from llm_tiny.errors import UserError
from llm_tiny.eval.taskfile import Task, TaskSettings, task_from_rows
from llm_tiny.tasks import generate_examples, parse_example

SHOT_POOL = 32  # rows kept apart for shots
CLOZE_CONTEXT = 120  # characters of text before the word to guess
TEXT_TASKS = ("cloze", "next_word")  # drawn from the run's validation text
LETTERS = "abcdefghijklmnopqrstuvwxyz"
BRACKETS = {"(": ")", "[": "]", "{": "}"}
DEFAULT_N = 200
DEFAULT_SEED = 1234

Rows = list[dict[str, Any]]


def _digit_rows(rng: random.Random, n: int, depth: int) -> Rows:
    lines = generate_examples(n, 9, rng.randrange(2**31), max_depth=depth)
    return [
        {"context": line.split("=")[0] + "=", "continuation": line.split("=")[1]} for line in lines
    ]


def digits(rng: random.Random, n: int) -> tuple[TaskSettings, Rows]:
    s = TaskSettings("digits", "completion", shots=5, target_delimiter="", fewshot_delimiter="\n",
                     max_new_tokens=4, baseline=0.1)  # fmt: skip
    return s, _digit_rows(rng, n, 1)


def digits_nested(rng: random.Random, n: int) -> tuple[TaskSettings, Rows]:
    s, _ = digits(rng, 0)
    return replace(s, name="digits_nested"), _digit_rows(rng, n, 2)


def digits_choice(rng: random.Random, n: int) -> tuple[TaskSettings, Rows]:
    rows = []
    for line in generate_examples(n, 9, rng.randrange(2**31)):
        _, args, answer = parse_example(line)
        choices = sorted({str(a) for a in args} | {answer})
        while len(choices) < 2:  # every argument equal: a digit that is not one
            choices = sorted({*choices, str(rng.randrange(10))})
        rng.shuffle(choices)
        rows.append(
            {
                "context": line.split("=")[0] + "=",
                "choices": choices,
                "answer": choices.index(answer),
            }
        )
    s = TaskSettings(
        "digits_choice", "choice", shots=5, target_delimiter="", fewshot_delimiter="\n"
    )
    return s, rows


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 6)))


def copy(rng: random.Random, n: int) -> tuple[TaskSettings, Rows]:
    rows = [{"context": f"{w} =", "continuation": f" {w}"} for w in (_word(rng) for _ in range(n))]
    s = TaskSettings("copy", "completion", shots=3, target_delimiter="", fewshot_delimiter="\n",
                     max_new_tokens=8)  # fmt: skip
    return s, rows


def reverse(rng: random.Random, n: int) -> tuple[TaskSettings, Rows]:
    words = [_word(rng) for _ in range(n)]
    rows = [{"context": f"{w} <", "continuation": f" {w[::-1]}"} for w in words]
    s, _ = copy(rng, 0)
    return replace(s, name="reverse"), rows


def reverse_choice(rng: random.Random, n: int) -> tuple[TaskSettings, Rows]:
    rows = []
    while len(rows) < n:
        w = _word(rng)
        right = w[::-1]
        i = rng.randrange(len(w) - 1)
        swapped = right[:i] + right[i + 1] + right[i] + right[i + 2 :]
        choices = list(dict.fromkeys([right, w, right[1:] + right[0], swapped]))
        if len(choices) < 4:  # a palindrome or repeated letters: draw another
            continue
        rng.shuffle(choices)
        rows.append({"context": f"{w} <", "choices": choices, "answer": choices.index(right)})
    return TaskSettings("reverse_choice", "choice", shots=3, fewshot_delimiter="\n"), rows


def brackets(rng: random.Random, n: int) -> tuple[TaskSettings, Rows]:
    rows = []
    while len(rows) < n:
        text, stack = "", []
        for _ in range(rng.randint(4, 10)):
            if stack and rng.random() < 0.4:
                text += BRACKETS[stack.pop()]
            else:
                stack.append(rng.choice(list(BRACKETS)))
                text += stack[-1]
        if not stack:
            continue
        closers = list(BRACKETS.values())
        rows.append(
            {"context": text, "choices": closers, "answer": closers.index(BRACKETS[stack[-1]])}
        )
    return TaskSettings(
        "brackets", "choice", shots=5, target_delimiter="", fewshot_delimiter="\n"
    ), rows


def _passages(rng: random.Random, documents: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(passage, next word) pairs at words of 3+ letters after a space, with 120 characters
    before them in their document, shuffled; and every word of the text, as often as it occurs.
    The passage ends with the space, which scoring moves to the word (" word", as the text is
    tokenized).
    NOTE: words after a line break are left out: lm-eval's rule feeds `encode(context)`, and
    a context cut before a line break loses the break to the continuation's tokens."""
    spots, words = [], []
    for doc in documents:
        for m in re.finditer(r"(?<= )([A-Za-z]{3,})\b", doc):
            words.append(m.group(1))
            if m.start() >= CLOZE_CONTEXT:
                spots.append((doc[m.start() - CLOZE_CONTEXT : m.start()], m.group(1)))
    rng.shuffle(spots)
    return spots, words


def cloze(rng: random.Random, n: int, documents: list[str]) -> tuple[TaskSettings, Rows]:
    """Passages of the validation text, each ending before a word of 3+ letters; the wrong
    choices are words of the same text within one letter of its length, drawn as often as they
    occur. NOTE: drawn from the distinct words instead, the wrong choices were rarer than the
    right one, and an untrained model picked the right one 46% of the time (chance 25%) from
    the tokenizer alone: frequent words are fewer tokens per character."""
    spots, words = _passages(rng, documents)
    by_len: dict[int, list[str]] = {}
    for w in words:
        by_len.setdefault(len(w), []).append(w)
    rows = []
    for context, word in spots:
        near = [w for k in (-1, 0, 1) for w in by_len.get(len(word) + k, []) if w != word]
        if len(set(near)) < 3:
            continue
        wrong: list[str] = []
        while len(wrong) < 3:
            w = rng.choice(near)
            if w not in wrong:
                wrong.append(w)
        choices = [word, *wrong]
        rng.shuffle(choices)
        rows.append({"context": context, "choices": choices, "answer": choices.index(word)})
        if len(rows) == n:
            break
    _enough("cloze", rows, n)
    return TaskSettings("cloze", "choice", target_delimiter="", metric="acc_norm"), rows


def next_word(rng: random.Random, n: int, documents: list[str]) -> tuple[TaskSettings, Rows]:
    """The validation text's passages again: does greedy decoding write the next word?"""
    spots, _ = _passages(rng, documents)
    rows = [{"context": c, "continuation": w} for c, w in spots[:n]]
    _enough("next_word", rows, n)
    return TaskSettings("next_word", "completion", target_delimiter="", max_new_tokens=8), rows


def _enough(name: str, rows: Rows, n: int) -> None:
    if len(rows) < min(n, SHOT_POOL + 10):
        raise UserError(f"the run's validation text has too few words for {name}")


SUITE: dict[str, Callable[..., tuple[TaskSettings, Rows]]] = {
    "digits": digits,
    "digits_nested": digits_nested,
    "digits_choice": digits_choice,
    "copy": copy,
    "reverse": reverse,
    "reverse_choice": reverse_choice,
    "brackets": brackets,
    "cloze": cloze,
    "next_word": next_word,
}


def suite_task(
    name: str, n: int = DEFAULT_N, seed: int = DEFAULT_SEED, documents: list[str] | None = None
) -> Task:
    """The bundled task `name` with `n` scored rows (and its pool of shots)."""
    if name not in SUITE:
        raise UserError(f"no bundled task {name!r}; choose from {', '.join(SUITE)}")
    rng = random.Random(f"{seed}:{name}")
    extra = (documents or [],) if name in TEXT_TASKS else ()
    settings, rows = SUITE[name](rng, n + SHOT_POOL, *extra)
    rows = rows[SHOT_POOL:] + [{**r, "fewshot": True} for r in rows[:SHOT_POOL]]
    if settings.shots == 0:
        rows = [r for r in rows if not r.get("fewshot")]
    return task_from_rows(settings, rows)


def suite(
    n: int = DEFAULT_N,
    seed: int = DEFAULT_SEED,
    documents: list[str] | None = None,
    names: list[str] | None = None,
) -> tuple[list[Task], list[str]]:
    """The bundled tasks (all, or `names`) and notes on those left out (cloze without text)."""
    tasks, notes = [], []
    for name in names or list(SUITE):
        if name in TEXT_TASKS and not documents:
            notes.append(f"{name} skipped: the run's validation text is not available")
            continue
        try:
            tasks.append(suite_task(name, n, seed, documents))
        except UserError as e:
            if name not in TEXT_TASKS:
                raise
            notes.append(f"{name} skipped: {e}")
    return tasks, notes


def documents_of(tokenizer: Any, ids: list[int]) -> list[str]:
    """Token ids cut into documents at the special tokens, decoded."""
    specials = set(tokenizer.special_tokens.values())
    docs, start = [], 0
    for i, t in enumerate([*ids, None]):
        if t is None or t in specials:
            if i > start:
                docs.append(tokenizer.decode(ids[start:i]))
            start = i + 1
    return docs
