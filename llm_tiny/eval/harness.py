"""Running tasks on a model: few-shot prompts, then each kind's scoring, then one report.

    choice      every choice's log-likelihood after the prompt, all of a task's choices in
                batched forward passes (`scoring.score_continuations`); `acc` picks the highest
                sum, `acc_norm` the highest per character of the choice (lm-eval's two)
    completion  greedy decoding through the one engine (`infer.engine.run`, batched); right
                when the text it generates begins with the continuation (`exact`)
    generation  greedy decoding through the engine until a stop string or `max_new_tokens`,
                the answer extracted (`scoring.extract_answer`): `exact_match` against any
                target, BLEU / chrF / ROUGE beside it

Few-shot: example i shows `shots` other examples (as many as fit in the context with the
answer, `fitted_prompt`) (or rows marked `fewshot`) drawn by
`random.Random(f"{seed}:{i}")`, so an example's prompt depends on the seed and its index only,
not on batching or on which other tasks run. Shots and question are joined as lm-eval joins
them: `context + target_delimiter + answer` per shot, `fewshot_delimiter` between.

Chat runs: the prompt is a conversation instead (each shot a user turn and the assistant's
answer, then the question as a user turn and the template's cue for a reply), rendered by the
run's chat template (`chat_prompt`: the one seam between tasks and the template), and answers
follow the cue after one space.

The report's headline `score` is the mean over tasks of centered accuracy (`scoring.centered`,
nanochat's CORE): chance is 0, perfect is 1.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from llm_tiny.eval.scoring import (
    centered,
    encode_pair,
    extract_answer,
    pick,
    score_continuations,
    split_pair,
    text_overlap,
)
from llm_tiny.eval.taskfile import Example, Task
from llm_tiny.infer.engine import run
from llm_tiny.infer.params import SamplingParams
from llm_tiny.infer.prompt import chat_stop_tokens, fit_prompt, render_chat, text_of
from tok.chat import CHAT_TOKENS, chat_text, has_template

CHAT_DELIMITER = " "  # the plain template's "Assistant:" cue, then a space, then the answer
TEMPLATE = "template"  # `chat=TEMPLATE`: the run's own template, with its turn tokens


def chat_prompt(messages: list[tuple[str, str]], template: bool = False) -> tuple[str, str]:
    """(prompt text, delimiter) of a conversation that asks for the assistant's reply: the one
    seam between tasks and the chat template. A chat run's own template (`template`) writes its
    turn tokens as text, which `TemplateText` encodes as their ids; the answer follows
    `<|assistant|>` directly. A base run gets the plain template (`infer.prompt.render_chat`)."""
    if template:
        return chat_text(messages, add_generation_prompt=True), ""
    return render_chat(messages, reply=True), CHAT_DELIMITER


class TemplateText:
    """A tokenizer whose `encode` reads the chat template's turn tokens in a prompt's text as
    their ids: evaluation builds its prompts as text, and the template's tokens in it are ours
    (a task's own text never holds them), so `encode(chat_prompt(m, True)[0])` equals
    `infer.prompt.chat_prompt_ids(m)` (tested). Everything else is the tokenizer's."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, allowed_special=set(CHAT_TOKENS))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def is_chat_run(cfg: Any) -> bool:
    """Whether a run was trained on conversations (its data section says so)."""
    return getattr(cfg.data, "kind", None) == "chat"


def run_shots(cfg: Any) -> int | None:
    """The shots a run is asked with when no one says: 0 for a run trained on one example per
    sequence (`data.kind: examples`: a few-shot prompt is text it never saw, and the digit
    recipes answer 98-100% zero-shot but 30-70% 5-shot), else None (each task's own)."""
    return 0 if getattr(cfg.data, "kind", None) == "examples" else None


def draw_shots(task: Task, index: int) -> list[Example]:
    """The shots of scored example `index`: `shots` rows drawn without replacement from the
    fewshot rows, else from the other scored rows, by a generator seeded with (seed, index)."""
    k = task.settings.shots
    if k == 0:
        return []
    scored = task.scored
    pool = task.shot_pool or [e for j, e in enumerate(scored) if j != index]
    if len(pool) < k:
        from llm_tiny.errors import UserError

        raise UserError(f"{task.source}: {k} shots asked for, only {len(pool)} rows to draw from")
    return random.Random(f"{task.settings.seed}:{index}").sample(pool, k)


def build_prompt(
    task: Task, index: int, chat: bool | str = False, shots: int | None = None
) -> tuple[str, str]:
    """(prompt text, delimiter before the answer) of scored example `index`, with its first
    `shots` drawn shots (default: all of them); `chat`: as a conversation, in the plain
    template (True) or the run's own (`TEMPLATE`)."""
    s, example = task.settings, task.scored[index]
    shots = draw_shots(task, index)[:shots]
    if chat:
        messages: list[tuple[str, str]] = []
        for shot in shots:
            messages += [("user", shot.context), ("assistant", shot.answer_text(task.kind))]
        return chat_prompt([*messages, ("user", example.context)], chat == TEMPLATE)
    parts = [shot.context + s.target_delimiter + shot.answer_text(task.kind) for shot in shots]
    return "".join(p + s.fewshot_delimiter for p in parts) + example.context, s.target_delimiter


def fitted_prompt(
    task: Task, index: int, tokenizer: Any, block_size: int, chat: bool | str = False
) -> tuple[str, str, int]:
    """`build_prompt` with as many of the example's shots as fit in the context together with
    its longest answer, and their number: whole shots are dropped, the last first, rather than
    the prompt cut through the middle of one (the question itself is never dropped)."""
    example = task.scored[index]
    answers = {"choice": example.choices, "completion": (example.continuation,)}
    for k in range(task.settings.shots, 0, -1):
        prompt, delim = build_prompt(task, index, chat, k)
        need = max(
            len(tokenizer.encode(delim + a)) for a in answers.get(task.kind, example.targets)
        )
        if len(tokenizer.encode(prompt)) + need <= block_size:
            return prompt, delim, k
    return (*build_prompt(task, index, chat, 0), 0)


# ----------------------------------------------------------------------------- the kinds


def _choice(model, tokenizer, task, prompts, block_size, batch_size) -> tuple[dict, list]:
    requests, owners = [], []
    for i, (example, (prompt, delim)) in enumerate(zip(task.scored, prompts)):
        for c in example.choices:
            requests.append(encode_pair(tokenizer, prompt, delim + c))
            owners.append(i)
    scored = score_continuations(model, requests, block_size, batch_size)
    per: list[list[float]] = [[] for _ in task.scored]
    for i, s in zip(owners, scored):
        per[i].append(s.logprob)
    records, acc, acc_norm = [], 0, 0
    for example, lps in zip(task.scored, per):
        pred = pick(lps)
        pred_norm = pick(lps, [len(c) for c in example.choices])
        acc += pred == example.answer
        acc_norm += pred_norm == example.answer
        records.append(
            {"logprobs": lps, "pred": pred, "pred_norm": pred_norm, "answer": example.answer}
        )
    n = len(task.scored)
    return {"acc": acc / n, "acc_norm": acc_norm / n}, records


def _generate(model, tokenizer, prompts, max_new: int, batch_size: int, stops) -> list[str]:
    """Greedy continuations of the prompts through the engine, as text up to a stop token."""
    block = model.config.block_size
    ids = [fit_prompt(tokenizer.encode(p), block) for p in prompts]
    params = SamplingParams(max_new_tokens=max_new, temperature=0.0, stop_tokens=tuple(stops))
    done = run(model, ids, params, max_batch=batch_size)
    return [text_of(tokenizer, c.tokens, stops) for c in done]


def _completion(model, tokenizer, task, prompts, block_size, batch_size, stops):
    pairs = [split_pair(p, d + e.continuation) for e, (p, d) in zip(task.scored, prompts)]
    requests = [encode_pair(tokenizer, ctx, cont) for ctx, cont in pairs]
    scored = score_continuations(model, requests, block_size, batch_size)
    longest = max(len(cont) for _, cont in requests)
    max_new = max(task.settings.max_new_tokens, longest)
    texts = _generate(model, tokenizer, [c for c, _ in pairs], max_new, batch_size, stops)
    records, exact = [], 0
    for (_, cont), text, s in zip(pairs, texts, scored):
        ok = text.startswith(cont)
        exact += ok
        records.append({"generated": text[: len(cont) + 20], "exact": ok, "logprob": s.logprob})
    n = len(pairs)
    return {"exact": exact / n, "logprob": sum(s.logprob for s in scored) / n}, records


def _generation(model, tokenizer, task, prompts, block_size, batch_size, stops):
    s = task.settings
    texts = _generate(
        model, tokenizer, [p for p, _ in prompts], s.max_new_tokens, batch_size, stops
    )
    records, answers, exact = [], [], 0
    for example, text in zip(task.scored, texts):
        answer = extract_answer(text, s.until, s.extract)
        ok = answer in {t.strip() for t in example.targets}
        exact += ok
        answers.append(answer)
        records.append({"generated": text, "answer": answer, "exact_match": ok})
    metrics = {"exact_match": exact / len(texts)}
    metrics |= text_overlap(answers, [[t.strip() for t in e.targets] for e in task.scored])
    return metrics, records


KIND_RUNNERS: dict[str, Callable[..., tuple[dict, list]]] = {
    "choice": _choice,
    "completion": _completion,
    "generation": _generation,
}


def evaluate_task(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    *,
    chat: bool = False,
    batch_size: int = 32,
    stop_tokens: Sequence[int] = (),
) -> dict[str, Any]:
    """One task's scores: its metrics, the headline metric as `accuracy` against `baseline`,
    `centered`, the time it took, and a record per example (`records`). With `chat`, a run
    with a chat template is asked in it and its replies stop at its end-of-turn token."""
    t0 = time.perf_counter()
    if chat and has_template(tokenizer):
        chat, stop_tokens = TEMPLATE, [*stop_tokens, *chat_stop_tokens(tokenizer)]
        tokenizer = TemplateText(tokenizer)
    block = model.config.block_size
    fitted = [fitted_prompt(task, i, tokenizer, block, chat) for i in range(len(task.scored))]
    prompts = [(p, d) for p, d, _ in fitted]
    args = (model, tokenizer, task, prompts, block, batch_size)
    if task.kind == "choice":
        metrics, records = _choice(*args)
    else:
        metrics, records = KIND_RUNNERS[task.kind](*args, list(stop_tokens))
    accuracy, baseline = metrics[task.settings.headline], task.baseline()
    return {
        "task": task.name,
        "kind": task.kind,
        "n": len(task.scored),
        "shots": task.settings.shots,
        "shots_used": sum(k for _, _, k in fitted) / len(fitted),  # fewer where they do not fit
        "metric": task.settings.headline,
        "accuracy": accuracy,
        "baseline": baseline,
        "centered": centered(accuracy, baseline),
        "metrics": metrics,
        "seconds": time.perf_counter() - t0,
        "records": [{"prompt": p, "delimiter": d, **r} for (p, d), r in zip(prompts, records)],
    }


def evaluate_tasks(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[Task],
    *,
    chat: bool = False,
    batch_size: int = 32,
    stop_tokens: Sequence[int] = (),
) -> dict[str, Any]:
    """Every task's result and the headline `score`: the mean centered accuracy."""
    t0 = time.perf_counter()
    results = [
        evaluate_task(
            model, tokenizer, t, chat=chat, batch_size=batch_size, stop_tokens=stop_tokens
        )
        for t in tasks
    ]
    score = sum(r["centered"] for r in results) / max(len(results), 1)
    return {"score": score, "tasks": results, "seconds": time.perf_counter() - t0}


def format_table(report: dict[str, Any]) -> str:
    """The report as a table: a row per task, then the headline."""
    head = f"{'task':<22} {'kind':<10} {'n':>5} {'shots':>5} {'metric':<12} {'score':>7} {'chance':>7} {'centered':>8} {'secs':>6}"
    lines = [head, "-" * len(head)]
    for r in report["tasks"]:
        lines.append(
            f"{r['task']:<22} {r['kind']:<10} {r['n']:>5} {r['shots']:>5} {r['metric']:<12} "
            f"{100 * r['accuracy']:>6.1f}% {100 * r['baseline']:>6.1f}% {r['centered']:>8.3f} "
            f"{r['seconds']:>6.1f}"
        )
        extra = {k: v for k, v in r["metrics"].items() if k != r["metric"]}
        if r["shots_used"] != r["shots"]:
            extra["shots that fit"] = r["shots_used"]
        if extra:
            shown = ", ".join(
                f"{k} {100 * v:.1f}%" if k in ("acc", "acc_norm", "exact") else f"{k} {v:.2f}"
                for k, v in extra.items()
            )
            lines.append(f"{'':<22} {shown}")
    lines.append("-" * len(head))
    lines.append(
        f"score (mean centered accuracy over {len(report['tasks'])} tasks): "
        f"{report['score']:.4f}   [{report['seconds']:.1f} s]"
    )
    return "\n".join(lines)
