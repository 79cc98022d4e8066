"""LoRA against its formula: the layer, zero-initialised adapters, merging, the frozen base,
the optimizer's groups and the `lora` config rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import lively_model

from llm_tiny.config import ConfigError, LoraConfig, OptimConfig, config_from_dict
from llm_tiny.model import TinyGPT
from llm_tiny.model import lora as L
from llm_tiny.model.layers import Linear
from llm_tiny.train.optim import build_optimizer, hidden_matrices

GPT2 = {"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
LLAMA = GPT2 | {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_head": 4, "n_kv_head": 2}


def targets_of(arch: dict) -> tuple[str, ...]:
    """Every projection the model has (SwiGLU adds the gate)."""
    gate = ("gate",) if arch.get("mlp") == "swiglu" else ()
    return ("q", "k", "v", "o", *gate, "up", "down")


def randomise(params: list[torch.nn.Parameter], seed: int = 1) -> None:
    """Trained-looking adapters: B away from its zero start."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_layer_is_w_x_plus_scaled_b_a_x_on_its_rows_only():
    # A fused [q | k | v] Linear (8 + 4 + 4 rows) with adapters on q and v but not k.
    torch.manual_seed(0)
    base = Linear(6, 16)
    w, b = base.weight.detach().clone(), base.bias.detach().clone()
    layer = L.LoRALinear(base, {"q": (0, 8), "v": (12, 16)}, rank=3, alpha=6.0, p=0.0)
    randomise(list(layer.lora.parameters()))
    x = torch.randn(5, 7, 6)
    a_q, b_q = layer.lora["q"].A.detach(), layer.lora["q"].B.detach()
    a_v, b_v = layer.lora["v"].A.detach(), layer.lora["v"].B.detach()
    scale = 6.0 / 3
    expected = x @ w.t() + b  # W x + b
    expected[..., 0:8] += scale * x @ a_q.t() @ b_q.t()  # + (alpha / r) B A x on q's rows
    expected[..., 12:16] += scale * x @ a_v.t() @ b_v.t()
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5)
    # The same weights as the base, not copies: frozen base, unchanged names.
    assert layer.weight is base.weight and layer.bias is base.bias
    assert set(dict(layer.named_parameters())) == {
        "weight", "bias", "lora.q.A", "lora.q.B", "lora.v.A", "lora.v.B"
    }  # fmt: skip


def test_dropout_applies_to_the_adapters_input_only():
    torch.manual_seed(0)
    base = Linear(6, 4)
    layer = L.LoRALinear(base, {"o": (0, 4)}, rank=2, alpha=2.0, p=0.5).train()
    randomise(list(layer.lora.parameters()))
    x = torch.randn(3, 6)
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)
    dropped = torch.nn.functional.dropout(x, 0.5, training=True)
    ad = layer.lora["o"]
    expected = base(x) + (dropped @ ad.A.t() @ ad.B.t())
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("arch", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_zero_initialised_adapters_leave_the_outputs_unchanged(arch):
    model = lively_model(**arch)
    x = torch.randint(0, 64, (2, 12))
    before = model(x)[0].detach()
    params = L.add_lora(model, LoraConfig(rank=4, targets=targets_of(arch)))
    assert params and all(
        p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith(".A")
    )
    assert torch.equal(model(x)[0], before)  # B = 0: exactly the base model


@pytest.mark.parametrize("arch", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_merged_weights_equal_base_plus_adapters(arch):
    model = lively_model(**arch)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    lora = LoraConfig(rank=2, alpha=5.0, targets=targets_of(arch))
    randomise(L.add_lora(model, lora))
    x = torch.randint(0, 64, (2, 12))
    adapted = model(x)[0].detach()
    base, adapters = L.split_state(model.state_dict())
    assert (
        all(torch.equal(base[k], base_state[k]) for k in base_state)
        and base.keys() == base_state.keys()
    )
    merged = L.merge_state(base, adapters, model.config, lora)
    # The fused QKV matrix merged by hand: W + (alpha / r) B_t A_t on each target t's rows.
    w = base_state["blocks.1.attn.qkv.weight"].clone()
    for t in ("q", "k", "v"):
        _, start, end = L.target_rows(model.config)[t]
        a, b = adapters[f"blocks.1.attn.qkv.lora.{t}.A"], adapters[f"blocks.1.attn.qkv.lora.{t}.B"]
        w[start:end] += 2.5 * b @ a
    torch.testing.assert_close(merged["blocks.1.attn.qkv.weight"], w, rtol=0, atol=1e-6)
    plain = TinyGPT(model.config).eval()
    plain.load_state_dict(merged)
    torch.testing.assert_close(plain(x)[0], adapted, rtol=0, atol=1e-5)
    L.merge(model)  # in place, and back
    torch.testing.assert_close(model(x)[0], adapted, rtol=0, atol=1e-5)
    L.unmerge(model)
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"], base_state["blocks.0.attn.qkv.weight"], atol=1e-6, rtol=0)  # fmt: skip


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_only_adapters_train_and_the_optimizer_covers_exactly_them(name):
    model = lively_model(**LLAMA).train()
    params = L.add_lora(model, LoraConfig(rank=2, targets=("q", "v", "down")))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params}
    assert len(params) == 2 * 3 * LLAMA["n_layer"]  # A and B per target per block
    opt = build_optimizer(model, OptimConfig(name=name, weight_decay=0.1))
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in trainable) and len(seen) == len(set(seen))
    assert hidden_matrices(model) == []  # adapters stay with AdamW, Muon gets nothing
    assert isinstance(opt, torch.optim.AdamW)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in params}  # A and B are matrices: decayed
    # One step moves adapters only.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 64, (2, 12))
    model(x, x)[1].backward()
    opt.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(L.is_adapter_key(k) for k in moved)


