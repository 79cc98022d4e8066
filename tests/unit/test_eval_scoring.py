"""Task scoring: log-likelihoods against the model scored one token at a time, the choice and
centered-accuracy math, answer extraction, the text-overlap libraries, and few-shot prompts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import lively_model

from llm_tiny.eval.harness import build_prompt, draw_shots, evaluate_task, fitted_prompt
from llm_tiny.eval.scoring import (
    centered,
    encode_pair,
    extract_answer,
    pick,
    score_continuations,
    split_pair,
    text_overlap,
)
from llm_tiny.eval.taskfile import TaskSettings, task_from_rows
from tok.bpe import Tokenizer


def brute_force(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """Each continuation token scored by its own forward pass over everything before it."""
    total, greedy = 0.0, True
    seq = list(context)
    with torch.no_grad():
        for t in continuation:
            logits, _ = model(torch.tensor([seq]))
            logp = F.log_softmax(logits[0, -1].double(), dim=-1)
            total += float(logp[t])
            greedy &= int(logp.argmax()) == t
            seq.append(t)
    return total, greedy


def test_batched_log_likelihoods_equal_token_by_token_scoring():
    model = lively_model(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)
    g = torch.Generator().manual_seed(0)
    requests = []
    for n_ctx, n_cont in [(1, 1), (5, 3), (9, 7), (2, 4), (12, 1), (3, 3)]:
        ids = torch.randint(0, 40, (n_ctx + n_cont,), generator=g).tolist()
        requests.append((ids[:n_ctx], ids[n_ctx:]))
    got = score_continuations(model, requests, block_size=16, batch_size=4)
    for (ctx, cont), s in zip(requests, got):
        want, greedy = brute_force(model, ctx, cont)
        assert s.logprob == pytest.approx(want, abs=1e-4)
        assert s.tokens == len(cont) and s.greedy == greedy
    # A sequence past the context keeps its last block_size + 1 tokens: the context is cut.
    ctx, cont = list(range(30)), [7, 8]
    (s,) = score_continuations(model, [(ctx, cont)], block_size=16)
    assert s.logprob == pytest.approx(brute_force(model, ctx[-15:], cont)[0], abs=1e-4)


def test_greedy_flag_is_true_for_the_models_own_argmax_tokens():
    model = lively_model(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16)
    seq = [3, 9]
    with torch.no_grad():
        for _ in range(4):
            seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
    (s,) = score_continuations(model, [(seq[:2], seq[2:])], block_size=16)
    assert s.greedy


def test_pairs_are_cut_as_lm_eval_cuts_them():
    tok = Tokenizer.train("the cat sat on the mat. the cat ran. " * 20, 300)
    assert split_pair("Q: a\nA: ", "4") == ("Q: a\nA:", " 4")
    ctx, cont = encode_pair(tok, "the cat ", "sat")
    assert ctx == tok.encode("the cat") and ctx + cont == tok.encode("the cat sat")


def test_choice_and_centered_accuracy():
    assert pick([-5.0, -1.0, -3.0]) == 1
    assert pick([-6.0, -4.0], [6, 2]) == 0  # -1 per character beats -2
    assert pick([-2.0, -2.0]) == 0
    assert centered(1.0, 0.25) == 1.0 and centered(0.25, 0.25) == 0.0
    assert centered(0.0, 0.5) == -1.0


def test_answer_extraction():
    assert extract_answer(" Paris\nQ: next", ["\n"]) == "Paris"
    assert extract_answer("so it is 42, yes", ["\n"], r"is (\d+)") == "42"
    assert extract_answer("no number", ["\n"], r"\d+") == ""
    assert extract_answer("a. b", [".", "\n"]) == "a"


def test_text_overlap_uses_the_libraries():
    sacrebleu = pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    preds = ["the cat sat on the mat", "a dog"]
    refs = [["the cat sat on the mat"], ["a big dog", "the dog"]]
    got = text_overlap(preds, refs)
    assert got["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(
            preds, [["the cat sat on the mat", "a big dog"], ["the cat sat on the mat", "the dog"]]
        ).score
    )
    # ROUGE-1 F: a perfect match, and "a dog" vs "a big dog" (P 1, R 2/3 -> F 0.8) the best.
    assert got["rouge1"] == pytest.approx(100 * (1.0 + 0.8) / 2)
    assert text_overlap(["x"], [["x"]])["chrf"] == pytest.approx(100.0)


def choice_task(shots: int = 0, **kw):
    rows = [
        {"context": f"q{i}", "choices": [f"a{i}", f"b{i}", f"c{i}"], "answer": i % 3}
        for i in range(8)
    ]
    return task_from_rows(TaskSettings("t", "choice", shots=shots, **kw), rows)


def test_few_shot_prompts_are_seeded_and_never_show_the_question():
    task = choice_task(shots=3, seed=7)
    first = [build_prompt(task, i) for i in range(8)]
    assert first == [build_prompt(task, i) for i in range(8)]  # the same every time
    prompt, delim = first[5]
    assert delim == " " and prompt.endswith("\n\nq5")
    assert "q5 " not in prompt and prompt.count("\n\n") == 3
    shot = draw_shots(task, 5)[0]
    assert prompt.startswith(f"{shot.context} {shot.choices[shot.answer]}\n\n")
    other = task.with_settings(seed=8)
    assert [build_prompt(other, i) for i in range(8)] != first
    chat, delim = build_prompt(task, 5, chat=True)
    assert delim == " " and chat.startswith("User: ") and chat.endswith("User: q5\n\nAssistant:")


def test_choice_accuracy_follows_the_log_likelihoods():
    model = lively_model(vocab_size=300, block_size=32, n_layer=1, n_head=2, n_embd=16)
    tok = Tokenizer.train("q0 a0 b0 c0 q1 a1 " * 10, 258)
    task = choice_task()
    result = evaluate_task(model, tok, task)
    hits = 0
    for example, record in zip(task.scored, result["records"]):
        lps = []
        for c in example.choices:
            ctx, cont = encode_pair(tok, example.context, " " + c)
            lps.append(brute_force(model, ctx, cont)[0])
        assert record["logprobs"] == pytest.approx(lps, abs=1e-4)
        hits += max(range(3), key=lps.__getitem__) == example.answer
    assert result["metrics"]["acc"] == hits / 8 and result["accuracy"] == hits / 8
    assert result["baseline"] == pytest.approx(1 / 3)
    assert math.isclose(result["centered"], (hits / 8 - 1 / 3) / (2 / 3))


def test_shots_that_do_not_fit_are_dropped_whole():
    tok = Tokenizer.train("q0 a0 b0 c0 q1 a1 " * 10, 258)
    task = choice_task(shots=3, seed=7)
    full, _ = build_prompt(task, 5)
    assert fitted_prompt(task, 5, tok, 1000) == (*build_prompt(task, 5), 3)
    room = len(tok.encode(full)) + len(tok.encode(" b5"))  # just enough for all three shots
    assert fitted_prompt(task, 5, tok, room)[0] == full
    two, _ = build_prompt(task, 5, shots=2)
    assert fitted_prompt(task, 5, tok, room - 1) == (two, " ", 2) and full.startswith(two[:-2])
    assert fitted_prompt(task, 5, tok, 3) == ("q5", " ", 0)  # the question alone
