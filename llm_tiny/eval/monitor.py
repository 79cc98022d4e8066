"""Tasks scored during training (`train.eval_tasks`), beside the validation loss.

The tasks are built once when training starts (bundled ones with `train.eval_tasks_n` rows,
the text tasks from the run's own validation split) and scored at the evaluations that fall on
`train.eval_tasks_interval` (default: every evaluation) and at the last one. The headline goes
into `metrics.csv` as `task_score`, each task's score into `tasks.csv`, and both are plotted
beside the loss (`plots.loss_figure`).

Resuming stays exact: the tasks come from their own seeded generators, scoring reads the
model in evaluation mode and puts its mode back, and it runs inside `runtime.preserved_rng`,
so no random stream of training moves.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from torch import nn

from llm_tiny.runtime import preserved_rng


class TaskMonitor:
    """`monitor.run(model, step, log)` -> `{"task_score": ...}` at the steps it is due, else {}."""

    def __init__(self, cfg: Any, data: Any) -> None:
        t = cfg.train
        self.cfg = cfg
        self.interval = t.eval_tasks_interval or t.eval_interval
        self.tasks: list = []
        self.chat = False
        self.stops: list[int] = []
        if not t.eval_tasks:
            return
        from llm_tiny.eval.cli import resolve_tasks
        from llm_tiny.eval.harness import is_chat_run, run_shots
        from llm_tiny.eval.suite import documents_of
        from llm_tiny.infer.prompt import eot_ids

        tok = data.tokenizer
        val = data.tokens("val")
        documents = documents_of(tok, val[0 : min(len(val), 200_000)].tolist())
        args = SimpleNamespace(n=t.eval_tasks_n, seed=t.seed, shots=run_shots(cfg), limit=None)
        self.tasks, self.notes = resolve_tasks(list(t.eval_tasks), args, documents)
        self.tokenizer, self.chat, self.stops = tok, is_chat_run(cfg), eot_ids(tok, cfg)

    def due(self, step: int) -> bool:
        """At every `interval`-th step, and at the last evaluation (the only one off the
        `eval_interval` grid, or the one at `max_iters`)."""
        t = self.cfg.train
        return step % self.interval == 0 or step % t.eval_interval != 0 or step >= t.max_iters

    def run(self, model: nn.Module, step: int, log) -> dict[str, float]:
        from llm_tiny.eval.harness import evaluate_tasks

        if not self.tasks or not self.due(step):
            return {}
        with preserved_rng(next(model.parameters()).device):
            report = evaluate_tasks(
                model, self.tokenizer, self.tasks, chat=self.chat, stop_tokens=self.stops
            )
        rows = [
            {k: r[k] for k in ("task", "metric", "accuracy", "baseline", "centered")}
            for r in report["tasks"]
        ]
        log.task_scores(step, rows)
        each = ", ".join(f"{r['task']} {100 * r['accuracy']:.0f}%" for r in report["tasks"])
        log(f"step {step}: task score {report['score']:.4f} ({each}) [{report['seconds']:.1f} s]")
        return {"task_score": report["score"]}
