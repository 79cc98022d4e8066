"""The encoder-only (TinyEncoder) and encoder-decoder (TinySeq2Seq) models against references:
the attention masks (bidirectional in the encoder, causal in the decoder, padding hidden),
cross-attention against a computation written out, the decoder's KV cache against
recomputation, the losses against plain cross-entropy; their batches; their config rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_tiny.config import ModelConfig, RunConfig
from llm_tiny.config.rules import validate
from llm_tiny.config.sections import Arch, ConfigError, DataConfig, TrainConfig
from llm_tiny.data.batches import InMemory
from llm_tiny.data.encoded import EncoderBatches, Seq2SeqBatches, encoder_row, source_row
from llm_tiny.model import MODELS, TinyGPT, build_model
from llm_tiny.model.encoder import TinyEncoder
from llm_tiny.model.seq2seq import TinySeq2Seq

V = 32


def cfg_of(arch: str, **kw) -> ModelConfig:
    values = {"vocab_size": V, "block_size": 12, "n_layer": 2, "n_head": 4, "n_embd": 32,
              "pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "arch": arch, "n_classes": 5}  # fmt: skip
    return ModelConfig(**{**values, **kw})


def lively(cfg: ModelConfig, seed: int = 0):
    """A model whose every parameter ~ N(0, 0.3): varied outputs that hide no mistake."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def test_every_arch_has_its_class():
    assert set(MODELS) == set(Arch.__args__)
    classes = {a: type(build_model(cfg_of(a))) for a in MODELS}
    assert classes == {"decoder": TinyGPT, "encoder": TinyEncoder, "encoder_decoder": TinySeq2Seq}


# ----------------------------------------------------------------------------- attention masks


def influence(f, idx: torch.Tensor, positions: range) -> torch.Tensor:
    """changed[i, j]: does changing input j change output i? f maps (1, T) ids to (1, T, ...)."""
    base = f(idx)
    changed = torch.zeros(base.size(1), len(positions), dtype=torch.bool)
    for col, j in enumerate(positions):
        other = idx.clone()
        other[0, j] = (other[0, j] + 1) % V
        diff = (f(other) - base).abs().flatten(2).amax(-1)[0]  # (T,)
        changed[:, col] = diff > 1e-6
    return changed


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual", "tiled"])
def test_a_block_without_the_causal_mask_sees_ahead_with_or_without_a_padding_mask(attn_impl):
    # Without `keep` the mask is a plain 2-D table: no kernel may take it for the causal one.
    from llm_tiny.model.model import POSITIONS, Block

    cfg = ModelConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16,
                      pos_emb="rope", norm="rmsnorm", attn_impl=attn_impl)  # fmt: skip
    torch.manual_seed(0)
    block, pos = Block(cfg, causal=False).eval(), POSITIONS["rope"](cfg)
    x = torch.randn(2, 8, 16)
    y = block(x, pos, 0, None)
    torch.testing.assert_close(y, block(x, pos, 0, None, torch.ones(2, 8, dtype=torch.bool)))
    later = x.clone()
    later[:, -1] += 1.0
    assert not torch.allclose(block(later, pos, 0, None)[:, 0], y[:, 0])  # position 0 sees it


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual", "tiled"])
def test_the_encoder_is_bidirectional_and_hides_padding(attn_impl):
    cfg = cfg_of("encoder", attn_impl=attn_impl)
    model = lively(cfg)
    n = 7  # [CLS] + 6 tokens, then padding
    row = encoder_row(list(range(3, 9)), cfg)
    idx = torch.tensor([row])

    def encode(ids):
        return model.encoder(ids)[0]

    seen = influence(encode, idx, range(1, n))
    assert seen[:n].all()  # every real position sees every token: before and after it
    # Padding: neither its embedding nor how much of it there is changes a real position.
    before = encode(idx)[:, :n]
    with torch.no_grad():
        model.encoder.wte.weight[cfg.pad_id] += 1.0
    torch.testing.assert_close(encode(idx)[:, :n], before)
    short = ModelConfig(**{**cfg.__dict__, "block_size": n})
    trimmed = build_model(short).eval()
    trimmed.load_state_dict(model.state_dict())
    torch.testing.assert_close(trimmed.encoder(idx[:, :n])[0], before)
    # The same weights in TinyGPT's causal blocks: position i sees only j <= i.
    causal = influence(lambda ids: decoder_twin(model, cfg)(ids)[0], idx[:, :n], range(n))
    assert torch.equal(causal, torch.ones(n, n, dtype=torch.bool).tril())


