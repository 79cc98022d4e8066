"""The `eval` command: bits per byte as before, or tasks with `--tasks`.

    python -m llm_tiny eval --ckpt RUN                         # loss, perplexity, bits per byte
    python -m llm_tiny eval --ckpt RUN --tasks suite           # the bundled suite, one score
    python -m llm_tiny eval --ckpt RUN --tasks copy my.jsonl   # bundled names and task files
    python -m llm_tiny eval --ckpt RUN --tasks my.jsonl --lm-eval out/lm   # lm-eval's scores too

Tasks are bundled names (`eval.suite.SUITE`; `suite` is all of them) or JSONL task files
(`eval.taskfile`'s schema). The report is a table (or `--json`), `--samples FILE` writes a
line per scored example, `--write-tasks DIR` the tasks as JSONL files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from llm_tiny.errors import ArgumentParser, UserError, add_ckpt_arg, add_device_arg, run_cli
from llm_tiny.eval import loss
from llm_tiny.eval.suite import DEFAULT_N, DEFAULT_SEED, SUITE, TEXT_TASKS, documents_of, suite
from llm_tiny.eval.taskfile import Task, read_task, write_task

VAL_TOKENS = 200_000  # the validation text the cloze task draws from, at most
# Flags that only mean something with --tasks (the bits-per-byte mode refuses them).
TASK_FLAGS = ("--n", "--seed", "--shots", "--limit", "--chat", "--samples", "--write-tasks",
              "--lm-eval", "--threads")  # fmt: skip


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="llm_tiny eval",
        description="Score a checkpoint: loss, perplexity and bits per byte on text (the "
        "default), or accuracy on tasks (--tasks): multiple choice, completion, generation.",
    )
    add_ckpt_arg(p)
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=int, help="sequences per forward pass")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's; 1 on a busy machine)"
    )
    text = p.add_argument_group("bits per byte (without --tasks)")
    text.add_argument("--input", help="text file to score (default: the run's validation split)")
    text.add_argument(
        "--stride",
        type=int,
        help="advance windows by this many tokens, scoring only those (default: block_size)",
    )
    tasks = p.add_argument_group("tasks")
    tasks.add_argument(
        "--tasks",
        nargs="+",
        metavar="NAME|FILE",
        help=f"'suite' (every bundled task), bundled names ({', '.join(SUITE)}) or JSONL task "
        "files (docs/eval.md has the schema)",
    )
    tasks.add_argument("--n", type=int, help=f"rows per bundled task ({DEFAULT_N})")
    tasks.add_argument("--seed", type=int, help=f"the bundled tasks' seed ({DEFAULT_SEED})")
    tasks.add_argument(
        "--shots", type=int, help="few-shot examples per question (default: the task's)"
    )
    tasks.add_argument("--limit", type=int, help="score only the first N rows of each task")
    tasks.add_argument(
        "--chat",
        choices=("auto", "on", "off"),
        help="prompt through the chat template (auto: when the run was trained on chats)",
    )
    tasks.add_argument("--samples", help="write one JSON line per scored example here")
    tasks.add_argument("--write-tasks", metavar="DIR", help="write the tasks as JSONL files here")
    tasks.add_argument(
        "--lm-eval",
        metavar="DIR",
        help="also run lm-evaluation-harness on the same tasks (an HF export and task YAMLs "
        "are written in DIR) and compare per example",
    )
    return p


def validation_documents(
    ckpt: str | Path, cfg: Any, tokenizer: Any, checkpoint: dict
) -> list[str] | None:
    """The run's validation text as documents (cut at special tokens), or None when its
    prepared data are gone or were prepared from other text."""
    from llm_tiny.data import load_prepared
    from llm_tiny.train.checkpoint import run_data_dir

    try:
        data = load_prepared(run_data_dir(ckpt, cfg), tokenizer)
    except UserError:
        return None
    trained_on = checkpoint.get("data_sha256")
    if trained_on is not None and data.meta.get("input_sha256") != trained_on:
        return None
    return documents_of(tokenizer, data.tokens("val")[0:VAL_TOKENS].tolist())


def resolve_tasks(
    names: list[str], args: Any, documents: list[str] | None
) -> tuple[list[Task], list[str]]:
    """The tasks the command line names, in its order, with `--shots` and `--limit` applied."""
    tasks: list[Task] = []
    notes: list[str] = []
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    for name in names:
        if name == "suite" or name in SUITE:
            got, skipped = suite(args.n, args.seed, documents, None if name == "suite" else [name])
            if name != "suite" and skipped:
                raise UserError(f"{name}: {skipped[0]}")
            tasks += got
            notes += skipped
        elif Path(name).suffix in (".jsonl", ".json") or Path(name).exists():
            tasks.append(read_task(name))
        else:
            raise UserError(
                f"{name!r} is neither a bundled task ({', '.join(['suite', *SUITE])}) nor a "
                "JSONL task file"
            )
    out = []
    for t in tasks:
        if args.shots is not None:
            t = t.with_settings(shots=args.shots)
        if args.limit is not None:
            keep = {id(e) for e in t.scored[: args.limit]}
            t = Task(
                t.settings, tuple(e for e in t.examples if e.fewshot or id(e) in keep), t.source
            )
        out.append(t)
    return out, notes


def evaluate(args: Any) -> dict[str, Any]:
    from llm_tiny.eval.harness import evaluate_tasks, is_chat_run, run_shots
    from llm_tiny.infer.prompt import eot_ids
    from llm_tiny.runtime import resolve_device
    from llm_tiny.train.checkpoint import load_model

    if args.input is not None or args.stride is not None:
        raise UserError("--input and --stride are for bits per byte; leave them out with --tasks")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    model, tokenizer, cfg, checkpoint = load_model(args.ckpt, resolve_device(args.device))
    wants_cloze = any(n in ("suite", *TEXT_TASKS) for n in args.tasks)
    documents = validation_documents(args.ckpt, cfg, tokenizer, checkpoint) if wants_cloze else None
    if args.shots is None and run_shots(cfg) is not None:
        args.shots = run_shots(cfg)
        print(
            f"note: {args.ckpt} was trained on one example per sequence: {args.shots} shots (--shots to change)",
            file=sys.stderr,
        )
    tasks, notes = resolve_tasks(args.tasks, args, documents)
    chat = {"on": True, "off": False}.get(args.chat or "auto", is_chat_run(cfg))
    report = evaluate_tasks(
        model,
        tokenizer,
        tasks,
        chat=chat,
        batch_size=args.batch_size or 32,
        stop_tokens=eot_ids(tokenizer, cfg),
    )
    report |= {"ckpt": str(args.ckpt), "chat": chat, "notes": notes}
    if args.write_tasks:
        for t in tasks:
            write_task(t, Path(args.write_tasks) / f"{t.name}.jsonl")
    if args.lm_eval:
        from llm_tiny.eval.lmeval import compare_with_lm_eval

        report["lm_eval"] = compare_with_lm_eval(args.ckpt, tasks, report, Path(args.lm_eval), args)
    if args.samples:
        with Path(args.samples).open("w", encoding="utf-8") as f:
            for r in report["tasks"]:
                for i, rec in enumerate(r["records"]):
                    f.write(json.dumps({"task": r["task"], "index": i, **rec}) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not args.tasks:
        given = [
            f for f in TASK_FLAGS if getattr(args, f.lstrip("-").replace("-", "_")) is not None
        ]
        if given:
            return run_cli(_needs_tasks(given[0]), "llm_tiny eval")
        return loss.main(argv)
    args.n = DEFAULT_N if args.n is None else args.n
    args.seed = DEFAULT_SEED if args.seed is None else args.seed

    def go() -> int:
        from llm_tiny.eval.harness import format_table

        if args.batch_size is not None and args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        report = evaluate(args)
        public = {
            **report,
            "tasks": [{k: v for k, v in r.items() if k != "records"} for r in report["tasks"]],
        }
        if args.json:
            print(json.dumps(public))
        else:
            for note in report["notes"]:
                print(f"note: {note}", file=sys.stderr)
            print(format_table(report))
            if "lm_eval" in report:
                from llm_tiny.eval.lmeval import format_comparison

                print(format_comparison(report["lm_eval"]))
        return 0

    return run_cli(go, "llm_tiny eval")


def _needs_tasks(flag: str):
    def fail() -> int:
        raise UserError(f"{flag} applies to tasks; add --tasks NAME|FILE")

    return fail
