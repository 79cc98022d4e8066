"""Export to Hugging Face transformers and GGUF, checked by the other side's own readers:
`AutoModelForCausalLM` / `AutoTokenizer` / `tokenizers` for the HF folder, transformers' GGUF
loader and `gguf.GGUFReader` for the GGUF file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("safetensors")

from helpers import write_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_tiny.config import ModelConfig
from llm_tiny.export import cli, importer
from llm_tiny.export.gguf import interleave_rope_rows
from llm_tiny.export.hf_tokenizer import tokenizer_json
from llm_tiny.infer.sampling import generate
from llm_tiny.model import TinyGPT
from llm_tiny.train.checkpoint import load_model
from tok.bpe import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:30_000]
EOT = "<|endoftext|>"
TRICKY = "héllo 世界 🙂🙂 e\u0301 \r\n\r\n  x\t\t y  <|endoftext|>hi<|endoftext|> 1234567 it's"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXT, 400, special_tokens=[EOT], workers=1)


LLAMA = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
SHAPES = {
    "llama_gqa_untied": LLAMA
    | {"bias": False, "n_kv_head": 2, "tie_weights": False, "rope_theta": 500.0},
    "llama_tied_bias": LLAMA | {"bias": True, "mlp_hidden": 96},  # an imported Llama's width
    "gpt2_tied": {},
    "gpt2_untied_no_bias": {"bias": False, "tie_weights": False, "mlp_hidden": 200},
}


def tiny_model(vocab: int, noise: float = 0.05, **flags) -> TinyGPT:
    """A tiny TinyGPT whose every parameter (norm gains and biases too) is perturbed, so that
    a mapping mistake anywhere changes the logits."""
    cfg = ModelConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_embd=64, **flags)
    torch.manual_seed(0)
    model = TinyGPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model


def ids_of(tok: Tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tok.encode(text, allowed_special="all")[:60]])


# ----------------------------------------------------------------------------- HF


@pytest.mark.parametrize("shape", SHAPES)
def test_hf_export_loads_in_transformers_with_our_logits_and_round_trips(tok, tmp_path, shape):
    from transformers import AutoModelForCausalLM

    extra = 5 if shape == "gpt2_untied_no_bias" else 0  # embedding rows beyond the tokenizer
    model = tiny_model(tok.vocab_size + extra, **SHAPES[shape])
    run = write_checkpoint(tmp_path / "run", model, tok)
    assert cli.main(["--ckpt", str(run), "--out", str(tmp_path / "hf")]) == 0
    hf, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    expected = "GPT2LMHeadModel" if shape.startswith("gpt2") else "LlamaForCausalLM"
    assert type(hf).__name__ == expected
    assert hf.config.tie_word_embeddings == model.config.tie_weights
    hf.eval()
    ids = ids_of(tok, TEXT[:300])
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    prompt = ids[:, :5]
    greedy = hf.generate(prompt, max_new_tokens=50, do_sample=False, eos_token_id=None)
    assert greedy.tolist() == generate(model, prompt, 50, temperature=0.0).tolist()
    # ours -> HF -> ours is exact, tokenizer included
    assert importer.main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back, back_tok, back_cfg, _ = load_model(tmp_path / "back")
    assert back_tok.fingerprint == tok.fingerprint
    wanted = dataclasses.replace(model.config, bias=True) if shape.startswith("gpt2") else None
    assert back_cfg.model == (wanted or model.config)
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_hf_config_states_the_llama_details(tok, tmp_path):
    model = tiny_model(tok.vocab_size, **SHAPES["llama_gqa_untied"])
    run = write_checkpoint(tmp_path / "run", model, tok)
    cli.main(["--ckpt", str(run), "--out", str(tmp_path / "hf")])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["head_dim"] == 16
    assert config["rope_parameters"]["rope_theta"] == 500.0 and config["rms_norm_eps"] == 1e-5
    assert config["max_position_embeddings"] == 64 and config["hidden_act"] == "silu"
    assert config["bos_token_id"] == config["eos_token_id"] == tok.special_tokens[EOT]
    from safetensors import safe_open

    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_hf_export_in_half_precision(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(tok.vocab_size, **SHAPES["llama_tied_bias"])
    run = write_checkpoint(tmp_path / "run", model, tok)
    assert cli.main(["--ckpt", str(run), "--out", str(tmp_path / "hf"), "--dtype", "bf16"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.dtype == torch.bfloat16
    ids = ids_of(tok, TEXT[:300])
    with torch.no_grad():
        diff = (model(ids)[0] - hf(ids).logits.float()).abs().max().item()
    assert diff < 0.1, diff  # bfloat16 keeps 8 bits of mantissa


def test_tied_matrix_is_stored_once(tok, tmp_path):
    from safetensors import safe_open

    model = tiny_model(tok.vocab_size, **SHAPES["llama_tied_bias"])
    cli.main(
        ["--ckpt", str(write_checkpoint(tmp_path / "r", model, tok)), "--out", str(tmp_path / "o")]
    )
    with safe_open(tmp_path / "o" / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.embed_tokens.weight" in f.keys()  # noqa: SIM118


# ----------------------------------------------------------------------------- tokenizer

TEXTS = st.lists(
    st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=12),
        st.sampled_from(["\r\n", "  ", "\t\n ", "🙂", "世界", "e\u0301", EOT, "'s", "123456"]),
    ),
    max_size=12,
).map("".join)


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", r"[a-z]+|\d"])
def test_tokenizer_json_gives_our_ids(pattern, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer

    tok = Tokenizer.train(TEXT, 400, pattern=pattern, special_tokens=[EOT, "<|pad|>"], workers=1)
    theirs = HFTokenizer.from_str(json.dumps(tokenizer_json(tok)))

    @settings(max_examples=150, deadline=None)
    @given(TEXTS)
    def check(text):
        assert theirs.encode(text).ids == tok.encode(text, allowed_special="all")

    check()
    model = tiny_model(tok.vocab_size)
    cli.main(
        ["--ckpt", str(write_checkpoint(tmp_path / "r", model, tok)), "--out", str(tmp_path / "o")]
    )
    auto = AutoTokenizer.from_pretrained(tmp_path / "o")
    for text in (TEXT, TRICKY):
        ids = tok.encode(text, allowed_special="all")
        assert auto(text)["input_ids"] == ids
        assert auto.decode(ids) == text
    assert auto.eos_token == EOT


# ----------------------------------------------------------------------------- GGUF


def test_rope_interleave_is_the_inverse_of_the_transformers_gguf_loader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.randn(4 * 2 * 8, 5)  # 4 heads of size 16
    undo = LlamaTensorProcessor()._reverse_permute_weights(interleave_rope_rows(w, 4).numpy(), 4)
    assert torch.equal(torch.from_numpy(undo), w)


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_gguf_export_reads_back_in_transformers(tok, tmp_path, dtype):
    import gguf

    pytest.importorskip("accelerate")  # transformers' GGUF loading needs it (dev extra)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tiny_model(tok.vocab_size + 3, noise=0.0, **SHAPES["llama_gqa_untied"])
    run = write_checkpoint(tmp_path / "run", model, tok)
    out = tmp_path / f"model-{dtype}.gguf"
    assert (
        cli.main(["--ckpt", str(run), "--format", "gguf", "--dtype", dtype, "--out", str(out)]) == 0
    )
    reader = gguf.GGUFReader(out)
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "llama"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[dtype]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)
    ids = ids_of(tok, TEXT[:300])
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf.eval()(ids).logits
    diff = (ours - theirs).abs().max().item()
    assert diff < {"f32": 1e-4, "f16": 1e-3, "q8_0": 2e-2}[dtype], diff
    if dtype == "f32":  # the tokenizer, as transformers rebuilds it from the GGUF metadata
        auto = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
        assert auto(TEXT)["input_ids"] == tok.encode(TEXT)
        assert auto(EOT + "hi")["input_ids"] == tok.encode(EOT + "hi", allowed_special="all")


def test_gguf_holds_the_biases_llama_cpp_reads(tok, tmp_path):
    """`bias: true` (the default) writes llama.cpp's optional bias tensors; transformers' GGUF
    loader drops them, so they are checked as `gguf.GGUFReader` reads them (llama.cpp's own
    reading is the slow test below)."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    model = tiny_model(tok.vocab_size, **SHAPES["llama_tied_bias"])
    run = write_checkpoint(tmp_path / "run", model, tok)
    out = tmp_path / "bias.gguf"
    assert cli.main(["--ckpt", str(run), "--format", "gguf", "--out", str(out)]) == 0
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in gguf.GGUFReader(out).tensors}
    q, k, v = model.blocks[1].attn.qkv.bias.detach().split(64)
    undo = LlamaTensorProcessor()._reverse_permute_weights
    assert torch.equal(torch.from_numpy(undo(tensors["blk.1.attn_q.bias"].numpy(), 4)), q)
    assert torch.equal(torch.from_numpy(undo(tensors["blk.1.attn_k.bias"].numpy(), 4)), k)
    assert torch.equal(tensors["blk.1.attn_v.bias"], v)
    gate, up = model.blocks[1].mlp.fc.bias.detach().chunk(2)
    assert torch.equal(tensors["blk.1.ffn_gate.bias"], gate)
    assert torch.equal(tensors["blk.1.ffn_up.bias"], up)
    assert torch.equal(tensors["blk.1.ffn_down.bias"], model.blocks[1].mlp.proj.bias.detach())
    assert "output.weight" not in tensors  # tied: the embedding serves as the output