def decoder_twin(encoder: TinyEncoder, cfg: ModelConfig) -> TinyGPT:
    """TinyGPT with the encoder's blocks: the same weights behind the causal mask."""
    gpt = TinyGPT(ModelConfig(**{**cfg.__dict__, "vocab_size": V + 3, "arch": "decoder"})).eval()
    gpt.load_state_dict({**gpt.state_dict(), **encoder.encoder.state_dict()}, strict=True)
    return gpt


def reference_encoder_layer(block, x: torch.Tensor, keep: torch.Tensor, pos) -> torch.Tensor:
    """One pre-norm encoder block written out: softmax(q k^T / sqrt(hs)), padded keys at -inf,
    no causal mask."""
    B, T, C = x.shape
    a = block.attn
    h = block.norm1(x)
    q, k, v = (h @ a.qkv.weight.T).split(C, dim=-1)
    q, k, v = (t.view(B, T, a.n_head, a.head_dim).transpose(1, 2) for t in (q, k, v))
    q, k = pos.rotate(q, 0), pos.rotate(k, 0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(a.head_dim)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C) @ a.proj.weight.T
    x = x + y
    return x + block.mlp(block.norm2(x))


def test_an_encoder_block_equals_the_computation_written_out():
    cfg = cfg_of("encoder", bias=False)
    model = lively(cfg)
    rows = [encoder_row([4, 5, 6], cfg), encoder_row([7, 8, 9, 10, 11, 1, 2], cfg)]
    idx = torch.tensor(rows)
    keep = idx != cfg.pad_id
    x = model.encoder.wte(idx)
    block = model.encoder.blocks[0]
    got = block(x, model.encoder.pos, 0, None, keep)
    want = reference_encoder_layer(block, x, keep, model.encoder.pos)
    torch.testing.assert_close(got, want)


def test_the_decoder_is_causal_and_reads_the_whole_source():
    cfg = cfg_of("encoder_decoder")
    model = lively(cfg)
    src = torch.tensor([source_row([3, 4, 5, 6, 7], cfg)])
    tgt = torch.tensor([[cfg.bos_id, 9, 10, 11]])
    memory = model.memory(src)
    seen = influence(lambda t: model.decode(t, memory), tgt, range(4))
    assert torch.equal(seen, torch.ones(4, 4, dtype=torch.bool).tril())
    # Every source token reaches every target position (the first one included) ...
    from_source = influence(lambda s: model.decode(tgt, model.memory(s)), src, range(5))
    assert from_source.all()
    # ... and the source's padding none.
    before = model.decode(tgt, memory)
    with torch.no_grad():
        model.encoder.wte.weight[cfg.pad_id] += 1.0
    torch.testing.assert_close(model.decode(tgt, model.memory(src)), before)


# ----------------------------------------------------------------------------- cross-attention


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual", "tiled"])
@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_cross_attention_equals_the_computation_written_out(attn_impl, n_kv_head):
    cfg = cfg_of("encoder_decoder", attn_impl=attn_impl, n_kv_head=n_kv_head)
    cross = lively(cfg).decoder_blocks[0].cross
    g = torch.Generator().manual_seed(1)
    B, T, S, C, nh, hs = 2, 3, 6, 32, 4, 8
    nkv = n_kv_head or nh
    x, h = torch.randn(B, T, C, generator=g), torch.randn(B, S, C, generator=g)
    keep = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    got = cross(x, cross.memory(h, keep))
    # Written out, one head and one row at a time.
    q = x @ cross.q.weight.T + cross.q.bias  # (B, T, nh * hs)
    kv = h @ cross.kv.weight.T + cross.kv.bias  # (B, S, 2 * nkv * hs)
    k, v = kv[..., : nkv * hs], kv[..., nkv * hs :]
    out = torch.zeros(B, T, C)
    for b in range(B):
        s = int(keep[b].sum())
        for head in range(nh):
            kh = head // (nh // nkv)  # the key/value head this query head shares
            qh = q[b, :, head * hs : (head + 1) * hs]
            kb, vb = k[b, :s, kh * hs : (kh + 1) * hs], v[b, :s, kh * hs : (kh + 1) * hs]
            weights = torch.softmax(qh @ kb.T / math.sqrt(hs), dim=-1)  # (T, s)
            out[b, :, head * hs : (head + 1) * hs] = weights @ vb
    want = out @ cross.proj.weight.T + cross.proj.bias
    torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- the KV cache


