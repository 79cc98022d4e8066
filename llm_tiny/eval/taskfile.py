"""Task files: the JSONL schema of an evaluation task, its reader and its writer together.

One file is one task; each line is one JSON object (blank lines are skipped). An optional
first line `{"task": {...}}` holds the task's settings; every other line is an example of one
of three kinds (the kind comes from the settings, else from the first example's fields):

    choice      {"context": "2+2=", "choices": ["3", "4", "5"], "answer": 1}
                the model's log-likelihood of each choice after the context picks one
    completion  {"context": "To be, or not to", "continuation": " be"}
                right when greedy decoding gives exactly the continuation
    generation  {"context": "Q: capital of France?\\nA:", "target": "Paris"}
                (or "targets": [...], any one counts) the model generates until a stop
                string; the answer is extracted (`extract`) and compared exactly, with BLEU,
                chrF and ROUGE beside it

Any example may carry `"fewshot": true`: it is then only ever shown as a shot, never scored
(without such rows, the shots of an example are drawn from the other examples).

The settings (`TaskSettings`, all optional) and their defaults:

    name               the file's stem
    kind               choice | completion | generation (default: from the first example)
    shots              examples shown before each question (few-shot), 0
    seed               the few-shot draw's seed (each example draws its own shots from it), 1234
    target_delimiter   between the context and the answer, " " (lm-eval's default)
    fewshot_delimiter  between the shots and the question, "\\n\\n"
    until              generation: stop strings, ["\\n"]
    max_new_tokens     generation / completion: tokens to generate at most, 32
    extract            generation: a regex; the answer is its first group (or whole match)
    metric             the headline metric: choice: acc | acc_norm; completion: exact;
                       generation: exact_match (default: the first of each)
    baseline           the headline metric's chance level (choice: the mean of 1 / #choices;
                       otherwise 0)

A file or row that breaks the schema is a `UserError` naming `path:line` (one line, exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_tiny.errors import UserError

KINDS = ("choice", "completion", "generation")
METRICS = {"choice": ("acc", "acc_norm"), "completion": ("exact",), "generation": ("exact_match",)}


@dataclass(frozen=True)
class Example:
    """One row: the context and, by kind, `choices` + `answer`, `continuation`, or `targets`."""

    context: str
    choices: tuple[str, ...] = ()
    answer: int = 0
    continuation: str = ""
    targets: tuple[str, ...] = ()
    fewshot: bool = False

    def answer_text(self, kind: str) -> str:
        """What follows the context in a shot: the right choice, continuation or target."""
        if kind == "choice":
            return self.choices[self.answer]
        return self.continuation if kind == "completion" else self.targets[0]


@dataclass(frozen=True)
class TaskSettings:
    """A task's settings (see the module docstring)."""

    name: str = "task"
    kind: str = "choice"
    shots: int = 0
    seed: int = 1234
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    until: tuple[str, ...] = ("\n",)
    max_new_tokens: int = 32
    extract: str | None = None
    metric: str | None = None
    baseline: float | None = None

    @property
    def headline(self) -> str:
        return self.metric or METRICS[self.kind][0]


@dataclass(frozen=True)
class Task:
    settings: TaskSettings
    examples: tuple[Example, ...]
    source: str = "<memory>"

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def kind(self) -> str:
        return self.settings.kind

    @property
    def scored(self) -> list[Example]:
        return [e for e in self.examples if not e.fewshot]

    @property
    def shot_pool(self) -> list[Example] | None:
        """The rows kept for shots, or None when shots come from the scored rows."""
        pool = [e for e in self.examples if e.fewshot]
        return pool or None

    def baseline(self) -> float:
        """The chance level of the headline metric (given, else 1 / #choices averaged)."""
        if self.settings.baseline is not None:
            return self.settings.baseline
        if self.kind != "choice":
            return 0.0
        rows = self.scored
        return sum(1 / len(e.choices) for e in rows) / max(len(rows), 1)

    def with_settings(self, **values: Any) -> Task:
        settings = dataclasses.replace(self.settings, **values)
        check_settings(settings, self.source)
        return dataclasses.replace(self, settings=settings)


