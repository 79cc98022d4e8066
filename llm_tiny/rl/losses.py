"""The math of reinforcement learning with verifiable rewards, as pure functions.

A step samples k completions for each of P prompts and scores each with a reward r. The
policy-gradient theorem (Williams 1992, REINFORCE) says that the gradient of the expected
reward is E[(r - b) grad log pi(completion)] for any baseline b that does not depend on the
completion; b lowers the variance of the estimate without biasing it. Here:

    group_advantages   A = r - mean of the prompt's k rewards (the group baseline of GRPO,
                       Shao et al. 2024, "DeepSeekMath"); optionally divided by the group's
                       standard deviation; or A = r (no baseline, the plain REINFORCE)
    policy_loss        -(1/N) sum over every completion token t of min(rho_t A, clip(rho_t) A),
                       rho_t = pi(token) / pi_old(token) (PPO's clipped ratio, Schulman et al.
                       2017), N the number of completion tokens in the whole batch (token-level
                       normalisation, as DAPO, Yu et al. 2025); plus kl_coef times the mean
                       per-token KL estimate to the starting model (`kl_k3`)
    pass_at_k          the unbiased pass@k estimate from n samples with c correct (Chen et al.
                       2021, "Evaluating large language models trained on code")

With one update per batch pi_old is pi itself (detached): rho = 1, the clip never binds and the
gradient is exactly REINFORCE's, -(1/N) sum A grad log pi. Later updates on the same batch see
rho move away from 1, and the clip stops a token's push once it has moved by `clip`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

STD_EPS = 1e-4  # keeps a group whose rewards barely differ from blowing its advantages up


def group_advantages(rewards: Tensor, baseline: str = "group", std_norm: bool = False) -> Tensor:
    """Advantages (P, k) of rewards (P, k): k completions of each of P prompts.

    `baseline` "group": r minus the mean of its row (a row of equal rewards has no signal: all
    zeros); "none": r itself. `std_norm`: the group's also divided by the row's standard
    deviation (with Bessel's correction, as `torch.std`) plus `STD_EPS`.

    >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    tensor([[ 0.5000, -0.5000, -0.5000,  0.5000],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    """
    if baseline == "none":
        return rewards.clone()
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if std_norm:
        adv = adv / (rewards.std(dim=1, keepdim=True) + STD_EPS)
    return adv


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log pi(targets) (B, T) from logits (B, T, V), in float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: Tensor) -> Tensor:
    """The entropy of each position's next-token distribution (B, T), in nats."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi: exp(d) - d - 1 with
    d = log pi_ref - log pi (Schulman 2020, "Approximating KL divergence", k3): unbiased,
    never negative, and 0 exactly where the two agree."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of `values` where `mask` is 1 (0 when the mask is empty)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss to minimise for one policy-gradient update, and its parts (detached).

    `logp`, `old_logp`, `ref_logp` (B, T): log-probabilities of the sampled tokens under the
    policy being trained, the policy that sampled them, and the starting model; `advantages`
    (B,) one per completion, shared by its tokens; `mask` (B, T) 1 on completion tokens.
    Every masked token weighs the same whatever its completion's length (token-level
    normalisation): a long completion counts for more tokens, not less per token.

    Parts: `pg` (the clipped surrogate), `kl` (mean per-token `kl_k3`, 0 without `ref_logp`)
    and `clip_frac` (the share of tokens whose ratio the clip held back).
    """
    mask = mask.to(logp.dtype)
    n = mask.sum().clamp(min=1)
    ratio = torch.exp(logp - old_logp)  # (B, T); exactly 1 on the first update of a batch
    adv = advantages.to(logp.dtype)[:, None]  # (B, 1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * adv
    surrogate = torch.minimum(unclipped, clipped)  # the pessimistic of the two
    pg = -(surrogate * mask).sum() / n
    loss = pg
    kl = torch.zeros((), device=logp.device)
    if ref_logp is not None:
        kl = (kl_k3(logp, ref_logp) * mask).sum() / n
        if kl_coef:
            loss = loss + kl_coef * kl
    held = ((clipped < unclipped) & (mask > 0)).to(logp.dtype)
    parts = {"pg": pg.detach(), "kl": kl.detach(), "clip_frac": held.sum() / n}
    return loss, parts


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k samples drawn without replacement from n, c of them
    correct, is correct: 1 - C(n - c, k) / C(n, k).

    >>> pass_at_k(8, 0, 8), pass_at_k(8, 1, 8), pass_at_k(8, 2, 1), round(pass_at_k(4, 1, 2), 4)
    (0.0, 1.0, 0.25, 0.5)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
