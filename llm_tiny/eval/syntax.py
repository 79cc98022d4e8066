"""A code model's quality in words anyone reads: the share of sampled functions that parse.

The measure (docs/code_model.md): sample `n` continuations of the prompt ``def`` after two
blank lines (`CONTEXT`, where PEP 8 puts a module's function) through the one engine
(`infer.engine.run`, all rows batched; row i seeded `seed + i`) at temperature 0.8 with no
other filter (top-k and top-p off), each up to `max_new_tokens` tokens or the end-of-text token.

NOTE: a model that reads ``def`` with no text before it sees a window start unlike any in
training (the stdlib model then wrote a valid signature in 3 % of samples, against 42.5 %
after the blank lines). And the prompt is ``def`` without its space, which the model writes:
the tokenizer joins a space to the word after it (``def foo`` is ``def``, `` f``, ``oo``), so a
lone space before a name never occurs in training.

Each sample becomes a function by `cut_function`:

    text      ``def`` and the completion, decoded (the end-of-text token left out)
    the end   the first line after the first that is not blank, starts at column 0 (no space
              or tab before it) and starts neither with ``#`` (a comment there ends nothing)
              nor with a closing bracket (``)`` ``]`` ``}``: a signature's last line); the
              function is every line before it. Without such a line, the function is the
              whole text when the end-of-text token ended the sample (the file ended), and
              there is none when the sample ran out of tokens (unfinished: it counts as a
              failure).
    parses    `ast.parse` accepts the function and finds one function definition in it
              (``default = 1`` parses, but it is no function: `is_function`).

A coarser count beside it, for models that rarely finish a function: the signature
(`signature`), the lines from ``def`` to the first that ends with ``:``, counts when it parses
as a function with ``pass`` for its body (``def f(a, b=1):`` does, ``def the king:`` does not).

NOTE: the rule reads lines, not Python tokens, so a line at column 0 inside a string (a
docstring's text written flush left) ends the function early, and the cut then fails to
parse; the stdlib writes docstrings indented, so this is rare.

`sample_functions` samples and cuts, `parse_share` counts; the figures of docs/code_model.md
come from `benchmarks/code_quality.py`.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass
from typing import Any

from torch import nn

from llm_tiny.infer.engine import run
from llm_tiny.infer.params import SamplingParams

PROMPT = "def"
CONTEXT = "\n\n\n"  # read before the prompt, not part of a sample's text
TEMPERATURE = 0.8
_NO_END = ("#", ")", "]", "}")


def cut_function(text: str, ended: bool) -> str | None:
    """The function a sample holds (see the module doc), or None when it is unfinished.

    cut_function("def f():\\n    return 1\\nx = 2\\n", False) -> "def f():\\n    return 1\\n"
    cut_function("def f():\\n    return 1\\n", True)          -> the whole text
    cut_function("def f():\\n    return 1\\n", False)         -> None (it may go on)
    """
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines[1:], 1):
        if line.strip() and line[0] not in " \t" and not line.startswith(_NO_END):
            return "".join(lines[:i])
    return text if ended else None


def is_function(source: str) -> bool:
    """Whether `ast.parse` accepts `source` and finds one function definition in it (its
    warnings, such as an invalid escape sequence, hushed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
    return len(tree.body) == 1 and isinstance(tree.body[0], ast.FunctionDef)


def signature(text: str) -> str | None:
    """The lines from the start to the first that ends with ``:`` (comments not stripped),
    or None when none does. ``"def f(a,\n      b):\n    return a\n" -> "def f(a,\n      b):"``"""
    lines = text.split("\n")
    end = next((i for i, line in enumerate(lines) if line.rstrip().endswith(":")), None)
    return None if end is None else "\n".join(lines[: end + 1])


@dataclass(frozen=True)
class Sample:
    """One sample: its text (prompt included), whether the end-of-text token ended it, and the
    function cut from it (None: unfinished)."""

    text: str
    ended: bool
    function: str | None

    @property
    def parses(self) -> bool:
        return self.function is not None and is_function(self.function)

    @property
    def signature_parses(self) -> bool:
        head = signature(self.text)
        return head is not None and is_function(head + "\n    pass\n")


def sample_functions(
    model: nn.Module,
    tokenizer: Any,
    n: int,
    *,
    stop_tokens: tuple[int, ...] = (),
    max_new_tokens: int = 256,
    seed: int = 0,
    max_batch: int | None = 64,
    context: str = CONTEXT,
) -> list[Sample]:
    """`n` samples of ``def`` from the engine, each cut to its function (module doc); the
    model reads `context` before ``def`` (not part of the sample's text)."""
    params = SamplingParams(
        max_new_tokens=max_new_tokens, temperature=TEMPERATURE, top_k=None, top_p=None,
        seed=seed, stop_tokens=stop_tokens,
    )  # fmt: skip
    head = tokenizer.encode(PROMPT)
    prompt = (tokenizer.encode(context) if context else []) + head
    out = []
    for c in run(model, [prompt] * n, params, max_batch=max_batch):
        ended = c.finish == "stop"
        text = tokenizer.decode(head + (c.tokens[:-1] if ended else c.tokens))
        out.append(Sample(text, ended, cut_function(text, ended)))
    return out


def parse_share(samples: list[Sample]) -> dict[str, float | int]:
    """The counts: samples, finished (a function was cut), parsed, and the share parsed; the
    signatures that parse and their share."""
    n = len(samples) or 1
    parsed = sum(s.parses for s in samples)
    signatures = sum(s.signature_parses for s in samples)
    return {
        "samples": len(samples),
        "finished": sum(s.function is not None for s in samples),
        "parsed": parsed,
        "parse_share": parsed / n,
        "signatures": signatures,
        "signature_share": signatures / n,
    }
