"""The HF export of a run whose tokenizer has no end-of-text token (a run on one plain text
file, configs/tiny.yaml): a stand-in BOS/EOS on the never-used 0xFF byte token, so that
lm-eval and HF padding work, with the tokens of every text and the import round trip as
before."""

from __future__ import annotations

import json

import torch
from test_export import TEXT, tiny_model, write_checkpoint

from llm_tiny.export import cli, importer
from llm_tiny.train.checkpoint import load_model
from tok.bpe import Tokenizer

TRICKY = "héllo 世界 🙂 ÿ ÿÿ <|endoftext|> \r\n x it's"


def test_a_plain_text_runs_export_has_a_bos_and_eos_that_change_nothing(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = Tokenizer.train(TEXT, 300, workers=1)
    assert not tok.special_tokens
    model = tiny_model(tok.vocab_size, pos_emb="rope", norm="rmsnorm", mlp="swiglu")
    run = write_checkpoint(tmp_path / "run", model, tok)
    assert cli.main(["--ckpt", str(run), "--out", str(tmp_path / "hf")]) == 0
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.bos_token_id == hf_tok.eos_token_id == 255 and len(hf_tok) == tok.vocab_size
    assert hf_tok.decode([255]) == "<|endoftext|>"  # what lm-eval decodes as its prefix
    for text in (TEXT[:2000], TRICKY.replace("<|endoftext|>", "")):
        assert hf_tok.encode(text) == tok.encode(text)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 255
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(TEXT[:200])[:60]])
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max().item() < 1e-4
    # Back to ours: the same tokenizer (no special token gained) and the same weights.
    assert importer.main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back, back_tok, _, _ = load_model(tmp_path / "back")
    assert back_tok.fingerprint == tok.fingerprint
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
