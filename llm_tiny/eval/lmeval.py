"""The bridge to lm-evaluation-harness: our tasks scored by the `lm-eval` package on the run's
Hugging Face export, and compared with our own scores example by example.

`eval --ckpt RUN --tasks ... --lm-eval DIR` writes into DIR:

    hf/                      the run's HF export (`export.cli.write_hf`)
    tasks/NAME.jsonl         each task's scored rows with the prompts we scored: the few-shot
                             shots (our seeded draw, as many as fit) or the chat template baked
                             into `context`, so that both harnesses read the very same text
    tasks/NAME.yaml          an lm-eval task over that file (`dataset_path: json`, nothing
                             downloaded): choice -> `multiple_choice` (acc, acc_norm),
                             completion -> `loglikelihood` (acc: greedy gives the
                             continuation), generation -> `generate_until` (exact_match)
    results/                 lm-eval's output (`--log_samples`: a response per example)

then runs `python -m lm_eval run --model hf --include_path DIR/tasks ...` on the CPU offline
and reads back each task's accuracy and per-example log-likelihoods. The test holds the two
harnesses to equal accuracy and log-likelihoods within 1e-4 (tests/e2e/test_lm_eval.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from llm_tiny.errors import UserError
from llm_tiny.eval.taskfile import Task

PREFIX = "llm_tiny_"  # our task names in lm-eval's registry, apart from its own tasks
KIND_OUTPUT = {
    "choice": "multiple_choice",
    "completion": "loglikelihood",
    "generation": "generate_until",
}
LM_EVAL_METRIC = {
    "acc": "acc",
    "acc_norm": "acc_norm",
    "exact": "acc",
    "exact_match": "exact_match",
}


def task_rows(task: Task, result: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The scored rows with the prompts we scored (`result`'s records), and the delimiter
    before the answer."""
    rows, delim = [], " "
    for e, record in zip(task.scored, result["records"], strict=True):
        prompt, delim = record["prompt"], record["delimiter"]
        row: dict[str, Any] = {"context": prompt}
        if task.kind == "choice":
            row |= {"choices": list(e.choices), "answer": e.answer}
        elif task.kind == "completion":
            row["continuation"] = e.continuation
        else:
            row["target"] = e.targets[0]
        rows.append(row)
    return rows, delim


def task_yaml(task: Task, data_file: Path, delimiter: str) -> str:
    """The lm-eval task config over `data_file` (JSON, so also valid YAML)."""
    metric = LM_EVAL_METRIC[task.settings.headline]
    config: dict[str, Any] = {
        "task": PREFIX + task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "output_type": KIND_OUTPUT[task.kind],
        "doc_to_text": "context",  # a field name: the text as is (a template drops a final newline)
        "target_delimiter": delimiter,
        "fewshot_delimiter": task.settings.fewshot_delimiter,
        "num_fewshot": 0,
    }
    if task.kind == "choice":
        config |= {"doc_to_choice": "choices", "doc_to_target": "answer"}
        config["metric_list"] = [
            {"metric": m, "aggregation": "mean", "higher_is_better": True}
            for m in ("acc", "acc_norm")
        ]
    elif task.kind == "completion":
        config |= {"doc_to_target": "continuation"}
        config["metric_list"] = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    else:
        s = task.settings
        config |= {
            "doc_to_target": "target",
            "generation_kwargs": {
                "until": list(s.until),
                "max_gen_toks": s.max_new_tokens,
                "do_sample": False,
            },
            "metric_list": [
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "regexes_to_ignore": ["^\\s+", "\\s+$"],
                }
            ],
        }
    assert metric in {m["metric"] for m in config["metric_list"]}
    return json.dumps(config, indent=2) + "\n"


def write_bridge(tasks: list[Task], report: dict[str, Any], out: Path) -> Path:
    """DIR/tasks: a JSONL file and an lm-eval YAML per task; returns the folder."""
    folder = out / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for task, result in zip(tasks, report["tasks"], strict=True):
        rows, delim = task_rows(task, result)
        data = folder / f"{task.name}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
        (folder / f"{task.name}.yaml").write_text(task_yaml(task, data, delim), "utf-8")
    return folder


def export_run(ckpt: str | Path, out: Path) -> Path:
    """The run's HF export at `out` (replaced if there)."""
    from llm_tiny.export.cli import write_hf
    from llm_tiny.export.files import check_out
    from llm_tiny.export.hf import hf_shape
    from llm_tiny.infer.prompt import eot_ids
    from llm_tiny.train.checkpoint import load_model

    model, tokenizer, cfg, _ = load_model(ckpt, "cpu")
    hf_shape(cfg.model)  # a UserError for a model HF has no class for
    check_out(out, True)
    eot = eot_ids(tokenizer, cfg)
    write_hf(out, cfg, model.state_dict(), tokenizer, eot=eot[0] if eot else None)
    return out


