"""The chat demonstration (docs/chat.md): generated conversations and their scores.

`python -m llm_tiny tasks chat --out data/chat` writes seeded conversations (no download) as
JSON Lines, `{"messages": [{role, content}, ...]}`: questions about the digit operations
(`llm_tiny.tasks`) phrased several ways around the operation as the base model reads it, an
optional system message that changes the form of the answer, a few questions about llm_tiny
itself, one to three questions a conversation:

    system    Reply in words.                          (or none: the bare number)
    user      What is Max(3,7,5)?
    assistant seven

`base.txt` holds the same operations as plain examples (`Max(3,7,5)=7`) for a base model to
pretrain on. `python -m llm_tiny tasks chat-eval --ckpt RUN --data data/chat/test.jsonl`
replays each held-out conversation up to its last assistant turn, decodes greedily through the
one engine and reports: exact answers, how often the reply ends its turn by itself (the model
emits the end-of-turn token within the budget), how often it has the form the system message
asks for, and the loss on the assistant's tokens against the loss on every token.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from llm_tiny.errors import UserError
from llm_tiny.tasks import OPERATIONS

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The system messages and the form each asks for (None: no system message, the bare number).
FORMS = {
    None: "number",
    "Just the number.": "number",
    "Reply in words.": "words",
    "Use a sentence.": "sentence",
}
# Each phrasing holds the operation as the base model read it (`Max(3,7,5)`), so SFT has to
# teach the template, the stop and the form, not the operation: spoken forms ("the largest of
# 3, 7 and 5") are a skill the base never learnt, and SFT did not teach it in the demo's
# budget (docs/chat.md).
PHRASES = ["{e}?", "What is {e}?", "Compute {e}.", "{e}", "Tell me {e}, please."]
ABOUT = [
    (["What is llm_tiny?", "what is llm_tiny", "Tell me about llm_tiny."],
     "A small, readable PyTorch framework for training GPT-style models."),
    (["Who are you?", "who are you", "What are you?"],
     "A tiny chat model trained with llm_tiny."),
    (["How do I train a model?", "how do i train a model"],
     "Run python -m llm_tiny train configs/tiny.yaml."),
]  # fmt: skip
SPLIT_SEEDS = {"train": 0, "test": 1}


def answer_in(form: str, value: int) -> str:
    """The answer in a form: number 7, words seven, sentence 'The answer is 7.'"""
    return {"number": str(value), "words": WORDS[value], "sentence": f"The answer is {value}."}[
        form
    ]


def form_of(reply: str) -> str | None:
    """Which form a reply has (`answer_in`'s), or None."""
    if re.fullmatch(r"\d", reply):
        return "number"
    if reply in WORDS:
        return "words"
    if re.fullmatch(r"The answer is \d\.", reply):
        return "sentence"
    return None


def question(rng: random.Random) -> tuple[str, int, str]:
    """A digit-operations question, its answer, and its argument list (the instance's key)."""
    op = rng.choice(sorted(OPERATIONS))
    args = [rng.randint(0, 9) for _ in range(rng.randint(2, 4))]
    key = f"{op}({','.join(map(str, args))})"
    return rng.choice(PHRASES).format(e=key), OPERATIONS[op](args), key


def conversation(rng: random.Random) -> tuple[list[dict[str, str]], list[str]]:
    """One conversation and the keys of the questions in it."""
    system = rng.choice(list(FORMS))
    form = FORMS[system]
    messages = [{"role": "system", "content": system}] if system else []
    keys = []
    for _ in range(rng.randint(1, 3)):  # several questions: several answers to learn from
        if rng.random() < 0.05:
            asks, reply = rng.choice(ABOUT)
            messages += [{"role": "user", "content": rng.choice(asks)},
                         {"role": "assistant", "content": reply}]  # fmt: skip
            continue
        text, value, key = question(rng)
        keys.append(key)
        messages += [{"role": "user", "content": text},
                     {"role": "assistant", "content": answer_in(form, value)}]  # fmt: skip
    return messages, keys


def generate(n_train: int, n_test: int, seed: int) -> tuple[dict[str, list], set[str]]:
    """Train and test conversations, and the test questions' keys: no test question (operation
    and arguments) is asked in any training conversation, so the test measures answers to
    unseen instances."""
    rng = random.Random(seed)
    test, test_keys = [], set()
    while len(test) < n_test:
        messages, keys = conversation(rng)
        if keys and messages[-1]["content"] not in {a for _, a in ABOUT}:
            test.append(messages)
            test_keys |= set(keys)
    train = []
    while len(train) < n_train:
        messages, keys = conversation(rng)
        if not test_keys & set(keys):
            train.append(messages)
    return {"train": train, "test": test}, test_keys


def base_examples(n: int, seed: int, avoid: set[str]) -> list[str]:
    """Plain examples for the base model (`Max(3,7,5)=7`), none of the questions in `avoid`."""
    rng = random.Random(seed + 7)
    out = []
    while len(out) < n:
        _, value, key = question(rng)
        if key not in avoid:
            out.append(f"{key}={value}")
    return out


def write_chat_data(out_dir: str | Path, n_train: int, n_test: int, seed: int) -> dict[str, Path]:
    """`train.jsonl`, `test.jsonl` and `base.txt` (twice as many lines as training
    conversations) in `out_dir`."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create output directory ({e.strerror})") from None
    sets, test_keys = generate(n_train, n_test, seed)
    paths = {}
    for name, convs in sets.items():
        paths[name] = out / f"{name}.jsonl"
        text = "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs)
        _write(paths[name], text)
    paths["base"] = out / "base.txt"
    lines = base_examples(2 * n_train, seed, test_keys)
    _write(paths["base"], "".join(x + "\n" for x in lines))
    return paths


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ----------------------------------------------------------------------------- scoring


def conversation_losses(model: Any, tokenizer: Any, convs: list[Any]) -> tuple[float, float]:
    """The mean loss (nats) over the conversations' assistant tokens (the SFT mask) and over
    all their tokens, each conversation alone, cut to the context as training cuts it."""
    import torch
    import torch.nn.functional as F

    from tok.chat import render

    sums = {"assistant": [0.0, 0], "all": [0.0, 0]}
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for conv in convs:
            ids, mask = render(tokenizer, conv)
            ids, mask = ids[: model.config.block_size + 1], mask[: model.config.block_size + 1]
            logits, _ = model(torch.tensor([ids[:-1]], device=device))  # (1, T, V)
            target = torch.tensor(ids[1:], device=device)
            losses = F.cross_entropy(logits[0].float(), target, reduction="none")  # (T,)
            scored = torch.tensor(mask[1:], device=device)
            sums["assistant"][0] += float(losses[scored].sum())
            sums["assistant"][1] += int(scored.sum())
            sums["all"][0] += float(losses.sum())
            sums["all"][1] += len(target)
    return tuple(total / max(1, n) for total, n in sums.values())


def score_chat(model: Any, tokenizer: Any, convs: list[list[dict[str, str]]]) -> dict[str, Any]:
    """Greedy replies to each conversation's last assistant turn, scored (module docstring),
    and the mean losses over the conversations' assistant tokens and over all their tokens."""
    from llm_tiny.infer.engine import run
    from llm_tiny.infer.params import SamplingParams
    from llm_tiny.infer.prompt import chat_prompt_ids, chat_stop_tokens

    prompts, wanted, forms = [], [], []
    for conv in convs:
        last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
        prompts.append(chat_prompt_ids(tokenizer, conv[:last], model.config.block_size))
        wanted.append(conv[last]["content"])
        system = conv[0]["content"] if conv[0]["role"] == "system" else None
        forms.append(FORMS.get(system))
    params = SamplingParams(max_new_tokens=24, temperature=0.0, top_p=None,
                            stop_tokens=tuple(chat_stop_tokens(tokenizer)))  # fmt: skip
    done = run(model, prompts, params, max_batch=128)
    replies = [tokenizer.decode([t for t in c.tokens if t not in params.stop_tokens]) for c in done]
    ended = [c.finish == "stop" for c in done]
    n = len(convs)
    assistant_loss, all_token_loss = conversation_losses(model, tokenizer, convs)
    return {
        "conversations": n,
        "exact": sum(r == w for r, w in zip(replies, wanted)) / n,
        "ends_turn": sum(ended) / n,
        "follows_system": sum(form_of(r) == f for r, f in zip(replies, forms)) / n,
        "assistant_loss": assistant_loss,
        "all_token_loss": all_token_loss,
        "examples": [
            {"reply": r, "wanted": w, "ended": e}
            for r, w, e in list(zip(replies, wanted, ended))[:5]
        ],
    }


def with_chat_rows(model: Any, tokenizer: Any, chat_init: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """A base run's model and tokenizer as `train.init_from` starts a chat run from them: the
    chat tokens added, their rows the mean of the others or copies of the tokens `chat_init`
    names (`vocab.grow_vocab`, `data.chat_init`); what the demo scores as "base"."""
    import dataclasses

    from llm_tiny.model import TinyGPT
    from llm_tiny.train.vocab import chat_init_rows, grow_vocab
    from tok.chat import with_chat_tokens

    grown = with_chat_tokens(tokenizer)
    if grown is tokenizer:
        return model, tokenizer
    vocab = max(model.config.vocab_size, grown.vocab_size)
    new = range(tokenizer.vocab_size, grown.vocab_size)
    chat = TinyGPT(dataclasses.replace(model.config, vocab_size=vocab))
    like = chat_init_rows(chat_init, grown, tokenizer.vocab_size, "the base run")
    chat.load_state_dict(grow_vocab(model.state_dict(), vocab, new, like))
    return chat.to(next(model.parameters()).device).eval(), grown


def read_conversations(path: str | Path) -> list[list[dict[str, str]]]:
    from llm_tiny.data.chat import check_conversation

    convs = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"--data: cannot read {path} ({e.strerror})") from None
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                messages = json.loads(line).get("messages")
            except (ValueError, AttributeError):
                raise UserError(f"{path}:{i}: not a JSON object") from None
            pairs, why = check_conversation(messages, "messages")
            if why:
                raise UserError(f"{path}:{i}: {why}")
            convs.append([{"role": r, "content": c} for r, c in pairs])
    if not convs:
        raise UserError(f"--data: no conversations in {path}")
    return convs


def main(argv: list[str] | None = None) -> int:
    """`python -m llm_tiny chatdemo data|eval ...` (module docstring)."""
    from llm_tiny.errors import ArgumentParser, add_ckpt_arg, add_device_arg, run_cli

    parser = ArgumentParser(prog="llm_tiny chatdemo", description="The chat demonstration.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("data", help="write train.jsonl, test.jsonl and base.txt")
    gen.add_argument("--out", default="data/chat", help="output directory")
    gen.add_argument("--n-train", type=int, default=6000, help="training conversations")
    gen.add_argument("--n-test", type=int, default=300, help="held-out conversations")
    gen.add_argument("--seed", type=int, default=1337)
    ev = sub.add_parser("eval", help="score a chat run on held-out conversations")
    add_ckpt_arg(ev)
    ev.add_argument("--data", required=True, help="conversations, e.g. data/chat/test.jsonl")
    ev.add_argument("--base", action="store_true", help="score a base run with the chat "
                    "tokens added as train.init_from adds them (the demo's baseline)")  # fmt: skip
    ev.add_argument("--chat-init", action="append", default=[], metavar="ENTRY",
                    help="with --base: a data.chat_init entry, e.g. '<|assistant|>='")  # fmt: skip
    add_device_arg(ev)
    args = parser.parse_args(argv)

    def run() -> int:
        if args.command == "data":
            if args.n_train < 1 or args.n_test < 1:
                raise UserError("--n-train and --n-test must be >= 1")
            paths = write_chat_data(args.out, args.n_train, args.n_test, args.seed)
            print("wrote " + ", ".join(map(str, paths.values())))
            return 0
        from llm_tiny.runtime import resolve_device
        from llm_tiny.train.checkpoint import load_model
        from tok.chat import has_template

        model, tokenizer, _, _ = load_model(args.ckpt, resolve_device(args.device))
        if args.base:
            model, tokenizer = with_chat_rows(model, tokenizer, tuple(args.chat_init))
        if not has_template(tokenizer):
            raise UserError(f"{args.ckpt}: the run has no chat template (a base run: add --base)")
        result = score_chat(model, tokenizer, read_conversations(args.data))
        for key in ("exact", "ends_turn", "follows_system"):
            print(f"{key:<16} {100 * result[key]:6.1f}%")
        for key in ("assistant_loss", "all_token_loss"):
            print(f"{key:<16} {result[key]:7.4f}")
        print(json.dumps({k: v for k, v in result.items() if k != "examples"}))
        return 0

    return run_cli(run, "llm_tiny chatdemo")
