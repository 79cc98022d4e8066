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
