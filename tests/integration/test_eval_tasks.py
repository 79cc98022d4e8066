"""The `eval --tasks` command in-process on a trained run: the suite's table and JSON, task
files, samples, the bits-per-byte mode unchanged, and bad input as one line with status 2."""

from __future__ import annotations

import json

import pytest

from llm_tiny.eval.cli import main
from llm_tiny.eval.suite import SUITE


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_suite_table_json_samples_and_written_tasks(tiny_run, tmp_path, capsys):
    samples, written = tmp_path / "samples.jsonl", tmp_path / "tasks"
    code, out, _ = run_main(
        capsys, "--ckpt", str(tiny_run), "--tasks", "suite", "--n", "6", "--json",
        "--samples", str(samples), "--write-tasks", str(written),
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    names = [t["task"] for t in report["tasks"]]
    assert names == list(SUITE)  # the run's validation text is there: cloze and next_word run
    for t in report["tasks"]:
        assert t["n"] == 6 and 0 <= t["accuracy"] <= 1 and 0 <= t["baseline"] < 1
        assert t["centered"] == pytest.approx((t["accuracy"] - t["baseline"]) / (1 - t["baseline"]))
    mean = sum(t["centered"] for t in report["tasks"]) / len(names)
    assert report["score"] == pytest.approx(mean)
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(lines) == 6 * len(names) and {"task", "index"} <= set(lines[0])
    assert sorted(p.stem for p in written.iterdir()) == sorted(names)

    # A written task file scores as the bundled task did.
    code, out, _ = run_main(
        capsys, "--ckpt", str(tiny_run), "--tasks", str(written / "brackets.jsonl"), "--json"
    )
    again = json.loads(out)["tasks"][0]
    first = next(t for t in report["tasks"] if t["task"] == "brackets")
    assert again["accuracy"] == first["accuracy"] and again["metrics"] == first["metrics"]

    code, out, _ = run_main(capsys, "--ckpt", str(tiny_run), "--tasks", "copy", "--n", "4")
    assert code == 0 and "copy" in out and "score (mean centered accuracy over 1 tasks)" in out


def test_bits_per_byte_mode_is_unchanged(tiny_run, capsys):
    code, out, _ = run_main(capsys, "--ckpt", str(tiny_run), "--json")
    assert code == 0 and {"loss", "ppl", "bpb", "tokens"} <= set(json.loads(out))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "nonsense"], "'nonsense' is neither a bundled task"),
        (["--tasks", "BAD"], "BAD:2: 'answer' must be the index"),
        (["--shots", "2"], "--shots applies to tasks; add --tasks"),
        (["--tasks", "copy", "--stride", "4"], "--input and --stride are for bits per byte"),
        (["--tasks", "copy", "--n", "0"], "--n must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_status_2(tiny_run, tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"context": "a", "choices": ["x", "y"], "answer": 0}\n{"context": "a", "choices": ["x", "y"], "answer": 5}\n'
    )
    argv = [str(bad) if a == "BAD" else a for a in argv]
    code, out, err = run_main(capsys, "--ckpt", str(tiny_run), *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message.replace("BAD", str(bad)) in err


def test_a_chat_run_is_asked_in_its_own_template_and_stops_at_its_end_of_turn(chat_run, capsys):
    """The prompt ids of a chat run's evaluation are the template's (`chat_prompt_ids`, the ids
    the chat command and the server send), and its replies end at `<|end|>`."""
    from llm_tiny.eval.harness import TemplateText, chat_prompt, evaluate_task
    from llm_tiny.eval.suite import suite_task
    from llm_tiny.infer.prompt import chat_prompt_ids
    from llm_tiny.train.checkpoint import load_model

    model, tok, cfg, _ = load_model(chat_run, "cpu")
    talk = [("system", "Be brief."), ("user", "Max(3,7)="), ("assistant", "7"), ("user", "2+2=")]
    text, delim = chat_prompt(talk, template=True)
    assert delim == "" and text.endswith("<|assistant|>")
    assert TemplateText(tok).encode(text) == chat_prompt_ids(tok, talk, cfg.model.block_size)

    task = suite_task("digits", n=4)
    result = evaluate_task(model, tok, task, chat=True)
    for record in result["records"]:
        assert record["prompt"].startswith("<|user|>") and record["prompt"].endswith(
            "<|assistant|>"
        )
        assert "<|end|>" not in record.get("generated", "")
    code, out, _ = run_main(capsys, "--ckpt", str(chat_run), "--tasks", "digits", "--n", "4")
    assert code == 0 and "digits" in out  # the command finds the run's template by itself
