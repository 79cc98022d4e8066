"""The optimizer against a hand-written AdamW, gradient clipping and accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from llm_tiny.config import ModelConfig, OptimConfig
from llm_tiny.errors import UserError
from llm_tiny.model import TinyGPT
from llm_tiny.train.optim import Float32Muon, build_optimizer, clip_grad_norm, newton_schulz, set_lr


def tiny_model(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return TinyGPT(cfg).double()


def reference_adamw(p, g, m, v, t, *, lr, beta1, beta2, eps, wd):
    """Decoupled weight decay (Loshchilov & Hutter 2019, algorithm 2), written out."""
    p = p * (1 - lr * wd)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v


def test_groups_cover_every_parameter_once_with_the_configured_values():
    model = tiny_model()
    cfg = OptimConfig(weight_decay=0.25, beta1=0.8, beta2=0.9, eps=1e-6)
    opt = build_optimizer(model, cfg)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    assert len(seen) == len(set(seen))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.25 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    for g in opt.param_groups:
        assert g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6


@pytest.mark.parametrize("fused", [None, True, False])
def test_two_steps_match_the_reference_update(fused):
    model = tiny_model()
    cfg = OptimConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, fused=fused)
    opt = build_optimizer(model, cfg)
    assert bool(opt.defaults.get("fused")) == bool(fused)  # None: fused on CUDA only
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    gen = torch.Generator().manual_seed(1)
    params = list(model.parameters())
    expected = {
        id(p): (p.detach().clone(), torch.zeros_like(p), torch.zeros_like(p)) for p in params
    }
    for t, lr in ((1, 1e-2), (2, 5e-3)):
        set_lr(opt, lr)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        for p in params:
            ref, m, v = expected[id(p)]
            expected[id(p)] = reference_adamw(
                ref, p.grad, m, v, t, lr=lr, beta1=0.9, beta2=0.95, eps=1e-8, wd=wd[id(p)]
            )
        opt.step()
    for p in params:
        torch.testing.assert_close(p.detach(), expected[id(p)][0], rtol=1e-12, atol=1e-12)


def test_clip_grad_norm_returns_the_norm_before_clipping():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0])
    norm = clip_grad_norm([a, b], 1.0)
    assert float(norm) == pytest.approx(5.0)
    after = math.sqrt(float(a.grad.square().sum() + b.grad.square().sum()))
    assert after == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.0, 0.0]), rtol=1e-5, atol=1e-6)


def test_clip_zero_disables_clipping_but_still_measures():
    a = torch.zeros(2, requires_grad=True)
    a.grad = torch.tensor([30.0, 40.0])
    assert float(clip_grad_norm([a], 0.0)) == pytest.approx(50.0)
    torch.testing.assert_close(a.grad, torch.tensor([30.0, 40.0]))


def test_accumulated_scaled_gradients_equal_the_full_batch_gradient():
    # accum 4 x batch 2 with the loss scaled by 1/4 == one batch of 8 (what train.py does).
    model = tiny_model()
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 64, (8, 16), generator=gen)
    y = torch.randint(0, 64, (8, 16), generator=gen)
    _, loss = model(x, y)
    loss.backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    for i in range(4):
        _, loss = model(x[2 * i : 2 * i + 2], y[2 * i : 2 * i + 2])
        (loss / 4).backward()
    for g, p in zip(full, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- Muon


def reference_newton_schulz(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16):
    """Reference orthogonalisation (Jordan et al. 2024): scale G to spectral norm <= 1, then
    iterate X <- a X + (b A + c A^2) X with A = X X^T on the wide orientation. The quintic's
    coefficients push every singular value towards 1 (into about [0.5, 1.5]) in 5 steps."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = g.size(0) > g.size(1)
    x = (g.T if tall else g).to(dtype)
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon_model(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, tie_weights=False
    )
    return TinyGPT(cfg)


