"""TinyGPT against references: causality, sdpa vs manual, the KV cache vs a full forward, RoPE
vs complex rotation, GQA vs repeated heads, parameter counts vs the GPT-2 formula, gradients vs
finite differences, and the wrappers that torch.compile and DDP put around it."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import lively_model
from torch import nn

from llm_tiny.config import ModelConfig
from llm_tiny.model import attention
from llm_tiny.model.attention import (
    alibi_slopes,
    manual_attention,
    sdpa_attention,
    tiled_attention,
)
from llm_tiny.model.model import (
    ALiBiPositions,
    PostNormBlock,
    RMSNorm,
    RotaryPositions,
    TinyGPT,
    apply_rope,
    decode_layout,
    rope_tables,
    swiglu_hidden,
)

V = 32  # vocabulary of the test models


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine every parallel
    region can wait milliseconds for the second core (10x slower tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Tiles of 3 queries by 2 keys: the tiled kernel then walks several tiles (and skips the
    causal future) even in these 8-token models, where its 64 x 64 tiles would be one."""
    monkeypatch.setattr(attention, "TILE_Q", 3)
    monkeypatch.setattr(attention, "TILE_K", 2)


def tiny(**overrides) -> ModelConfig:
    base = {"vocab_size": V, "block_size": 8, "n_layer": 2, "n_head": 4, "n_embd": 16}
    return ModelConfig(**{**base, **overrides})


def build(seed: int = 0, **overrides) -> TinyGPT:
    """`helpers.lively_model` of the `tiny` config: every parameter ~ N(0, 0.3)."""
    return lively_model(seed, **dataclasses.asdict(tiny(**overrides)))


def tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


FLAG_GRID = [
    {
        "pos_emb": pos,
        "norm": norm,
        "mlp": mlp,
        "attn_impl": impl,
        "n_kv_head": kv,
        # these four do not interact with the rest or each other: vary them together
        "tie_weights": tied,
        "bias": tied,
        "grad_checkpointing": tied,
        "norm_position": "pre" if tied else "post",
    }
    for pos, norm, mlp, impl, kv, tied in itertools.product(
        ["learned", "rope", "alibi"],
        ["layernorm", "rmsnorm"],
        ["gelu", "swiglu"],
        ["sdpa", "manual", "tiled"],
        [None, 2, 1],
        [True, False],
    )
]


def flag_id(flags: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in flags.items())


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("flags", FLAG_GRID, ids=flag_id)
def test_future_tokens_never_change_earlier_logits(flags):
    model = build(**flags)
    idx = tokens(2, 8)
    changed = idx.clone()
    changed[:, 5:] = (idx[:, 5:] + 1 + tokens(2, 3, seed=1) % (V - 1)) % V  # every one differs
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 5:], b[:, 5:])  # the change is visible where it may be


# ----------------------------------------------------------------------------- sdpa vs manual


