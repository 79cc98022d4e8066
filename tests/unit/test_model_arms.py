"""The experiment arms of `ModelConfig`: no normalisation, sliding-window attention, T5's
relative position bias and the Mish activation, each against a computation written out by
hand, with and without the KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import lively_model

from llm_tiny.config import ConfigError, ModelConfig, RunConfig, validate
from llm_tiny.model import attention
from llm_tiny.model.layers import T5_BUCKETS, T5_MAX_DISTANCE, RelativeBias, t5_buckets

V = 32
KERNELS = ["sdpa", "manual", "tiled"]


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Tiles of 3 x 2: the tiled kernel walks (and skips) several tiles in 12-token models."""
    monkeypatch.setattr(attention, "TILE_Q", 3)
    monkeypatch.setattr(attention, "TILE_K", 2)


def build(seed: int = 0, **flags):
    base = {"vocab_size": V, "block_size": 12, "n_layer": 2, "n_head": 4, "n_embd": 16}
    return lively_model(seed, **{**base, **flags})


def tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- sliding window


def windowed_attention_by_hand(q, k, v, window: int, start: int = 0):
    """Query t (at position start + t) attends to keys j with 0 <= start + t - j < window: a
    loop over queries, softmax over the visible keys only."""
    out = torch.zeros_like(q)
    for t in range(q.size(-2)):
        i = start + t
        keys = range(max(0, i - window + 1), i + 1)
        scores = torch.stack([(q[..., t, :] * k[..., j, :]).sum(-1) for j in keys], -1)
        weights = (scores / math.sqrt(q.size(-1))).softmax(-1)  # (B, nh, len(keys))
        out[..., t, :] = sum(weights[..., n, None] * v[..., j, :] for n, j in enumerate(keys))
    return out


def test_causal_mask_with_a_window_is_the_causal_mask_cut_to_the_window():
    for size, window in [(6, 1), (6, 3), (6, 6), (6, 10)]:
        mask = attention.causal_mask(size, window)
        expected = [[0 <= i - j < window for j in range(size)] for i in range(size)]
        assert mask.tolist() == expected
    assert torch.equal(attention.causal_mask(5), attention.causal_mask(5, 5))


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("start", [0, 5])  # 5: queries after 5 cached positions
def test_window_kernels_equal_the_loop_over_queries(impl, start):
    g = torch.Generator().manual_seed(0)
    T, window = 7, 3
    q, k, v = (torch.randn(2, 3, n, 4, generator=g) for n in (T, T + start, T + start))
    mask = attention.causal_mask(T + start, window)[start:]  # rows start.. of the table
    out = attention.ATTENTION_ANY_MASK[impl](q, k, v, mask, 0.0)
    ref = windowed_attention_by_hand(q, k, v, window, start)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_plain_sdpa_shortcuts_would_see_past_the_window():
    """Why a window takes `sdpa_masked_attention`: `sdpa_attention` reads a 2-D bool mask as
    the causal one and, for one query after a cache, lets it see every key."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 4, generator=g) for n in (1, 6, 6))
    mask = attention.causal_mask(6, 2)[5:]
    ref = windowed_attention_by_hand(q, k, v, 2, start=5)
    torch.testing.assert_close(attention.sdpa_masked_attention(q, k, v, mask, 0.0), ref)
    assert not torch.allclose(attention.sdpa_attention(q, k, v, mask, 0.0), ref, atol=1e-3)


@pytest.mark.parametrize("impl", KERNELS)
def test_window_limits_what_each_position_sees(impl):
    """One layer, window 3: logit t depends on tokens t-2..t only; a window as long as the
    context is the plain causal model, weight for weight."""
    model = build(n_layer=1, attn_window=3, attn_impl=impl)
    idx = tokens(2, 12)
    changed = idx.clone()
    changed[:, 4] = (idx[:, 4] + 1) % V
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[:, 7:], b[:, 7:], atol=1e-6, rtol=0)  # out of the window
    assert not torch.allclose(a[:, 4:7], b[:, 4:7])
    full = build(n_layer=1, attn_window=12, attn_impl=impl)
    plain = build(n_layer=1, attn_impl=impl)
    torch.testing.assert_close(full(idx)[0], plain(idx)[0], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- T5 bias


def t5_bucket_by_hand(d: int) -> int:
    """T5's bucket of distance d, in plain Python: exact below 16; beyond, bucket 16 + k for
    16 * 8^(k/16) <= d < 16 * 8^((k+1)/16); the last bucket from 128 on."""
    exact = T5_BUCKETS // 2
    if d < exact:
        return d
    k = 0
    while k + 1 < T5_BUCKETS - exact and d >= exact * (T5_MAX_DISTANCE / exact) ** (
        (k + 1) / (T5_BUCKETS - exact)
    ):
        k += 1
    return exact + k


def test_t5_buckets_equal_the_hand_computation():
    d = torch.arange(0, 400)
    got = t5_buckets(d, T5_BUCKETS, T5_MAX_DISTANCE).tolist()
    # NOTE: float rounding at a bucket's exact edge could differ by one; none falls on one here.
    assert got == [t5_bucket_by_hand(int(x)) for x in d]
    assert got[127] == 31 and got[128] == 31 and got[15] == 15 and got[16] == 16
    assert t5_buckets(torch.tensor([-3]), 32, 128).tolist() == [0]  # the future


def test_t5_bias_is_the_table_entry_of_each_bucket_and_follows_the_cache():
    rel = RelativeBias(n_head=2)
    with torch.no_grad():
        rel.table.weight.copy_(torch.arange(64.0).view(32, 2))  # bucket b, head h -> 2b + h
    S = 40
    mask = attention.causal_mask(S)
    bias = rel.bias(mask, 0)  # (2, 40, 40)
    for h in range(2):
        for i in range(S):
            for j in range(S):
                want = 2 * t5_bucket_by_hand(i - j) + h if j <= i else -math.inf
                assert bias[h, i, j].item() == want
    # Three queries after 30 cached positions: rows 30..32 of the full bias.
    torch.testing.assert_close(rel.bias(mask[30:33, :33], 30), bias[:, 30:33, :33])
    # Per-row starts (a server's batch): each row's own slice.
    rows = rel.bias(mask[torch.tensor([[4, 5], [20, 21]])][:, None, :, :22], torch.tensor([4, 20]))
    torch.testing.assert_close(rows[0], bias[:, 4:6, :22])
    torch.testing.assert_close(rows[1], bias[:, 20:22, :22])


def test_t5_attention_is_softmax_of_scores_plus_the_bias():
    """The first layer's attention maps against q k^T / sqrt(hs) + table[bucket(i - j), head]."""
    model = build(pos_emb="t5")
    idx = tokens(1, 12)
    block = model.blocks[0]
    x = block.norm1(model.wte(idx))
    q, k, _ = block.attn.qkv(x).view(1, 12, 3, 4, 4).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
    with torch.no_grad():
        table = model.pos.table.weight
        bias = torch.tensor(
            [[[table[t5_bucket_by_hand(i - j), h] if j <= i else -math.inf for j in range(12)]
              for i in range(12)] for h in range(4)]
        )  # fmt: skip
        ref = ((q @ k.transpose(-2, -1)) / 2.0 + bias).softmax(-1)
    torch.testing.assert_close(model.attention_maps(idx)[0], ref, atol=1e-6, rtol=0)
    assert model.pos.table.weight.shape == (T5_BUCKETS, 4)  # one table for every layer