def test_decoding_with_the_kv_cache_equals_recomputation():
    cfg = cfg_of("encoder_decoder", n_kv_head=2)
    model = lively(cfg, seed=1)
    src = torch.tensor([source_row([3, 4, 5], cfg), source_row([6, 7, 8, 9, 10, 11], cfg)])
    cached = model.greedy(src, 8)
    assert torch.equal(cached, model.greedy(src, 8, use_cache=False))
    assert len(set(cached.flatten().tolist())) > 2  # varied tokens: a real comparison
    # Logits too: token by token through the cache against the whole target at once.
    memory = model.memory(src)
    tgt = torch.cat([torch.full((2, 1), cfg.bos_id), cached[:, :-1]], dim=1)  # (2, 8)
    cache = model.new_cache(2)
    steps = torch.cat([model.decode(tgt[:, t : t + 1], memory, cache) for t in range(8)], 1)
    torch.testing.assert_close(steps, model.decode(tgt, memory))
    assert cache.length == 8
    # Stopping: once every row has produced the stop token, decoding ends.
    stop = int(cached[1, 2])
    out = model.greedy(src[1:], 8, stop=stop)
    assert out[0].tolist() == cached[1, :3].tolist() and stop not in cached[1, :2]


# ----------------------------------------------------------------------------- losses


def test_encoder_loss_is_the_mean_over_class_and_masked_lm_targets():
    cfg = cfg_of("encoder")
    model = lively(cfg)
    idx = torch.tensor([encoder_row([4, 5, 6], cfg), encoder_row([7, cfg.mask_id, 9, 10], cfg)])
    y = torch.full_like(idx, -1)
    y[0, 0] = 3  # a class row
    y[1, 2] = 8  # a masked-LM row: position 2 was token 8
    logits, loss = model(idx, y)
    classes = model.classify(idx)
    want = (F.cross_entropy(classes[:1], y[:1, 0]) + F.cross_entropy(logits[1, 2:3], y[1, 2:3])) / 2
    torch.testing.assert_close(loss, want)
    assert logits.shape == (2, cfg.block_size, V)  # never a special id
    with pytest.raises(ValueError, match="ids must be in"):
        model(torch.full((1, 4), V + 3))


def test_seq2seq_loss_is_cross_entropy_of_the_answer():
    cfg = cfg_of("encoder_decoder")
    model = lively(cfg)
    x = torch.tensor([[*source_row([3, 4], cfg), cfg.bos_id, 7, cfg.pad_id]])
    y = torch.tensor([[7, 1, -1]])
    logits, loss = model(x, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits[0, :2], y[0, :2]))
    assert logits.shape == (1, 3, V)