@pytest.mark.parametrize("impl", ["manual", "tiled"])
@pytest.mark.parametrize("pos_emb", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
def test_sdpa_equals_manual_and_tiled_attention(impl, pos_emb, n_kv_head):
    manual = build(pos_emb=pos_emb, n_kv_head=n_kv_head, attn_impl=impl)
    sdpa = build(pos_emb=pos_emb, n_kv_head=n_kv_head, attn_impl="sdpa")
    sdpa.load_state_dict(manual.state_dict())
    idx, targets = tokens(3, 8), tokens(3, 8, seed=1)
    lm, loss_m = manual(idx, targets)
    ls, loss_s = sdpa(idx, targets)
    torch.testing.assert_close(ls, lm, atol=1e-5, rtol=0)
    loss_m.backward()
    loss_s.backward()
    for (name, pm), ps in zip(manual.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(ps.grad, pm.grad, atol=1e-5, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual", "tiled"])
@pytest.mark.parametrize("pos_emb", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("n_kv_head", [None, 2])
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_cache_in_chunks_equals_one_full_forward(attn_impl, pos_emb, n_kv_head, norm_position):
    model = build(
        attn_impl=attn_impl, pos_emb=pos_emb, n_kv_head=n_kv_head, norm_position=norm_position
    )
    idx = tokens(2, 8)
    full, _ = model(idx)
    cache = model.new_cache(batch_size=2)
    parts = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 3), (3, 4), (4, 8)]]
    assert cache.length == 8
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


def test_cache_reset_and_overflow():
    model = build()
    cache = model.new_cache(batch_size=1)
    model(tokens(1, 6), cache=cache)
    with pytest.raises(ValueError, match=r"after 6 cached positions exceeds block_size 8"):
        model(tokens(1, 3), cache=cache)
    cache.reset()
    logits, _ = model(tokens(1, 8), cache=cache)
    torch.testing.assert_close(logits, model(tokens(1, 8))[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual", "tiled"])
@pytest.mark.parametrize("pos_emb", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_cache_rows_at_their_own_positions_equal_separate_runs(attn_impl, pos_emb, n_kv_head):
    """A server's batch: rows join (`append`) with prompts of different lengths, decode two
    tokens together each at its own position, one leaves (`reorder`); every row's logits are
    those of its own full forward pass."""
    model = build(attn_impl=attn_impl, pos_emb=pos_emb, n_kv_head=n_kv_head)
    seqs = [tokens(1, n, seed=n)[0] for n in (5, 3, 4)]  # each holds its two next tokens too
    cache = model.new_cache(1)
    model(seqs[0][None, :-2], cache=cache)
    for s in seqs[1:]:
        row = model.new_cache(1)
        model(s[None, :-2], cache=row)
        cache.append(row)
    assert cache.length.tolist() == [3, 1, 2]
    for step in (2, 1):  # feed each row its next token, all in one (3, 1) batch
        logits, _ = model(torch.stack([s[-step] for s in seqs])[:, None], cache=cache)
        for s, row in zip(seqs, logits):
            full, _ = model(s[None, : len(s) - step + 1])
            torch.testing.assert_close(row[-1], full[0, -1], atol=1e-5, rtol=0)
    cache.reorder(torch.tensor([0, 2]))  # the second sequence leaves
    assert cache.length.tolist() == [5, 4]
    nxt = tokens(2, 1, seed=9)
    logits, _ = model(nxt, cache=cache)
    for s, t, row in zip([seqs[0], seqs[2]], nxt, logits):
        full, _ = model(torch.cat([s, t])[None])
        torch.testing.assert_close(row[-1], full[0, -1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- RoPE


def test_apply_rope_is_a_complex_rotation():
    """Reference: pair (x_i, x_{i+hs/2}) as the complex number x_i + j x_{i+hs/2}, times e^{j m w_i}."""
    hs, T, theta = 8, 5, 10000.0
    x = torch.randn(2, 3, T, hs, dtype=torch.float64)
    cos, sin = rope_tables(T, hs, theta)
    got = apply_rope(x, cos.double(), sin.double())
    w = torch.tensor([theta ** (-2 * i / hs) for i in range(hs // 2)], dtype=torch.float64)
    m = torch.arange(T, dtype=torch.float64)[:, None]
    z = torch.complex(x[..., : hs // 2], x[..., hs // 2 :]) * torch.exp(1j * m * w)
    torch.testing.assert_close(got, torch.cat([z.real, z.imag], dim=-1), atol=1e-6, rtol=0)


def test_rope_tables_worked_example():
    cos, sin = rope_tables(block_size=4, head_dim=4, theta=100.0)
    # pair 0 turns 1 radian per position, pair 1 turns 100^(-1/2) = 0.1 radian
    assert cos.shape == sin.shape == (4, 2)
    assert cos[2, 0].item() == pytest.approx(math.cos(2.0), abs=1e-6)
    assert sin[3, 1].item() == pytest.approx(math.sin(0.3), abs=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    rotary = RotaryPositions(tiny(pos_emb="rope", block_size=32))
    q, k = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)  # hs = 16 / 4 heads = 4
    scores = [rotary.rotate(q, s) @ rotary.rotate(k, s).transpose(-2, -1) for s in (0, 7, 26)]
    torch.testing.assert_close(scores[1], scores[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(scores[2], scores[0], atol=1e-5, rtol=0)
    assert not torch.allclose(scores[0], q @ k.transpose(-2, -1), atol=1e-3)  # it does rotate


# ----------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_are_the_papers():
    # Press et al. 2022, section 3: "for 8 heads, the slopes are 1/2, 1/2^2, ..., 1/2^8".
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]
    # 16 heads: 1/sqrt(2), 1/2, ..., 1/2^8, each step a factor 1/sqrt(2)
    torch.testing.assert_close(alibi_slopes(16), 2 ** (-0.5 * torch.arange(1.0, 17)))
    # Not a power of 2: the 4-head slopes, then every other 8-head slope.
    assert alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


def test_alibi_bias_is_minus_slope_times_distance_and_follows_the_cache():
    alibi = ALiBiPositions(tiny(pos_emb="alibi", n_head=2))  # slopes 1/16, 1/256
    mask = torch.ones(3, 3, dtype=torch.bool).tril()
    bias = alibi.bias(mask, 0)
    inf = float("inf")
    expected = -torch.tensor([[0, inf, inf], [1, 0, inf], [2, 1, 0]])  # -(i - j), -inf above
    torch.testing.assert_close(bias[0], expected / 16)
    torch.testing.assert_close(bias[1], expected / 256)
    # Two new queries after 3 cached positions: rows 3 and 4 of the full 5 x 5 bias.
    full = alibi.bias(torch.ones(5, 5, dtype=torch.bool).tril(), 0)
    later = alibi.bias(torch.ones(5, 5, dtype=torch.bool).tril()[3:], 3)
    torch.testing.assert_close(later, full[:, 3:])


def test_alibi_adds_no_parameters():
    alibi, learned = build(pos_emb="alibi"), build(pos_emb="learned")
    assert alibi.num_params(non_embedding=False) == learned.num_params(non_embedding=False) - 8 * 16
    assert not any("pos" in name for name, _ in alibi.named_parameters())
    assert alibi.state_dict().keys() == {k for k in learned.state_dict() if "wpe" not in k}


# ----------------------------------------------------------------------------- tiled attention


def random_qkv(T: int, S: int, seed: int = 0) -> list[torch.Tensor]:
    """q (2, 3, T, 4), k and v (2, 3, S, 4)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n, 4, generator=g) for n in (T, S, S)]


@pytest.mark.parametrize("tiles", [(64, 64), (3, 2), (1, 5), (4, 4)])
@pytest.mark.parametrize("start", [0, 4])  # 4: after 4 cached positions (fewer queries than keys)
@pytest.mark.parametrize("alibi", [False, True])
def test_tiled_attention_equals_sdpa_and_manual(monkeypatch, tiles, start, alibi):
    monkeypatch.setattr(attention, "TILE_Q", tiles[0])
    monkeypatch.setattr(attention, "TILE_K", tiles[1])
    T, S = 7, 7 + start
    q, k, v = random_qkv(T, S)
    for t in (q, k, v):
        t.requires_grad_()
    mask = torch.ones(S, S, dtype=torch.bool).tril()[start:]  # (T, S): query t sees keys <= start+t
    if alibi:
        mask = ALiBiPositions(tiny(pos_emb="alibi", n_head=3)).bias(mask, start)  # (3, T, S)
    outs, grads = [], []
    for kernel in (sdpa_attention, manual_attention, tiled_attention):
        out = kernel(q, k, v, mask, 0.0)
        g = torch.autograd.grad((out * out.detach().cos()).sum(), (q, k, v))
        outs.append(out)
        grads.append(g)
    for out, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=0)
        for a, b in zip(g, grads[0]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_tiled_attention_skips_the_tiles_the_causal_mask_hides(monkeypatch):
    """With 4 x 4 tiles over 16 causal positions, 6 of the 16 tiles lie wholly in the future."""
    monkeypatch.setattr(attention, "TILE_Q", 4)
    monkeypatch.setattr(attention, "TILE_K", 4)
    q, k, v = random_qkv(16, 16)
    calls = []
    real = attention.apply_mask

    def counting(scores, mask):
        calls.append(scores.shape[-2:])
        return real(scores, mask)

    monkeypatch.setattr(attention, "apply_mask", counting)
    out = tiled_attention(q, k, v, torch.ones(16, 16, dtype=torch.bool).tril(), 0.0)
    assert len(calls) == 10 and all(shape == (4, 4) for shape in calls)  # never a 16 x 16
    monkeypatch.setattr(attention, "apply_mask", real)
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    torch.testing.assert_close(out, manual_attention(q, k, v, mask, 0.0), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- post-norm


def test_post_norm_block_is_the_original_transformer_formula():
    block = build(norm_position="post").blocks[0]
    assert isinstance(block, PostNormBlock)
    pos = build(norm_position="post").pos
    x = torch.randn(2, 8, 16)
    h = block.norm1(x + block.attn(x, pos))  # Vaswani et al. 2017: LayerNorm(x + Sublayer(x))
    torch.testing.assert_close(block(x, pos), block.norm2(h + block.mlp(h)))


def test_post_norm_model_has_no_final_norm():
    pre, post = build(), build(norm_position="post")
    assert isinstance(post.norm_f, nn.Identity) and isinstance(pre.norm_f, nn.LayerNorm)
    assert post.num_params() == pre.num_params() - 2 * 16  # the final LayerNorm's gain and bias
    # Every block's output is normalised: mean 0 and variance 1 per position (gains 1, biases 0).
    model = TinyGPT(tiny(norm_position="post"))
    h = model.blocks[0](model.wte(tokens(2, 8)) + model.pos.wpe.weight, model.pos)
    torch.testing.assert_close(h.mean(-1), torch.zeros(2, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.var(-1, correction=0), torch.ones(2, 8), atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- label smoothing


def test_label_smoothing_is_the_smoothed_cross_entropy_and_off_by_default():
    model, idx = build(), tokens(2, 8)
    targets = tokens(2, 8, seed=1)
    targets[0, :3] = -1  # ignored positions stay ignored
    logits, plain = model(idx, targets)
    _, smoothed = model(idx, targets, label_smoothing=0.2)
    logp = logits.log_softmax(-1)[targets != -1]  # (n, V) over the scored positions
    nll = -logp.gather(1, targets[targets != -1][:, None]).squeeze(1)
    uniform = -logp.mean(-1)  # cross-entropy against the uniform distribution over V
    torch.testing.assert_close(plain, nll.mean())
    torch.testing.assert_close(smoothed, (0.8 * nll + 0.2 * uniform).mean())
    assert smoothed.item() != pytest.approx(plain.item(), rel=1e-3)


# ----------------------------------------------------------------------------- modules


def test_gqa_equals_multi_head_attention_with_repeated_kv_heads():
    gqa = build(n_kv_head=2)
    mha = build(seed=1)
    state = gqa.state_dict()
    hs, C, rep = 4, 16, 2
    for i in range(2):
        weight, bias = f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.attn.qkv.bias"
        rows = torch.cat([state[weight], state[bias][:, None]], dim=1)  # bias as a last column
        q, k, v = rows.split([4 * hs, 2 * hs, 2 * hs])  # rows: 4 q heads, 2 k heads, 2 v heads

        def spread(t: torch.Tensor) -> torch.Tensor:  # each kv head twice, for 2 query heads
            return t.reshape(2, hs, C + 1).repeat_interleave(rep, dim=0).reshape(4 * hs, C + 1)

        rows = torch.cat([q, spread(k), spread(v)])
        state[weight], state[bias] = rows[:, :C], rows[:, C]
    mha.load_state_dict(state)
    idx = tokens(2, 8)
    torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], atol=1e-5, rtol=0)


def test_rmsnorm_matches_formula_and_torch():
    x = torch.randn(3, 5, 16)
    norm = RMSNorm(16)
    nn.init.normal_(norm.weight)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    if hasattr(nn, "RMSNorm"):  # torch >= 2.4
        ref = nn.RMSNorm(16, eps=1e-5)
        ref.weight.data.copy_(norm.weight.data)
        torch.testing.assert_close(norm(x), ref(x))


@pytest.mark.parametrize("bias", [False, True])
def test_decode_layout_gives_the_same_logits_and_leaves_nothing_behind(bias):
    model = build(bias=bias, tie_weights=True)
    idx = tokens(3, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference, _ = model(idx)
    with torch.inference_mode(), decode_layout(model):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert linears and all(m.weight_t.shape == m.weight.shape[::-1] for m in linears)
        assert all(m.weight_t.is_contiguous() for m in linears)
        cache = model.new_cache(3)
        prefix, _ = model(idx[:, :5], cache=cache)  # a prompt, then one token at a time
        steps = [model(idx[:, t : t + 1], cache=cache)[0] for t in range(5, 8)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), reference, rtol=1e-5, atol=1e-5)
    # Nothing stays: no transposed copies, the same state dict, training works as before.
    assert all(m.weight_t is None for m in model.modules() if isinstance(m, nn.Linear))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    model.train()
    _, loss = model(idx, idx)
    loss.backward()
    assert model.lm_head.weight.grad is not None


def test_swiglu_width_is_eight_thirds_rounded_to_64():
    assert [swiglu_hidden(c) for c in (384, 128, 16, 768)] == [1024, 384, 64, 2048]
    model = build(mlp="swiglu", n_embd=384, n_head=6, n_layer=1)
    assert model.blocks[0].mlp.fc.weight.shape == (2 * 1024, 384)


def test_attention_maps_match_a_hand_computed_reference():
    model = build(attn_impl="sdpa")
    idx = tokens(2, 6)
    maps = model.attention_maps(idx)
    assert len(maps) == 2 and all(m.shape == (2, 4, 6, 6) for m in maps)
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, 6))
        assert torch.all(m.triu(diagonal=1) == 0)
    # layer 0 by hand: LayerNorm of token + position embeddings, then softmax(q k^T / sqrt(hs))
    block = model.blocks[0]
    x = model.wte.weight[idx] + model.pos.wpe.weight[:6]
    h = F.layer_norm(x, (16,), block.norm1.weight, block.norm1.bias)
    q, k, _ = (h @ block.attn.qkv.weight.T + block.attn.qkv.bias).split(16, dim=-1)
    q, k = (t.reshape(2, 6, 4, 4).transpose(1, 2) for t in (q, k))
    scores = (q @ k.transpose(-2, -1)) / 2.0
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(maps[0], scores.softmax(-1), atol=1e-6, rtol=0)


def test_dropout_only_in_training():
    model = build(dropout=0.5, attn_impl="manual").train()
    idx = tokens(2, 8)
    assert not torch.allclose(model(idx)[0], model(idx)[0])
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0], atol=0, rtol=0)


def test_init_matches_gpt2():
    torch.manual_seed(0)
    model = TinyGPT(tiny(n_embd=128, n_head=4, n_layer=8, block_size=64, vocab_size=256))
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.03)
    residual = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[3].mlp.proj.weight.std().item() == pytest.approx(residual, rel=0.03)
    assert model.blocks[3].attn.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)
    assert torch.all(model.norm_f.weight == 1)


# ----------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("idx", "message"),
    [
        (torch.zeros(1, 9, dtype=torch.long), r"9 tokens exceeds block_size 8"),
        (torch.full((1, 4), V), rf"token ids must be in \[0, {V}\).*from {V} to {V}"),
        (torch.tensor([[0, -1, 2]]), r"token ids must be in \[0, 32\).*from -1 to 2"),
        (torch.zeros(1, 4), r"integer token ids.*float32"),
        (torch.zeros(4, dtype=torch.long), r"\(batch, time\) tensor.*\(4,\)"),
        (torch.zeros(1, 0, dtype=torch.long), r"idx is empty"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(idx, message):
    with pytest.raises(ValueError, match=message):
        build()(idx)


def test_bad_targets_raise_value_errors():
    model, idx = build(), tokens(2, 4)
    with pytest.raises(ValueError, match=r"shape of idx \(2, 4\), got \(2, 3\)"):
        model(idx, idx[:, :3])
    with pytest.raises(ValueError, match=r"or -1 \(ignored\), got values from -2"):
        model(idx, torch.full((2, 4), -2))


def test_vocab_size_is_required():
    with pytest.raises(ValueError, match="vocab_size is None"):
        TinyGPT(ModelConfig())


def test_int32_ids_and_ignored_targets():
    model, idx = build(), tokens(2, 4)
    targets = tokens(2, 4, seed=1)
    logits, _ = model(idx.int(), targets)
    masked = targets.clone()
    masked[:, :2] = -1
    _, partial = model(idx, masked)
    expected = F.cross_entropy(logits[:, 2:].flatten(0, 1), targets[:, 2:].flatten())
    torch.testing.assert_close(partial, expected)
    assert model(idx)[1] is None


# ----------------------------------------------------------------------------- tied weights, wrappers


def test_tied_weights_share_one_parameter_through_save_and_load(tmp_path):
    model = build(tie_weights=True)
    assert model.lm_head.weight is model.wte.weight
    path = tmp_path / "model.pt"
    torch.save(dict(model.state_dict()), path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["lm_head.weight"].data_ptr() == loaded["wte.weight"].data_ptr()
    fresh = build(seed=5, tie_weights=True)
    fresh.load_state_dict(loaded)
    assert fresh.lm_head.weight is fresh.wte.weight
    torch.testing.assert_close(fresh.wte.weight, model.wte.weight)
    # one optimizer step moves the shared matrix once, for both uses
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    fresh(tokens(2, 8), tokens(2, 8, seed=1))[1].backward()
    opt.step()
    assert fresh.lm_head.weight is fresh.wte.weight
    assert not torch.equal(fresh.wte.weight, model.wte.weight)


def test_untied_weights_are_separate():
    model = build(tie_weights=False)
    assert model.lm_head.weight is not model.wte.weight
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method:DeprecationWarning")  # torch's own
# ----------------------------------------------------------------------------- accounting


def test_num_params_matches_the_gpt2_formula():
    C, L, T = 16, 2, 8
    blocks = L * (12 * C * C + 13 * C)  # qkv, proj, fc, proj weights + biases, two LayerNorms
    tied = build(tie_weights=True)
    assert tied.num_params(non_embedding=False) == V * C + T * C + blocks + 2 * C
    assert tied.num_params() == V * C + blocks + 2 * C  # the shared matrix counts as the head
    untied = build(tie_weights=False)
    assert untied.num_params(non_embedding=False) == 2 * V * C + T * C + blocks + 2 * C
    assert untied.num_params() == tied.num_params()  # same compute either way
    gqa = build(n_kv_head=1, pos_emb="rope", bias=False, norm="rmsnorm")
    per_block = C * (4 + 2) * 4 + C * C + 8 * C * C + 2 * C  # qkv (4 q + 2x1 kv heads of 4)
    assert gqa.num_params() == V * C + L * per_block + C


def test_flops_per_token_worked_example():
    model = build()
    n = model.num_params()
    assert model.flops_per_token() == 6 * n + 12 * 2 * 16 * 8


def test_param_groups_cover_every_parameter_once():
    model = build(tie_weights=True)
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "wte.weight" in decayed and "pos.wpe.weight" in decayed
    assert "blocks.0.attn.qkv.weight" in decayed and "blocks.1.mlp.proj.weight" in decayed
    assert all(names[id(p)].endswith(("bias", "norm1.weight", "norm2.weight", "norm_f.weight"))
               for p in no_decay["params"])  # fmt: skip
    all_ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert sorted(all_ids) == sorted(names)  # every parameter once; the tied matrix once
    torch.optim.AdamW([decay, no_decay], lr=1e-3)  # AdamW accepts them as they are


# ----------------------------------------------------------------------------- gradients and training


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1},
        {"pos_emb": "alibi", "norm_position": "post", "attn_impl": "tiled"},
        {"pos_emb": "rope", "mlp": "relu2", "qk_norm": True, "logit_softcap": 2.0},
    ],
    ids=["gpt2", "rope-rms-swiglu-gqa", "alibi-post-tiled", "rope-relu2-qknorm-softcap"],
)
def test_gradcheck_tiny_float64_model(flags):
    cfg = tiny(n_embd=4, n_head=2, n_layer=1, block_size=4, vocab_size=5, **flags)
    torch.manual_seed(0)
    model = TinyGPT(cfg).double()
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    idx = torch.tensor([[0, 3, 1, 4]])
    targets = torch.tensor([[3, 1, 4, 2]])

    def loss(*ps: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, ps))
        return torch.func.functional_call(model, state, (idx, targets))[1]

    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5)


def test_grad_checkpointing_gives_the_same_gradients_and_recomputes():
    plain = build(dropout=0.0).train()
    ckpt = build(dropout=0.0, grad_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    ckpt.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    idx, targets = tokens(2, 8), tokens(2, 8, seed=1)
    plain(idx, targets)[1].backward()
    ckpt(idx, targets)[1].backward()
    assert len(calls) == 2  # forward, then the recomputation in backward
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = TinyGPT(tiny(n_embd=32, block_size=16, pos_emb="rope")).train()
    idx, targets = tokens(4, 16), tokens(4, 16, seed=1)
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-2)
    for _ in range(200):
        opt.zero_grad(set_to_none=True)
        _, loss = model(idx, targets)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_config_is_kept():
    cfg = tiny(pos_emb="rope")
    model = TinyGPT(cfg)
    assert model.config is cfg
    assert dataclasses.asdict(model.config)["pos_emb"] == "rope"


# ----------------------------------------------------------------------------- recipe levers

LEVERS = {
    "mlp": "relu2",
    "qk_norm": True,
    "logit_softcap": 3.0,
    "tie_weights": False,
    "bigram_logits": True,
}


def test_bigram_table_adds_its_row_for_each_token_to_the_logits():
    assert not TinyGPT(tiny(bigram_logits=True)).bigram.weight.any()  # zero at the start
    model = build(bigram_logits=True)  # every weight random, the table too
    plain = build()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "bigram" not in k})
    idx = tokens(2, 8)
    expected = plain(idx)[0] + model.bigram.weight[idx]  # (B, T, V): row idx[b, t] added
    torch.testing.assert_close(model(idx)[0], expected)


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual", "tiled"])
@pytest.mark.parametrize("pos_emb", ["learned", "rope", "alibi"])
def test_levers_keep_causality_and_the_kv_cache_exact(attn_impl, pos_emb):
    model = build(attn_impl=attn_impl, pos_emb=pos_emb, n_kv_head=2, **LEVERS)
    idx = tokens(2, 8)
    changed = idx.clone()
    changed[:, 5:] = (idx[:, 5:] + 1) % V
    full, _ = model(idx)
    torch.testing.assert_close(model(changed)[0][:, :5], full[:, :5], atol=1e-6, rtol=0)
    cache = model.new_cache(batch_size=2)
    parts = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 3), (3, 4), (4, 8)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mlp_name, power", [("relu", 1), ("relu2", 2)])
def test_relu_mlps_are_the_formula(mlp_name, power):
    mlp = build(mlp=mlp_name).blocks[0].mlp
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0))
    h = torch.clamp(x @ mlp.fc.weight.T + mlp.fc.bias, min=0) ** power  # relu(x W1 + b1)^p
    torch.testing.assert_close(mlp(x), h @ mlp.proj.weight.T + mlp.proj.bias)


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_qk_norm_normalises_each_head_before_rope(pos_emb):
    attn = build(pos_emb=pos_emb, qk_norm=True).blocks[0].attn
    pos = build(pos_emb=pos_emb, qk_norm=True).pos
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(0))
    q, k, _ = attn.heads(x, pos, 0)
    raw_q, raw_k, _ = (x @ attn.qkv.weight.T + attn.qkv.bias).split(16, dim=-1)

    def reference(t, gain):  # (B, T, C) -> per head t / rms(t) * gain, then positions
        t = t.view(2, 8, 4, 4).transpose(1, 2)  # (B, nh, T, hs)
        t = t / (t.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * gain
        return apply_rope(t, pos.cos[:8], pos.sin[:8]) if pos_emb == "rope" else t

    torch.testing.assert_close(q, reference(raw_q, attn.q_norm.weight))
    torch.testing.assert_close(k, reference(raw_k, attn.k_norm.weight))
    assert "blocks.0.attn.q_norm.weight" in build(qk_norm=True).state_dict()
    assert not any("q_norm" in key for key in build().state_dict())  # off: today's checkpoints


def test_logit_softcap_squashes_the_logits():
    capped, plain = build(logit_softcap=0.5), build()
    plain.load_state_dict(capped.state_dict())
    idx = tokens(2, 8)
    got, want = capped(idx)[0], plain(idx)[0]
    assert want.abs().max() > 0.5  # the test model's logits do reach past the cap
    torch.testing.assert_close(got, 0.5 * torch.tanh(want / 0.5))
    assert got.abs().max() < 0.5


@pytest.mark.parametrize("tie_weights", [False, True])
def test_zero_init_proj_zeroes_the_projections_and_an_untied_head(tie_weights):
    torch.manual_seed(0)
    zero = TinyGPT(tiny(zero_init_proj=True, tie_weights=tie_weights))
    torch.manual_seed(0)
    usual = TinyGPT(tiny(tie_weights=tie_weights))
    projections = {f"blocks.{i}.{m}.proj.weight" for i in range(2) for m in ("attn", "mlp")}
    zeroed = projections | (set() if tie_weights else {"lm_head.weight"})
    usual_state = usual.state_dict()
    for name, p in zero.state_dict().items():
        if name in zeroed:
            assert torch.all(p == 0), name
        else:  # the same draws as without the flag
            torch.testing.assert_close(p, usual_state[name], atol=0, rtol=0, msg=name)
    if not tie_weights:  # uniform first prediction: the loss is exactly ln V
        _, loss = zero(tokens(2, 8), tokens(2, 8, seed=1))
        assert float(loss.detach()) == pytest.approx(math.log(V), rel=1e-6)
