"""The digit-operations task: `python -m llm_tiny tasks digits|eval ...`.

The classic first exercise for a from-scratch transformer. Each example is one line

    Max(3,7,5)=7        First(8,2)=8        Second(4,9,1)=9        Last(2,6)=6

with an operation (First, Second, Last, Max, Min) over 2-5 arguments drawn from 0-9 (or 0-99
for the harder variant). The model must read the whole argument list and pick or compute the
answer. Training uses the ordinary loop with `data.kind: examples`, which puts the loss only on
the answer tokens after `=` (see `configs/digits.yaml`); the evaluator decodes greedily and
reports exact-match accuracy overall, per operation, and what the errors look like.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

from llm_tiny.errors import ArgumentParser, UserError, run_cli

OPERATIONS = {
    "First": lambda args: args[0],
    "Second": lambda args: args[1],
    "Last": lambda args: args[-1],
    "Max": max,
    "Min": min,
}
MIN_ARGS, MAX_ARGS = 2, 5
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}


def make_example(op: str, args: list[int]) -> str:
    """Format one example.

    >>> make_example("Max", [3, 7, 5])
    'Max(3,7,5)=7'
    """
    return f"{op}({','.join(map(str, args))})={OPERATIONS[op](args)}"


def parse_example(line: str) -> tuple[str, list[int], str]:
    """Split an example line into (operation, arguments, answer text).

    >>> parse_example("Second(4,9,1)=9")
    ('Second', [4, 9, 1], '9')
    """
    head, _, answer = line.strip().partition("=")
    op, _, rest = head.partition("(")
    if op not in OPERATIONS or not rest.endswith(")"):
        raise ValueError(f"not a digit-operations example: {line!r}")
    return op, [int(a) for a in rest[:-1].split(",")], answer


def generate_examples(n: int, max_value: int, seed: int) -> list[str]:
    """`n` distinct examples, operations and argument counts uniformly at random.

    Distinct examples are what make the splits disjoint: each string lands in one split only.
    """
    capacity = len(OPERATIONS) * sum((max_value + 1) ** k for k in range(MIN_ARGS, MAX_ARGS + 1))
    if n > capacity:
        raise UserError(f"--n {n} is more than the {capacity} distinct examples that exist")
    rng = random.Random(seed)
    ops = sorted(OPERATIONS)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        op = rng.choice(ops)
        args = [rng.randint(0, max_value) for _ in range(rng.randint(MIN_ARGS, MAX_ARGS))]
        line = make_example(op, args)
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def split_examples(examples: list[str]) -> dict[str, list[str]]:
    """Cut the (already shuffled, distinct) examples into train / val / test by `SPLITS`."""
    n = len(examples)
    n_val, n_test = round(n * SPLITS["val"]), round(n * SPLITS["test"])
    n_train = n - n_val - n_test
    return {
        "train": examples[:n_train],
        "val": examples[n_train : n_train + n_val],
        "test": examples[n_train + n_val :],
    }


def write_dataset(out_dir: str | Path, n: int, max_value: int, seed: int) -> dict[str, Path]:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot create output directory ({e.strerror})") from None
    paths = {}
    for name, lines in split_examples(generate_examples(n, max_value, seed)).items():
        path = out_dir / f"{name}.txt"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        tmp.replace(path)
        paths[name] = path
    return paths


# ----------------------------------------------------------------------------- evaluation


def ordinal(k: int) -> str:
    """1 -> '1st', 2 -> '2nd', 3 -> '3rd', 4 -> '4th', 11 -> '11th'."""
    if 10 <= k % 100 <= 20:
        return f"{k}th"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def confusion(op: str, args: list[int], pred: str) -> str:
    """What a wrong answer was, in the operation's own terms.

    >>> confusion("Max", [3, 7, 5], "5"), confusion("Min", [3, 7, 5], "7")
    ('2nd largest', '3rd smallest')
    >>> confusion("First", [8, 2, 4], "4"), confusion("Last", [8, 2], "9"), confusion("Max", [1, 2], "x")
    ('argument 3', 'not an argument', 'malformed')
    """
    if not pred.isdigit():
        return "malformed"
    value = int(pred)
    if value not in args:
        return "not an argument"
    if op in ("Max", "Min"):
        distinct = sorted(set(args), reverse=op == "Max")
        return f"{ordinal(distinct.index(value) + 1)} {'largest' if op == 'Max' else 'smallest'}"
    return f"argument {args.index(value) + 1}"


def score(examples: list[str], predictions: list[str]) -> dict:
    """Exact-match accuracy overall and per operation, and a summary of the errors.

    Errors are classified as `other_argument` (the model picked an argument, just not the
    right one), `not_an_argument` (a number that is not in the list) and `malformed` (not a
    number at all). `errors.confusion` says per operation what the wrong answers were, in
    the operation's terms (see `confusion`): for Max, say, 3 times the 2nd largest argument.
    """
    per_op: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    kinds: Counter = Counter()
    by_op_kind: dict[str, Counter] = defaultdict(Counter)
    confusions: dict[str, Counter] = defaultdict(Counter)
    examples_wrong = []
    for line, pred in zip(examples, predictions, strict=True):
        op, args, answer = parse_example(line)
        ok = pred == answer
        per_op[op][0] += ok
        per_op[op][1] += 1
        if ok:
            continue
        if not pred.isdigit():
            kind = "malformed"
        elif int(pred) in args:
            kind = "other_argument"
        else:
            kind = "not_an_argument"
        kinds[kind] += 1
        by_op_kind[op][kind] += 1
        confusions[op][confusion(op, args, pred)] += 1
        if len(examples_wrong) < 10:
            examples_wrong.append({"example": line, "predicted": pred})
    correct = sum(c for c, _ in per_op.values())
    total = sum(t for _, t in per_op.values())
    return {
        "n": total,
        "correct": correct,
        "accuracy": correct / total if total else 0.0,
        "per_operation": {
            op: {"n": t, "correct": c, "accuracy": c / t} for op, (c, t) in sorted(per_op.items())
        },
        "errors": {
            "total": total - correct,
            "by_kind": dict(kinds),
            "by_operation": {op: dict(k) for op, k in sorted(by_op_kind.items())},
            "confusion": {op: dict(c.most_common()) for op, c in sorted(confusions.items())},
            "examples": examples_wrong,
        },
    }


def predict(model, tokenizer, examples: list[str], device, batch_size: int = 256) -> list[str]:
    """Greedy answers for each example's prompt (the text up to and including `=`).

    Prompts of equal token length are batched together, so one KV-cached `generate` call
    answers a whole group.
    """
    import torch

    from llm_tiny.sampling import generate

    newline = tokenizer.encode("\n")
    max_answer = len(tokenizer.encode("99")) + len(newline)
    groups: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for i, line in enumerate(examples):
        prompt = tokenizer.encode(line.split("=", 1)[0] + "=")
        groups[len(prompt)].append((i, prompt))
    answers = [""] * len(examples)
    for length, items in groups.items():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            idx = torch.tensor([p for _, p in chunk], dtype=torch.long, device=device)
            out = generate(model, idx, max_answer, temperature=0.0)
            for (i, _), row in zip(chunk, out[:, length:].tolist()):
                text = tokenizer.decode(row)
                answers[i] = text.split("\n", 1)[0].strip()
    return answers


def format_report(result: dict) -> str:
    lines = [f"{'operation':<10} {'n':>6} {'exact match':>12}"]
    for op, r in result["per_operation"].items():
        lines.append(f"{op:<10} {r['n']:>6} {100 * r['accuracy']:>11.2f}%")
    lines.append(f"{'all':<10} {result['n']:>6} {100 * result['accuracy']:>11.2f}%")
    errors = result["errors"]
    if errors["total"]:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(errors["by_kind"].items()))
        lines.append(f"errors: {errors['total']} ({kinds})")
        for op, counts in errors["confusion"].items():
            what = ", ".join(f"{label} {n}" for label, n in counts.items())
            lines.append(f"  {op:<8} answered: {what}")
        for e in errors["examples"][:5]:
            lines.append(f"  {e['example']:<28} predicted {e['predicted']!r}")
    return "\n".join(lines)


def read_examples(path: str | Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: examples file not found (make one with `tasks digits`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read examples ({e})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"{path}: no examples in this file")
    for n, line in enumerate(lines, 1):
        try:
            parse_example(line)
        except ValueError:
            raise UserError(f"{path}:{n}: not a digit-operations example: {line!r}") from None
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="llm_tiny tasks", description="The digit-operations task.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("digits", help="write train/val/test splits of digit operations")
    gen.add_argument("--out", default="data/digits", help="output directory")
    gen.add_argument("--range", type=int, choices=(9, 99), default=9, help="largest argument")
    gen.add_argument("--n", type=int, default=10000, help="examples in all three splits")
    gen.add_argument("--seed", type=int, default=1337)
    ev = sub.add_parser("eval", help="exact-match accuracy of a trained model")
    ev.add_argument("--ckpt", required=True, help="run directory (uses best.pt) or a .pt file")
    ev.add_argument("--data", required=True, help="examples file, e.g. data/digits/test.txt")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    def run() -> int:
        if args.command == "digits":
            if args.n < 10:
                raise UserError(f"--n must be >= 10 (enough for three splits), got {args.n}")
            paths = write_dataset(args.out, args.n, args.range, args.seed)
            counts = ", ".join(
                f"{k}: {sum(1 for _ in p.open(encoding='utf-8'))}" for k, p in paths.items()
            )
            print(f"wrote {Path(args.out)}/{{train,val,test}}.txt ({counts})")
            return 0
        from llm_tiny.checkpoint import load_model
        from llm_tiny.runtime import resolve_device

        examples = read_examples(args.data)
        device = resolve_device(args.device)
        model, tokenizer, _, _ = load_model(args.ckpt, device)
        result = score(examples, predict(model, tokenizer, examples, device))
        print(json.dumps(result) if args.json else format_report(result))
        return 0

    return run_cli(run, "llm_tiny tasks")


if __name__ == "__main__":
    sys.exit(main())
