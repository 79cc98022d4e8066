"""RL's math and rewards against brute-force references on hand-made batches (`llm_tiny.rl`)."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
import torch

from llm_tiny.config import ModelConfig
from llm_tiny.infer import engine
from llm_tiny.infer.params import SamplingParams
from llm_tiny.model import TinyGPT
from llm_tiny.rl import losses, rewards
from llm_tiny.rl.loop import pack
from llm_tiny.rl.rewards import Problem, correct, digits_problems, reward, well_formed
from llm_tiny.tasks import answer_text

REWARDS = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]]


def brute_advantages(rows, baseline, std_norm):
    out = []
    for row in rows:
        k = len(row)
        mean = sum(row) / k
        std = math.sqrt(sum((r - mean) ** 2 for r in row) / (k - 1))
        if baseline == "none":
            out.append(list(row))
        elif std_norm:
            out.append([(r - mean) / (std + losses.STD_EPS) for r in row])
        else:
            out.append([r - mean for r in row])
    return out


@pytest.mark.parametrize(
    ("baseline", "std_norm"), [("group", False), ("group", True), ("none", False)]
)
def test_group_advantages_match_a_brute_force_reference(baseline, std_norm):
    got = losses.group_advantages(torch.tensor(REWARDS), baseline, std_norm)
    want = torch.tensor(brute_advantages(REWARDS, baseline, std_norm))
    torch.testing.assert_close(got, want)
    if baseline == "group":  # a group of equal rewards carries no signal; each row sums to 0
        assert got[1].abs().max() == 0
        torch.testing.assert_close(got.sum(1), torch.zeros(3))
    if std_norm:  # one right answer among four is worth more than one of two (rarer)
        assert got[2, 3] > got[0, 0] > 0


def hand_batch(seed=0):
    """3 completions (2, 3 and 1 tokens) over T = 4 positions; tokens from a vocabulary of 5."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 5, (3, 4), generator=g)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    adv = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    return logits, targets, mask, adv


def brute_loss(logp, old, ref, adv, mask, clip, kl_coef):
    """The objective written token by token with Python floats."""
    total = kl = 0.0
    n = 0
    for b, t in itertools.product(range(mask.shape[0]), range(mask.shape[1])):
        if not mask[b, t]:
            continue
        n += 1
        ratio = math.exp(logp[b][t] - old[b][t])
        a = adv[b]
        total += min(ratio * a, min(max(ratio, 1 - clip), 1 + clip) * a)
        d = ref[b][t] - logp[b][t]
        kl += math.exp(d) - d - 1
    return -total / n + kl_coef * kl / n, kl / n


def test_policy_loss_matches_a_brute_force_reference_with_clip_and_kl():
    logits, targets, mask, adv = hand_batch()
    logp = losses.token_logprobs(logits, targets).double()
    old = logp + torch.tensor([[0.0, 0.3, -0.4, 0.0], [0.5, 0.0, -0.05, 0], [0, 0, 0, 0.5]])
    ref = logp - 0.2
    loss, parts = losses.policy_loss(logp, old, adv, mask, clip=0.2, ref_logp=ref, kl_coef=0.1)
    want, want_kl = brute_loss(
        logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask, 0.2, 0.1
    )
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert parts["kl"].item() == pytest.approx(want_kl, rel=1e-12)
    # The clip holds a token back where it would pay more than the clipped ratio: ratio
    # e^0.4 = 1.49 > 1.2 with A > 0 (row 0, t 2) and e^-0.5 = 0.61 < 0.8 with A < 0 (row 1,
    # t 0). Row 0 t 1 and row 2 t 3 (ratio below 0.8, A > 0) keep their smaller unclipped term.
    assert parts["clip_frac"].item() == pytest.approx(2 / 6)


def test_first_update_gradient_is_reinforce_with_token_level_normalisation():
    # With old = logp.detach() the ratio is 1 and the gradient must be -(1/N) sum A grad log pi,
    # N the completion tokens of the whole batch (not a mean per completion).
    logits, targets, mask, adv = hand_batch(1)
    a = logits.clone().requires_grad_(True)
    logp = losses.token_logprobs(a, targets)
    loss, parts = losses.policy_loss(logp, logp.detach(), adv, mask, clip=0.2)
    loss.backward()
    b = logits.clone().requires_grad_(True)
    logp_b = losses.token_logprobs(b, targets)
    reinforce = (
        -sum(adv[i] * logp_b[i, t] for i in range(3) for t in range(4) if mask[i, t]) / mask.sum()
    )
    reinforce.backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert parts["clip_frac"].item() == 0 and parts["kl"].item() == 0


def test_a_clipped_token_gets_no_gradient():
    logp = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.5, 0.0]], dtype=torch.float64)  # ratio e^0.5 = 1.65 on token 0
    loss, _ = losses.policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), clip=0.2)
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] == pytest.approx(-0.5)


def test_kl_k3_is_zero_at_equality_and_positive_elsewhere():
    logp = torch.log(torch.tensor([0.2, 0.5, 0.3]))
    assert losses.kl_k3(logp, logp).abs().max() == 0
    assert (losses.kl_k3(logp, logp.flip(0)) >= 0).all()
    # Its expectation under p is KL(p || q) exactly (sum over the support).
    p, q = logp.exp(), logp.flip(0).exp()
    exact = (p * (logp - q.log())).sum()
    torch.testing.assert_close((p * losses.kl_k3(logp, q.log())).sum(), exact)