def run_lm_eval(
    model_dir: Path, task_dir: Path, names: list[str], out: Path, batch_size: int = 16
) -> dict[str, Any]:
    """lm-eval on the export, offline on the CPU: {task: {"metrics": ..., "samples": [...]}}."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(
            "--lm-eval needs the lm-eval package: pip install 'llm_tiny[eval]'"
        ) from None
    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={model_dir.resolve()},dtype=float32",
        "--tasks", ",".join(PREFIX + n for n in names), "--include_path", str(task_dir.resolve()),
        "--device", "cpu", "--batch_size", str(batch_size),
        "--output_path", str(out.resolve()), "--log_samples",
    ]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"lm-eval failed (exit {proc.returncode}): {tail[0]}")
    return read_results(out, names)


def read_results(out: Path, names: list[str]) -> dict[str, Any]:
    """lm-eval's aggregate metrics and logged samples (in document order) per task."""
    results_files = sorted(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not results_files:
        raise UserError(f"{out}: lm-eval wrote no results")
    aggregate = json.loads(results_files[-1].read_text(encoding="utf-8"))["results"]
    got: dict[str, Any] = {}
    for name in names:
        key = PREFIX + name
        # samples_NAME_DATE.jsonl; NOTE: a glob on NAME_* also matches NAME_choice_DATE.
        files = [p for p in out.rglob(f"samples_{key}_*.jsonl") if p.name[len(key) + 9].isdigit()]
        files.sort(key=lambda p: p.stat().st_mtime)
        samples = [json.loads(line) for line in files[-1].read_text("utf-8").splitlines()]
        samples.sort(key=lambda s: s["doc_id"])
        metrics = {k.split(",")[0]: v for k, v in aggregate[key].items() if k.endswith(",none")}
        got[name] = {"metrics": metrics, "samples": samples}
    return got


def sample_logprobs(sample: dict[str, Any]) -> list[float]:
    """The log-likelihoods lm-eval logged for one example (one per choice, or one)."""
    return (
        [float(r[0]) for r in sample["filtered_resps"]]
        if isinstance(sample["filtered_resps"][0], list)
        else [float(sample["filtered_resps"][0])]
    )


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Per task: our headline accuracy and lm-eval's, and the largest per-example difference
    of log-likelihoods (choice and completion tasks)."""
    out = {}
    for r in ours["tasks"]:
        t = theirs[r["task"]]
        their_acc = t["metrics"].get(LM_EVAL_METRIC[r["metric"]])
        row: dict[str, Any] = {"metric": r["metric"], "ours": r["accuracy"], "lm_eval": their_acc}
        if r["kind"] != "generation":
            diffs = []
            for rec, sample in zip(r["records"], t["samples"], strict=True):
                mine = rec["logprobs"] if r["kind"] == "choice" else [rec["logprob"]]
                diffs += [abs(a - b) for a, b in zip(mine, sample_logprobs(sample), strict=True)]
            row["max_logprob_diff"] = max(diffs)
        out[r["task"]] = row
    return out


def compare_with_lm_eval(
    ckpt: str | Path, tasks: list[Task], report: dict[str, Any], out: Path, args: Any
) -> dict[str, Any]:
    """Export the run, write the tasks for lm-eval, run it, and compare with `report`."""
    model_dir = export_run(ckpt, out / "hf")
    task_dir = write_bridge(tasks, report, out)
    theirs = run_lm_eval(
        model_dir, task_dir, [t.name for t in tasks], out / "results", args.batch_size or 16
    )
    return compare(report, theirs)


def format_comparison(rows: dict[str, Any]) -> str:
    lines = [
        f"{'lm-eval parity':<22} {'metric':<12} {'ours':>8} {'lm-eval':>8} {'max |Δ log p|':>14}"
    ]
    for name, r in rows.items():
        diff = f"{r['max_logprob_diff']:.2e}" if "max_logprob_diff" in r else "-"
        theirs = "-" if r["lm_eval"] is None else f"{100 * r['lm_eval']:.1f}%"
        lines.append(
            f"{name:<22} {r['metric']:<12} {100 * r['ours']:>7.1f}% {theirs:>8} {diff:>14}"
        )
    return "\n".join(lines)