def test_weights_are_initialised_as_tinygpt_and_groups_cover_everything():
    model = build_model(cfg_of("encoder_decoder"))
    proj = model.decoder_blocks[1].cross.proj.weight
    assert abs(proj.std().item() - 0.02 / math.sqrt(4)) < 0.004
    assert abs(model.encoder.wte.weight.std().item() - 0.02) < 0.002
    groups = model.param_groups(0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# ----------------------------------------------------------------------------- batches


def examples_source(cls, cfg: ModelConfig, *extra, micro_batches: int = 1, batch_size: int = 4):
    """Four examples: prompt ids then answer ids (the answer's last token is the newline 1)."""
    examples = [([3, 4, 5], [6, 1]), ([7, 8], [2, 1]), ([9, 10, 11, 12], [4, 1]), ([5, 6], [0, 1])]
    tokens, index = [], []
    for prompt, answer in examples:
        index.append((len(tokens), len(prompt), len(prompt) + len(answer)))
        tokens += prompt + answer
    arr = np.array(index, dtype=np.int64)
    return cls(InMemory(np.array(tokens)), arr, *extra, cfg, cfg.block_size, batch_size, 7, "cpu",
               micro_batches)  # fmt: skip


def test_encoder_rows_and_masked_lm_rows():
    cfg = cfg_of("encoder", mlm_prob=0.5)
    labels = np.array([1, 2, 4, 0])
    src = examples_source(EncoderBatches, cfg, labels)
    x, y = (t.numpy() for t in next(src.iter_eval_batches(4)))
    P, C = cfg.pad_id, cfg.bos_id
    assert x[1].tolist() == [C, 7, 8] + [P] * 9 and y[1].tolist() == [2] + [-1] * 11
    assert (y[:, 0] == labels).all() and (y[:, 1:] == -1).all()  # evaluation: never masked
    mlm_rows = 0
    for step in range(20):
        xb, yb = (t.numpy() for t in src.get_batch(step))
        clean, _ = src._batch(src._rows(step, 0, 4))
        for i in range(4):
            chosen = yb[i] != -1
            if yb[i, 0] != -1:  # a class row: untouched, one target
                assert (xb[i] == clean[i]).all() and chosen.sum() == 1
                continue
            mlm_rows += 1
            assert chosen.sum() >= 1 and not chosen[0]  # never [CLS]
            assert (yb[i][chosen] == clean[i][chosen]).all()  # the original tokens
            assert (xb[i][~chosen] == clean[i][~chosen]).all()  # the rest as it was
            assert ((clean[i] == P) <= ~chosen).all()  # never padding
    assert 20 < mlm_rows < 60  # about half of 80 rows
    # Resume and accumulation: the same step gives the same rows; two micro-batches of 2 are
    # one batch of 4 cut in half.
    assert all(torch.equal(a, b) for a, b in zip(src.get_batch(5), src.get_batch(5)))
    halves = examples_source(EncoderBatches, cfg, labels, micro_batches=2, batch_size=2)
    whole = src.get_batch(3)
    for m in range(2):
        for a, b in zip(halves.get_batch(3, m), whole):
            assert torch.equal(a, b[2 * m : 2 * m + 2])


def test_seq2seq_rows_put_the_source_then_the_decoder_input():
    cfg = cfg_of("encoder_decoder")
    src = examples_source(Seq2SeqBatches, cfg)
    x, y = (t.numpy() for t in next(src.iter_eval_batches(4)))
    P, S = cfg.pad_id, cfg.bos_id
    assert x.shape == (4, 12 + 2) and y.shape == (4, 2)  # the longest answer: 2 tokens
    assert x[0].tolist() == [3, 4, 5] + [P] * 9 + [S, 6]
    assert y[0].tolist() == [6, 1]
    assert src.eval_targets(4) == 8


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "model, data, message",
    [
        ({"arch": "encoder"}, {}, "needs model.n_classes >= 2"),
        ({"arch": "encoder", "n_classes": 10}, {"kind": "text"}, "trains on data.kind: examples"),
        ({"arch": "encoder_decoder", "pos_emb": "alibi"}, {}, "pos_emb alibi is causal only"),
        ({"arch": "encoder_decoder", "pos_emb": "t5"}, {}, "pos_emb t5 is causal only"),
        ({"arch": "encoder_decoder", "attn_window": 4}, {}, "attn_window is for decoders"),
        ({"arch": "encoder_decoder", "norm_position": "post"}, {}, "pre-norm only"),
        ({"arch": "encoder", "n_classes": 10, "mlm_prob": 1.0}, {}, "mlm_prob must be in"),
        ({"arch": "encoder_decoder"}, {"sample_at_end": True}, "set train.sample_at_end: false"),
        ({"arch": "encoder_decoder"}, {"eval_tasks": ("suite",)}, "eval_tasks are for decoders"),
    ],
)
def test_config_rules(model, data, message):
    train_keys = ("sample_at_end", "eval_tasks")
    train = {k: v for k, v in data.items() if k in train_keys}
    cfg = RunConfig(
        model=ModelConfig(**model),
        data=DataConfig(
            **{"kind": "examples"} | {k: v for k, v in data.items() if k not in train_keys}
        ),
        train=TrainConfig(**{"sample_at_end": False, **train}),
    )
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