def test_token_entropy_matches_the_definition():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, -10.0, -10.0, -10.0]]])
    got = losses.token_entropy(logits)
    assert got[0, 0].item() == pytest.approx(math.log(4))
    assert got[0, 1].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("n", "c", "k"), [(8, 0, 8), (8, 3, 1), (8, 3, 2), (5, 2, 3), (6, 6, 4)])
def test_pass_at_k_matches_enumerating_every_subset(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    assert losses.pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets))


def test_pack_masks_exactly_the_completion_tokens():
    x, y, mask = pack([[5, 6], [1, 2, 3]], [[7, 8], [4]], torch.device("cpu"))
    assert x.tolist() == [[5, 6, 7], [1, 2, 3]]
    assert y.tolist() == [[6, 7, 8], [2, 3, 4]]
    assert mask.tolist() == [[0, 1, 1], [0, 0, 1]]


# ----------------------------------------------------------------------------- rewards


@pytest.mark.parametrize(
    ("completion", "answer", "is_correct", "is_well_formed"),
    [
        ("7\n", "7", True, True),
        ("7", "7", True, False),  # right, but cut off before the newline that ends an answer
        (" 7\n", "7", True, False),  # the evaluator strips spaces; the format asks for none
        ("07\n", "7", False, False),  # a leading zero is another answer
        ("77\n", "7", False, True),  # well formed and wrong: what a format reward pays for
        ("7\n8\n", "7", True, False),  # only the first line is the answer
        ("\n", "7", False, False),
        ("", "7", False, False),
        ("-7\n", "7", False, False),
        ("7.0\n", "7", False, False),
        ("\u0667\n", "7", False, False),  # ARABIC-INDIC DIGIT SEVEN: isdigit(), but not 7
        ("1\n", "10", False, True),
        ("10\n", "10", True, True),
        ("0\n", "0", True, True),
    ],
)
def test_rewards_on_tricky_answers(completion, answer, is_correct, is_well_formed):
    assert correct(completion, answer) is is_correct
    assert correct(completion, answer) == (answer_text(completion) == answer)  # one reading
    assert well_formed(completion) is is_well_formed
    assert reward(completion, answer) == float(is_correct)
    assert reward(completion, answer, 0.5) == float(is_correct) + 0.5 * is_well_formed


def test_digit_answers_are_computed_not_read(tmp_path):
    # A wrong label in the file does not matter: the checker evaluates the expression.
    path = tmp_path / "x.txt"
    path.write_text("Max(First(2,8),5)=9\nLast(3,Min(7,4))=4\n")
    assert digits_problems(path, "rl.prompts") == [
        Problem("Max(First(2,8),5)=", "5"),
        Problem("Last(3,Min(7,4))=", "4"),
    ]


@pytest.mark.parametrize("module", [losses, rewards])
def test_the_worked_examples_in_the_docstrings_hold(module):
    result = doctest.testmod(module)
    assert result.attempted >= 2 and result.failed == 0


def test_the_loss_sees_the_log_probabilities_the_engine_sampled_with():
    # What `pack` + `token_logprobs` compute on the sampled rows is what the engine reported
    # while sampling them (at temperature 1): the update scores the very tokens it sampled.
    torch.manual_seed(0)
    model = TinyGPT(ModelConfig(vocab_size=16, block_size=12, n_layer=1, n_head=2, n_embd=16))
    prompts = [[1, 2, 3], [4, 5], [6]] * 2
    params = SamplingParams(
        max_new_tokens=4, temperature=1.0, top_k=None, top_p=None, stop_tokens=(0,), logprobs=0
    )
    gen = torch.Generator().manual_seed(1)
    done = engine.run(model, prompts, params, generators=[gen] * len(prompts))
    x, y, mask = pack(prompts, [c.tokens for c in done], torch.device("cpu"))
    with torch.no_grad():
        logp = losses.token_logprobs(model(x)[0], y)
    for i, c in enumerate(done):
        torch.testing.assert_close(logp[i][mask[i] > 0], torch.tensor(c.logprobs))


def test_non_finite_updates_are_skipped_then_stop_the_run(tmp_path):
    from types import SimpleNamespace

    from llm_tiny.rl.loop import RLTrainer
    from llm_tiny.train.result import TrainingDiverged

    lines: list[str] = []
    run = SimpleNamespace(
        cfg=SimpleNamespace(train=SimpleNamespace(max_bad_steps=2)),
        log=lines.append, out_dir=tmp_path, bad_in_row=0,
    )  # fmt: skip
    one, nan = torch.tensor(1.0), torch.tensor(float("nan"))
    assert RLTrainer.finite(run, one, one, 3)
    assert not RLTrainer.finite(run, nan, one, 4) and run.bad_in_row == 1
    assert RLTrainer.finite(run, one, one, 5) and run.bad_in_row == 0  # a good one resets
    assert not RLTrainer.finite(run, one, torch.tensor(float("inf")), 6)
    with pytest.raises(TrainingDiverged, match="2 non-finite losses in a row at step 7"):
        RLTrainer.finite(run, nan, one, 7)
    assert lines == [
        "step 4: skipped a non-finite loss (1 in a row)",
        "step 6: skipped a non-finite loss (1 in a row)",
        "step 7: skipped a non-finite loss (2 in a row)",
    ]