# ----------------------------------------------------------------------------- every arm

ARMS = [
    {"norm": "none"},
    {"mlp": "mish"},
    {"attn_window": 3},
    {"pos_emb": "t5"},
    {"pos_emb": "t5", "attn_window": 4, "n_kv_head": 2},
]


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("flags", ARMS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_arms_decode_with_the_cache_as_they_recompute(impl, flags):
    """Decode == recompute: the cache fed in chunks, then rows at their own positions (a
    server's batch), against full forward passes; the future never changes the past."""
    model = build(attn_impl=impl, **flags)
    idx = tokens(2, 12)
    full, _ = model(idx)
    cache = model.new_cache(batch_size=2)
    parts = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 5), (5, 6), (6, 7), (7, 12)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)
    seqs = [tokens(1, n, seed=n)[0] for n in (9, 6)]  # prompts of 8 and 5, one more token each
    cache = model.new_cache(1)
    model(seqs[0][None, :-1], cache=cache)
    other = model.new_cache(1)
    model(seqs[1][None, :-1], cache=other)
    cache.append(other)
    logits, _ = model(torch.stack([s[-1] for s in seqs])[:, None], cache=cache)
    for s, row in zip(seqs, logits):
        torch.testing.assert_close(row[-1], model(s[None])[0][0, -1], atol=1e-5, rtol=0)
    changed = idx.clone()
    changed[:, 8:] = (idx[:, 8:] + 1) % V
    torch.testing.assert_close(model(changed)[0][:, :8], full[:, :8], atol=1e-6, rtol=0)


def test_no_norm_is_the_identity_and_has_no_gains():
    model = build(norm="none")
    assert not any("norm" in name for name, _ in model.named_parameters())
    rms = build(norm="rmsnorm")
    gains = 2 * 2 * 16 + 16  # two per block and the final one, 16 wide
    assert model.num_params() == rms.num_params() - gains
    block, x = model.blocks[0], torch.randn(2, 5, 16)
    h = x + block.attn(x, model.pos)  # pre-norm block without the norms
    torch.testing.assert_close(block(x, model.pos), h + block.mlp(h))


def test_mish_mlp_is_the_formula():
    model = build(mlp="mish")
    mlp, x = model.blocks[0].mlp, torch.randn(2, 5, 16)
    hidden = mlp.fc(x)
    ref = mlp.proj(hidden * torch.tanh(F.softplus(hidden)))  # x tanh(softplus(x)), Misra 2019
    torch.testing.assert_close(mlp(x), ref)
    assert mlp.fc.out_features == 4 * 16


@pytest.mark.parametrize("impl", KERNELS)
def test_arms_train_a_step_with_finite_gradients(impl):
    for flags in ARMS:
        model = build(attn_impl=impl, **flags).train()
        _, loss = model(tokens(2, 12), tokens(2, 12, seed=1))
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), flags


def test_a_window_below_one_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^config: model.attn_window must be >= 1 or null"):
        validate(RunConfig(model=ModelConfig(attn_window=0)))


@pytest.mark.parametrize("flags", [{"attn_window": 3}, {"pos_emb": "t5"}], ids=["window", "t5"])
def test_the_engine_decodes_with_the_cache_as_it_recomputes(flags):
    """`infer.engine.run`, the one generator of every caller: two prompts of different lengths
    decoded together, past the window, with the KV cache and by full recomputation."""
    from llm_tiny.infer.engine import run
    from llm_tiny.infer.params import SamplingParams

    model = build(**flags)
    prompts = [tokens(1, 2, seed=1)[0].tolist(), tokens(1, 5, seed=2)[0].tolist()]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=None, seed=3, logprobs=0)
    cached = run(model, prompts, params)
    recomputed = run(model, prompts, params, use_cache=False)
    for a, b in zip(cached, recomputed):
        assert a.tokens == b.tokens and len(a.tokens) == 6
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