# ----------------------------------------------------------------------------- reading


def _kind_of(row: dict) -> str | None:
    if "choices" in row:
        return "choice"
    if "continuation" in row:
        return "completion"
    if "target" in row or "targets" in row:
        return "generation"
    return None


def _string(value: Any, what: str, where: str, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: {what} must be a string, got {type(value).__name__}")
    if not empty and not value:
        raise UserError(f"{where}: {what} must not be empty")
    return value


def parse_example(row: Any, kind: str, where: str) -> Example:
    """One row of a task of `kind`, checked; `where` ("path:line") prefixes any error."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: an example must be a JSON object, got {type(row).__name__}")
    known = {"context", "fewshot", "id", "choices", "answer", "continuation", "target", "targets"}
    unknown = sorted(set(row) - known)
    if unknown:
        raise UserError(
            f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(known))})"
        )
    if "context" not in row:
        raise UserError(f"{where}: missing field 'context'")
    context = _string(row["context"], "'context'", where)
    if not context.strip():
        raise UserError(f"{where}: 'context' must hold more than white space")
    fewshot = row.get("fewshot", False)
    if not isinstance(fewshot, bool):
        raise UserError(f"{where}: 'fewshot' must be true or false")
    got = _kind_of(row)
    if got != kind:
        needs = {"choice": "'choices' and 'answer'", "completion": "'continuation'"}
        need = needs.get(kind, "'target' or 'targets'")
        raise UserError(
            f"{where}: a {kind} task's example needs {need}"
            + (f" (this row looks like a {got} example)" if got else "")
        )
    if kind == "choice":
        choices = row["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise UserError(f"{where}: 'choices' must be a list of 2 or more strings")
        choices = tuple(_string(c, "each choice", where) for c in choices)
        if len(set(choices)) != len(choices):
            raise UserError(f"{where}: 'choices' holds the same choice twice")
        answer = row.get("answer")
        if type(answer) is not int or not 0 <= answer < len(choices):
            raise UserError(
                f"{where}: 'answer' must be the index of the right choice, 0..{len(choices) - 1}, "
                f"got {answer!r}"
            )
        return Example(context, choices=choices, answer=answer, fewshot=fewshot)
    if kind == "completion":
        return Example(
            context,
            continuation=_string(row["continuation"], "'continuation'", where),
            fewshot=fewshot,
        )
    if "target" in row and "targets" in row:
        raise UserError(f"{where}: give 'target' or 'targets', not both")
    targets = row["targets"] if "targets" in row else [row["target"]]
    if not isinstance(targets, list) or not targets:
        raise UserError(f"{where}: 'targets' must be a non-empty list of strings")
    targets = tuple(_string(t, "each target", where) for t in targets)
    return Example(context, targets=targets, fewshot=fewshot)


def check_settings(s: TaskSettings, where: str) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(f"{where}: {message}")

    need(s.kind in KINDS, f"'kind' must be one of {', '.join(KINDS)}, got {s.kind!r}")
    need(type(s.shots) is int and s.shots >= 0, f"'shots' must be an integer >= 0, got {s.shots!r}")
    need(type(s.seed) is int, f"'seed' must be an integer, got {s.seed!r}")
    need(isinstance(s.target_delimiter, str), "'target_delimiter' must be a string")
    need(isinstance(s.fewshot_delimiter, str), "'fewshot_delimiter' must be a string")
    need(
        all(isinstance(u, str) and u for u in s.until),
        "'until' must be a list of non-empty strings",
    )
    need(
        type(s.max_new_tokens) is int and s.max_new_tokens >= 1,
        f"'max_new_tokens' must be an integer >= 1, got {s.max_new_tokens!r}",
    )
    if s.extract is not None:
        need(isinstance(s.extract, str), "'extract' must be a regular expression (a string)")
        try:
            re.compile(s.extract)
        except re.error as e:
            raise UserError(f"{where}: 'extract' is not a regular expression ({e})") from None
    need(
        s.metric is None or s.metric in METRICS.get(s.kind, ()),
        f"'metric' of a {s.kind} task must be one of {', '.join(METRICS.get(s.kind, ()))}, "
        f"got {s.metric!r}",
    )
    need(
        s.baseline is None or (isinstance(s.baseline, (int, float)) and 0 <= s.baseline < 1),
        f"'baseline' must be a number in [0, 1), got {s.baseline!r}",
    )


def parse_settings(values: Any, where: str, name: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise UserError(f"{where}: 'task' must be an object of settings")
    names = {f.name for f in dataclasses.fields(TaskSettings)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(
            f"{where}: unknown setting {unknown[0]!r} (settings: {', '.join(sorted(names))})"
        )
    out = {"name": name, **values}
    if "until" in out:
        if not isinstance(out["until"], list):
            raise UserError(f"{where}: 'until' must be a list of strings")
        out["until"] = tuple(out["until"])
    return out


def read_task(path: str | Path, **overrides: Any) -> Task:
    """The task in a JSONL file (the module docstring's schema); `overrides` replace settings
    that are not None (the command line's `--shots`, say)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: task file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the task file ({e})") from None
    settings: dict[str, Any] = {"name": path.stem}
    rows: list[tuple[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not a JSON object ({e.msg} at column {e.colno})") from None
        if isinstance(row, dict) and "task" in row:
            if rows or len(settings) > 1:
                raise UserError(f'{where}: the {{"task": ...}} settings line must come first')
            if set(row) != {"task"}:
                raise UserError(f'{where}: the settings line holds only "task"')
            settings = parse_settings(row["task"], where, path.stem)
            continue
        rows.append((where, row))
    if not rows:
        raise UserError(f"{path}: no examples in this task file")
    if "kind" not in settings:
        first_where, first = rows[0]
        kind = _kind_of(first) if isinstance(first, dict) else None
        if kind is None:
            raise UserError(
                f"{first_where}: cannot tell the task's kind: an example needs 'choices', "
                "'continuation' or 'target'"
            )
        settings["kind"] = kind
    settings |= {k: v for k, v in overrides.items() if v is not None}
    task_settings = TaskSettings(**settings)
    check_settings(task_settings, str(path))
    examples = tuple(parse_example(row, task_settings.kind, where) for where, row in rows)
    task = Task(task_settings, examples, str(path))
    if not task.scored:
        raise UserError(f"{path}: every example is marked fewshot; none is left to score")
    return task


# ----------------------------------------------------------------------------- writing


def example_row(e: Example, kind: str) -> dict[str, Any]:
    row: dict[str, Any] = {"context": e.context}
    if kind == "choice":
        row |= {"choices": list(e.choices), "answer": e.answer}
    elif kind == "completion":
        row["continuation"] = e.continuation
    elif len(e.targets) == 1:
        row["target"] = e.targets[0]
    else:
        row["targets"] = list(e.targets)
    if e.fewshot:
        row["fewshot"] = True
    return row


def settings_row(s: TaskSettings) -> dict[str, Any]:
    """The settings line: every setting that differs from its default, plus name and kind."""
    default = TaskSettings()
    values = {
        f.name: getattr(s, f.name)
        for f in dataclasses.fields(s)
        if getattr(s, f.name) != getattr(default, f.name) or f.name in ("name", "kind")
    }
    if "until" in values:
        values["until"] = list(values["until"])
    return {"task": values}


def write_task(task: Task, path: str | Path) -> Path:
    """`task` as a JSONL file that `read_task` reads back equal."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [settings_row(task.settings)] + [example_row(e, task.kind) for e in task.examples]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), "utf-8")
    tmp.replace(path)
    return path


def task_from_rows(settings: TaskSettings, rows: list[dict[str, Any]]) -> Task:
    """A task built in memory (the bundled suite) through the same checks as a file."""
    check_settings(settings, settings.name)
    examples = tuple(
        parse_example(r, settings.kind, f"{settings.name}[{i}]") for i, r in enumerate(rows)
    )
    return Task(settings, examples, settings.name)
