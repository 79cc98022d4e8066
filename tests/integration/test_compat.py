"""A run written before the package layout moved (llm_tiny 99849d7: `llm_tiny/checkpoint.py`,
`llm_tiny/sampling.py`, a tokenizer saved with the older `gpt4` split pattern) still loads and
generates exactly what that code generated. The fixture is its `best.pt`, `config.yaml` and
`tok/bpe.json` (1 layer, 16 wide, 260 tokens, 3 steps); the expected ids were produced by that
commit's `sampling.generate`."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from llm_tiny.infer.sampling import generate
from llm_tiny.train.checkpoint import load_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_before_layout"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
# generate(model, tok.encode("ROMEO:"), 16, temperature 0.9, top_k 50, seed 7) at 99849d7.
EXPECTED = [82, 79, 77, 69, 79, 58, 200, 181, 246, 117, 121, 259, 58, 126, 147, 121, 136, 239]
EXPECTED += [137, 246, 26, 58]


def test_a_run_from_before_the_layout_loads_and_generates_the_same_tokens(tmp_path):
    run = shutil.copytree(FIXTURE, tmp_path / "run")
    model, tok, _cfg, _ = load_model(run, torch.device("cpu"))
    assert tok.pattern_name == "gpt4-legacy"  # saved as "gpt4" before the pattern was updated
    idx = torch.tensor([tok.encode("ROMEO:")])
    generator = torch.Generator().manual_seed(7)
    out = generate(model, idx, 16, generator=generator, temperature=0.9, top_k=50, top_p=None)
    assert out[0].tolist() == EXPECTED


def test_fine_tuning_on_documents_with_a_tokenizer_lacking_their_end_token_says_what_works(
    tmp_path, capsys
):
    from llm_tiny.train.loop import main

    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(f'{{"text": "note {i}: to be or not"}}\n' for i in range(50)))
    args = [
        f"--train.init_from={FIXTURE}", f"--data.input=[{notes}]",
        f"--train.out_dir={tmp_path / 'ft'}", "--train.max_iters=2", "--train.eval_iters=1",
        "--train.sample_at_end=false", "--model.block_size=32", "--optim.warmup_iters=1",
    ]  # fmt: skip
    assert main([str(CONFIG), *args]) == 2
    err = capsys.readouterr().err
    assert "its tokenizer has no special token <|endoftext|>" in err
    assert "set data.eot: null" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ft").exists()  # nothing left behind
    assert main([str(CONFIG), *args, "--data.eot=null"]) == 0  # the advice works