# ----------------------------------------------------------------------------- errors


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_export_errors_are_one_line_exit_2(tok, tmp_path, capsys):
    run = write_checkpoint(tmp_path / "r", tiny_model(tok.vocab_size, pos_emb="rope"), tok)
    err = one_line_error(capsys, cli.main(["--ckpt", str(run), "--out", str(tmp_path / "o")]))
    assert "model.pos_emb=rope: no Hugging Face counterpart" in err
    for flags, named in (
        ({"pos_emb": "alibi", "norm": "rmsnorm", "mlp": "swiglu"}, "model.pos_emb=alibi"),
        ({"norm_position": "post"}, "model.norm_position=post"),
        ({"qk_norm": True}, "model.qk_norm=True"),
        ({"logit_softcap": 15.0}, "model.logit_softcap=15.0"),
        ({"mlp": "relu2"}, "model.mlp=relu2"),
        ({"mlp": "relu"}, "model.mlp=relu"),
        ({"bigram_logits": True}, "model.bigram_logits=True"),
        ({"norm": "none"}, "model.norm=none"),
        ({"mlp": "mish"}, "model.mlp=mish"),
        ({"attn_window": 4}, "model.attn_window=4"),
        ({"pos_emb": "t5", "norm": "rmsnorm", "mlp": "swiglu"}, "model.pos_emb=t5"),
    ):
        path = write_checkpoint(tmp_path / named, tiny_model(tok.vocab_size, **flags), tok)
        err = one_line_error(capsys, cli.main(["--ckpt", str(path), "--out", str(tmp_path / "o")]))
        assert f"{named}: no Hugging Face counterpart" in err
    llama = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
    for flags, named in (
        ({"attn_window": 4}, "model.attn_window=4"),
        ({"norm": "none"}, "model.norm=none"),
    ):
        path = write_checkpoint(
            tmp_path / f"gguf{named}", tiny_model(tok.vocab_size, **llama | flags), tok
        )
        args = ["--ckpt", str(path), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]
        assert f"{named}: no Hugging Face counterpart" in one_line_error(capsys, cli.main(args))
    gpt2 = write_checkpoint(tmp_path / "g", tiny_model(tok.vocab_size), tok)
    args = ["--ckpt", str(gpt2), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]
    assert "GGUF export writes Llama-shaped" in one_line_error(capsys, cli.main(args))
    args = ["--ckpt", str(gpt2), "--dtype", "q8_0", "--out", str(tmp_path / "o")]
    assert "q8_0 is for --format gguf" in one_line_error(capsys, cli.main(args))
    args = ["--ckpt", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    assert "not found" in one_line_error(capsys, cli.main(args))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    args = ["--ckpt", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "o")]
    assert "is not an llm_tiny checkpoint" in one_line_error(capsys, cli.main(args))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    args = ["--ckpt", str(gpt2), "--out", str(tmp_path / "full")]
    assert "--force" in one_line_error(capsys, cli.main(args))
    assert (tmp_path / "full" / "keep.txt").exists()
    assert cli.main([*args, "--force"]) == 0
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json",
    ]  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_unsupported_flags_are_all_named(tok, tmp_path, capsys):
    model = tiny_model(tok.vocab_size, pos_emb="rope", norm="rmsnorm", n_kv_head=2)
    run = write_checkpoint(tmp_path / "r", model, tok)
    err = one_line_error(capsys, cli.main(["--ckpt", str(run), "--out", str(tmp_path / "o")]))
    assert "model.mlp=gelu" in err and "LlamaForCausalLM" in err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pattern", "dtype", "shape"),
    [("gpt4", "f32", "llama_gqa_untied"), ("gpt2", "f16", "llama_gqa_untied"),
     ("gpt4", "f32", "llama_tied_bias")],
)  # fmt: skip
def test_llama_cpp_reads_the_gguf_with_our_tokens_and_greedy_text(tmp_path, pattern, dtype, shape):
    """llama.cpp itself (through `llama-cpp-python`, built from source: not in the extras; an
    external libllama can be named with LLAMA_CPP_LIB_PATH)."""
    try:
        import llama_cpp
    except Exception as e:  # not installed, or installed without a loadable libllama
        pytest.skip(f"llama-cpp-python is not usable here: {type(e).__name__}: {e}")

    tok = Tokenizer.train(TEXT, 400, pattern=pattern, special_tokens=[EOT], workers=1)
    model = tiny_model(tok.vocab_size, **SHAPES[shape])
    run = write_checkpoint(tmp_path / "run", model, tok)
    out = tmp_path / "model.gguf"
    args = ["--ckpt", str(run), "--format", "gguf", "--dtype", dtype, "--out", str(out)]
    assert cli.main(args) == 0
    llm = llama_cpp.Llama(
        model_path=str(out), n_ctx=64, n_threads=1, logits_all=True, verbose=False
    )
    for text in (TEXT[:2000], "héllo 世界 🙂 \r\n\r\n  x\t y 1234567 it's"):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
    assert llm.tokenize(EOT.encode(), add_bos=False, special=True) == [tok.special_tokens[EOT]]
    prompt = tok.encode(TEXT[:40])[:5]
    llm.eval(prompt)
    theirs = torch.tensor(llm.scores[len(prompt) - 1])
    with torch.no_grad():
        ours = model(torch.tensor([prompt]))[0][0, -1]
    assert (ours - theirs).abs().max().item() < {"f32": 1e-3, "f16": 2e-2}[dtype]
    if dtype != "f32":
        return
    llm.reset()
    greedy = []
    for t in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        greedy.append(t)
        if len(greedy) == 50:
            break
    expected = generate(model, torch.tensor([prompt]), 50, temperature=0.0)[0, 5:].tolist()
    assert greedy == expected