def test_reference_newton_schulz_orthogonalises():
    # In float64 the reference's singular values land in the quintic's band around 1, and
    # it keeps G's singular vectors: U^T NS(G) V is diagonal.
    g = torch.randn(24, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    o = reference_newton_schulz(g, dtype=torch.float64)
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.5
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    core = u.T @ o @ vh.T
    torch.testing.assert_close(core, torch.diag(core.diagonal()), atol=1e-6, rtol=0)


def test_muon_groups_cover_every_parameter_once():
    model = muon_model()
    cfg = OptimConfig(name="muon", lr=2e-3, muon_lr=0.04, weight_decay=0.1)
    opt = build_optimizer(model, cfg)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    assert len(seen) == len(set(seen))
    muon, adamw = opt.optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = [names[id(p)] for g in muon.param_groups for p in g["params"]]
    assert sorted(hidden) == sorted(
        f"blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    )
    rest = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert {"wte.weight", "lm_head.weight", "pos.wpe.weight", "norm_f.weight"} <= rest
    set_lr(opt, 1e-3)  # half the peak: both optimizers follow the schedule at their own scale
    assert [g["lr"] for g in muon.param_groups] == [pytest.approx(0.02)]
    assert {g["lr"] for g in adamw.param_groups} == {1e-3}


@pytest.mark.parametrize(
    ("muon_dtype", "tolerance"),
    # torch's Muon iterates in bfloat16 (3 significant digits, rounding at every product): its
    # update agrees with the float64 reference to a few percent of its size, not exactly.
    [("float32", 1e-4), ("bfloat16", 0.03)],
)
def test_one_muon_step_matches_the_reference_update(muon_dtype, tolerance):
    model = muon_model()
    cfg = OptimConfig(
        name="muon",
        lr=1e-3,
        muon_lr=0.05,
        muon_momentum=0.9,
        muon_weight_decay=0.1,
        muon_dtype=muon_dtype,
    )
    opt = build_optimizer(model, cfg)
    want_class = Float32Muon if muon_dtype == "float32" else torch.optim.Muon
    assert type(opt.optimizers[0]) is want_class
    set_lr(opt, cfg.lr)
    gen = torch.Generator().manual_seed(2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    hidden = {id(p) for p in opt.optimizers[0].param_groups[0]["params"]}
    checked = 0
    for n, p in model.named_parameters():
        if id(p) not in hidden:
            continue
        g, mu, lr = grads[n], 0.9, 0.05
        # First step: momentum buffer (1 - mu) g, Nesterov look-ahead g + mu (buf - g).
        nesterov = g + mu * ((1 - mu) * g - g)
        scale = math.sqrt(max(1.0, p.size(0) / p.size(1)))  # Keller Jordan's shape factor
        want = before[n] * (1 - lr * 0.1) - lr * scale * reference_newton_schulz(
            nesterov, dtype=torch.float64
        )
        step, want_step = p.detach() - before[n], want.float() - before[n]
        assert float((step - want_step).norm() / want_step.norm()) < tolerance
        checked += 1
    assert checked == 8


def test_muon_without_torch_support_is_a_user_error(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")  # what an older torch (< 2.9) looks like
    with pytest.raises(UserError, match=r"torch >= 2\.9"):
        build_optimizer(muon_model(), OptimConfig(name="muon"))


def test_our_newton_schulz_is_the_reference_and_auto_picks_float32_on_cpu():
    g = torch.randn(16, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = newton_schulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    torch.testing.assert_close(ours, reference_newton_schulz(g, dtype=torch.float64))
    cfg = OptimConfig(name="muon", fused=False)
    assert type(build_optimizer(muon_model(), cfg, "cpu").optimizers[0]) is Float32Muon
    assert type(build_optimizer(muon_model(), cfg, "cuda").optimizers[0]) is torch.optim.Muon


def test_float32_and_torch_muon_checkpoints_load_into_each_other():
    model = muon_model()
    fast = build_optimizer(model, OptimConfig(name="muon", muon_dtype="float32"))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    fast.step()
    torch_muon = build_optimizer(model, OptimConfig(name="muon", muon_dtype="bfloat16"))
    torch_muon.load_state_dict(fast.state_dict())
    a, b = fast.optimizers[0], torch_muon.optimizers[0]
    for p in a.param_groups[0]["params"]:
        torch.testing.assert_close(b.state[p]["momentum_buffer"], a.state[p]["momentum_buffer"])
