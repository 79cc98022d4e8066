"""The cut-and-parse rule of `eval.syntax` on hand-made samples (docs/code_model.md)."""

from __future__ import annotations

import pytest

from llm_tiny.eval.syntax import Sample, cut_function, is_function, parse_share, signature

BODY = "def add(a, b):\n    c = a + b\n\n    return c\n"


@pytest.mark.parametrize(
    ("text", "ended", "function"),
    [
        (BODY + "x = add(1, 2)\nprint(x\n", False, BODY),  # the next statement ends it
        (BODY + "\n\nclass A:\n", False, BODY + "\n\n"),  # blank lines stay with the function
        (BODY, True, BODY),  # the end-of-text token ended the file
        (BODY, False, None),  # out of tokens: the body may go on
        (BODY + "# a comment\n    return 2\nx = 1\n", False, BODY + "# a comment\n    return 2\n"),
        ("def f(\n    a,\n):\n    return a\ny\n", False, "def f(\n    a,\n):\n    return a\n"),
        ("def f():\n\treturn 1\nz", False, "def f():\n\treturn 1\n"),  # tabs indent too
        ("def f():\nreturn 1\n", False, "def f():\n"),  # no body: cut at once
        ("def ", True, "def "),
    ],
)
def test_a_function_ends_at_the_first_line_back_at_column_zero(text, ended, function):
    assert cut_function(text, ended) == function


def test_the_cut_text_counts_when_it_is_one_python_function():
    assert is_function(BODY) and is_function("def f(\n    a,\n):\n    return a\n")
    assert is_function('def f():\n    return "\\d"\n')  # an invalid escape only warns
    assert not is_function("default = 1\n")  # parses, but no function
    assert not is_function("def f():\n")  # no body
    assert not is_function("def the king:\nROMEO:\n")
    assert not is_function("def f():\n    return (1,\n")  # an open bracket
    assert not is_function("def f():\n    return 1\x00\n")  # a null byte: False, no crash


def test_the_share_counts_unfinished_samples_as_failures():
    samples = [
        Sample(BODY + "x = 1\n", False, cut_function(BODY + "x = 1\n", False)),  # parses
        Sample(BODY, True, cut_function(BODY, True)),  # parses
        Sample(BODY, False, cut_function(BODY, False)),  # unfinished
        Sample("def f(:\n    pass\ny\n", False, "def f(:\n    pass\n"),  # finished, broken
    ]
    assert [s.parses for s in samples] == [True, True, False, False]
    assert [s.signature_parses for s in samples] == [True, True, True, False]
    assert parse_share(samples) == {
        "samples": 4, "finished": 3, "parsed": 2, "parse_share": 0.5,
        "signatures": 3, "signature_share": 0.75,
    }  # fmt: skip
    assert parse_share([])["parse_share"] == 0.0


def test_the_signature_runs_to_the_first_line_that_ends_with_a_colon():
    assert signature("def f(a,\n      b):\n    return a\n") == "def f(a,\n      b):"
    assert signature("def f(a, b=1):  \n    x\n") == "def f(a, b=1):  "
    assert signature("def f(a, b\n    return a\n") is None
    for text, ok in [
        ("def f(a, b=1):\n", True),
        ("def the king:\nROMEO:\n", False),
        ("def f(a b):\n", False),
        ("def _x(self, *args, **kw) -> int:", True),
    ]:
        head = signature(text)
        assert (head is not None and is_function(head + "\n    pass\n")) == ok, text
