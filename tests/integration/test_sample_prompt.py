"""The run's own sample prompt (`sample.prompt: null`, what `make train DATA=...` asks for):
a run of documents starts a new document after the end-of-text token, a run of one text the
first whole line of its validation text; an explicit prompt always wins."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from llm_tiny.config import config_from_dict, override
from llm_tiny.data import load_prepared
from llm_tiny.infer.prompt import eot_ids
from llm_tiny.infer.sample import main as sample_main
from llm_tiny.infer.sample import run_prompt, sample_text
from llm_tiny.model import TinyGPT
from llm_tiny.train.checkpoint import load_model
from tok.bpe import Tokenizer

ROOT = Path(__file__).resolve().parents[2]


def auto(cfg):
    return override(cfg, **{"sample.prompt": None})


def test_a_run_of_one_text_starts_from_the_first_line_of_its_validation_text(tiny_run):
    model, tok, cfg, _ = load_model(tiny_run, "cpu")
    assert not eot_ids(tok, cfg)  # one plain text file: no end-of-text token
    stream = load_prepared(cfg.data.data_dir, tok).tokens("val")
    val_text = tok.decode(stream[0 : len(stream)].tolist())
    ids = run_prompt(tok, auto(cfg))
    line = tok.decode(ids)
    assert line and "\n" not in line and len(line) <= 80
    assert f"\n{line}" in val_text  # a whole line of the validation text, from its start
    assert run_prompt(tok, auto(cfg), "ROMEO:") == tok.encode("ROMEO:")  # --prompt wins
    text = sample_text(model, tok, override(auto(cfg), **{"sample.max_new_tokens": 5}), "cpu")
    assert text.startswith(line)


def test_without_its_prepared_data_the_run_starts_from_a_newline(tiny_run, tmp_path):
    _, tok, cfg, _ = load_model(tiny_run, "cpu")
    gone = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=str(tmp_path)))
    assert run_prompt(tok, auto(gone)) == tok.encode("\n")


def test_a_run_of_documents_begins_a_new_document(tiny_run, capsys):
    """With the end-of-text token the prompt is that token alone, and the sample shows only
    the model's own text."""
    corpus = (ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:20_000]
    tok = Tokenizer.train(corpus, 300, special_tokens=("<|endoftext|>",))
    cfg = config_from_dict(
        {"model": {"vocab_size": 300, "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32},
         "data": {"vocab_size": 300}, "sample": {"prompt": None, "max_new_tokens": 8}}
    )  # fmt: skip
    eot = tok.special_tokens["<|endoftext|>"]
    assert run_prompt(tok, cfg) == [eot]
    torch.manual_seed(0)
    text = sample_text(TinyGPT(cfg.model).eval(), tok, cfg, "cpu")
    assert "<|endoftext|>" not in text
    # The sample command: --prompt beats the run's rule.
    assert sample_main(["--ckpt", str(tiny_run), "--prompt", "ab", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("ab")