def test_rank_0_changes_nothing_and_sizes_are_small():
    model = lively_model(**GPT2)
    assert L.add_lora(model, LoraConfig()) == [] and all(
        p.requires_grad for p in model.parameters()
    )
    params = L.add_lora(model, LoraConfig(rank=2, targets=("q", "v")))
    # q, v: A (2, 16) and B (16, 2) each, per block.
    assert sum(p.numel() for p in params) == GPT2["n_layer"] * 2 * (2 * 16 + 16 * 2)


def test_the_base_hash_names_the_weights():
    model = lively_model(**GPT2)
    state = model.state_dict()
    same = {k: v.clone() for k, v in state.items()}
    assert L.state_sha256(state) == L.state_sha256(same)
    same["blocks.0.attn.qkv.weight"][0, 0] += 1e-6
    assert L.state_sha256(state) != L.state_sha256(same)


def test_a_target_the_model_lacks_is_a_config_error():
    model = lively_model(**GPT2)  # GELU MLP: no gate
    with pytest.raises(ConfigError, match=r"lora.targets: 'gate' is not a projection"):
        L.add_lora(model, LoraConfig(rank=2, targets=("q", "gate")))


@pytest.mark.parametrize(
    ("lora", "train", "message"),
    [
        ({"rank": -1}, {"init_from": "base"}, "lora.rank must be >= 0"),
        ({"rank": 4, "alpha": 0}, {"init_from": "base"}, "lora.alpha must be > 0"),
        ({"rank": 4, "dropout": 1.0}, {"init_from": "base"}, r"lora.dropout must be in \[0, 1\)"),
        ({"rank": 4, "targets": []}, {"init_from": "base"}, "at least one projection"),
        ({"rank": 4, "targets": ["q", "q"]}, {"init_from": "base"}, "repeats one"),
        ({"rank": 4, "targets": ["query"]}, {"init_from": "base"}, "lora.targets"),
        ({"rank": 4}, {}, "set train.init_from"),
        ({"rnak": 4}, {}, "did you mean lora.rank"),
        ({"rank": 4, "tokens": [-1]}, {"init_from": "base"}, "lora.tokens must be token ids"),
        ({"rank": 4, "tokens": [3, 3]}, {"init_from": "base"}, "lora.tokens repeats one"),
    ],
)
def test_bad_lora_configs_are_one_line_config_errors(lora, train, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict({"lora": lora, "train": train})
    assert "\n" not in str(info.value)


def test_the_lora_section_round_trips():
    cfg = config_from_dict(
        {"lora": {"rank": 8, "targets": ["q", "v"]}, "train": {"init_from": "b"}}
    )
    assert cfg.lora == LoraConfig(rank=8, targets=("q", "v")) and cfg.lora.scale == 2.0
    assert dataclasses.asdict(cfg.lora)["alpha"] == 16.0


# ----------------------------------------------------------------------------- token rows


@pytest.mark.parametrize("tied", [True, False])
def test_token_rows_stand_for_their_rows_and_merge_into_plain_weights(tied):
    cfg = GPT2 | {"tie_weights": tied}
    model = lively_model(**cfg)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ids = (3, 17, 60)
    L.add_lora(model, LoraConfig(rank=2, targets=("q", "v"), tokens=ids))
    randomise([p for n, p in model.named_parameters() if p.requires_grad])
    assert (model.wte.lora.rows is model.lm_head.lora.rows) == tied  # one for a tied pair
    emb_rows, head_rows = model.wte.lora.rows.detach(), model.lm_head.lora.rows.detach()
    # The embedding and the head against a copy of their matrices with those rows replaced.
    idx = torch.randint(0, 64, (3, 16))
    idx[0, :3] = torch.tensor(ids)
    emb = base["wte.weight"].clone()
    emb[list(ids)] = emb_rows
    torch.testing.assert_close(model.wte(idx), emb[idx], rtol=0, atol=0)
    head = base["lm_head.weight"].clone()
    head[list(ids)] = head_rows
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(model.lm_head(x), x @ head.t(), rtol=1e-5, atol=1e-5)
    # The frozen matrices did not move; the rows and adapters are the only trainable weights.
    assert torch.equal(model.wte.weight, base["wte.weight"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"wte.lora.rows"} | ({"lm_head.lora.rows"} if not tied else set()) <= trainable
    assert all(L.is_adapter_key(n) for n in trainable)
    groups = build_optimizer(model, OptimConfig()).param_groups
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    # merge_state gives plain weights with the same outputs; so does merging in place.
    adapters = L.split_state(model.state_dict())[1]
    plain = TinyGPT(model.config).eval()
    plain.load_state_dict(L.merge_state(base, adapters, model.config, LoraConfig(
        rank=2, targets=("q", "v"), tokens=ids)))  # fmt: skip
    expected = model(idx)[0]
    torch.testing.assert_close(plain(idx)[0], expected, rtol=1e-5, atol=1e-5)
    L.merge(model)
    torch.testing.assert_close(model(idx)[0], expected, rtol=1e-5, atol=1e-5)
    L.unmerge(model)
    torch.testing.assert_close(model.wte.weight, base["wte.weight"], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(idx)[0], expected, rtol=1e-5, atol=1e-5)


def test_merge_state_grows_the_base_to_the_runs_vocabulary():
    model = lively_model(**GPT2)
    base = model.state_dict()
    grown = dataclasses.replace(model.config, vocab_size=68)
    rows = torch.randn(4, 16)
    lora = LoraConfig(rank=2, targets=("q",), tokens=(64, 65, 66, 67))
    zero = {
        "wte.lora.rows": rows, "lm_head.lora.rows": rows,
        "blocks.0.attn.qkv.lora.q.A": torch.zeros(2, 16), "blocks.0.attn.qkv.lora.q.B": torch.zeros(16, 2),
        "blocks.1.attn.qkv.lora.q.A": torch.zeros(2, 16), "blocks.1.attn.qkv.lora.q.B": torch.zeros(16, 2),
    }  # fmt: skip
    merged = L.merge_state(base, zero, grown, lora)
    assert (
        merged["wte.weight"].shape == (68, 16) and merged["lm_head.weight"] is merged["wte.weight"]
    )
    assert torch.equal(merged["wte.weight"][:64], base["wte.weight"])
    assert torch.equal(merged["wte.weight"][64:], rows)


def test_token_ids_outside_the_vocabulary_or_with_a_bigram_table_are_refused():
    with pytest.raises(ConfigError, match=r"lora\.tokens: 64 is not a token id"):
        L.add_lora(lively_model(**GPT2), LoraConfig(rank=2, tokens=(1, 64)))
    with pytest.raises(ConfigError, match="bigram"):
        L.add_lora(lively_model(**GPT2, bigram_logits=True), LoraConfig(rank=2, tokens=(1,)))


def test_the_start_line_names_the_trainable_share():
    model = lively_model(**GPT2)
    assert L.trainable_note(model) == ""
    L.add_lora(model, LoraConfig(rank=2, targets=("q",)))
    n = 2 * (2 * 16 + 16 * 2)  # two blocks: A (2, 16) and B (16, 2) on q's 16 rows
    assert L.trainable_note(model) == f" ({n / 1e6:.3f}M trainable)"
