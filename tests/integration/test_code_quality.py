"""The parse share end to end on a tiny model: trained on a folder of small functions (one
file each), its samples of ``def `` parse; an untrained model's do not; and the engine's
batching changes no sample."""

from __future__ import annotations

import torch

from llm_tiny.config import config_from_dict
from llm_tiny.eval.syntax import PROMPT, parse_share, sample_functions
from llm_tiny.infer.prompt import eot_ids
from llm_tiny.model import TinyGPT
from llm_tiny.train.checkpoint import load_model
from llm_tiny.train.loop import train


def test_a_model_trained_on_functions_samples_functions_that_parse(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    for i in range(40):
        text = f"import m{i % 3}\n\n\ndef f{i % 10}(x):\n    return x + {i % 7}\n"
        (code / f"m{i:02}.py").write_text(text)
    cfg = config_from_dict(
        {
            "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 48},
            "data": {"input": [str(code)], "vocab_size": 270, "val_fraction": 0.1, "workers": 1},
            "optim": {"lr": 1e-2, "min_lr": 1e-3, "warmup_iters": 5},
            "train": {
                "out_dir": str(tmp_path / "run"), "max_iters": 80, "batch_size": 16,
                "eval_interval": 80, "eval_iters": 1, "threads": 1, "device": "cpu",
                "sample_at_end": False,
            },
        }
    )  # fmt: skip
    train(cfg, progress=False, log=lambda _: None)
    model, tok, cfg, _ = load_model(tmp_path / "run")
    stops = tuple(eot_ids(tok, cfg))
    assert stops  # a run of documents: the end-of-text token ends a sample

    samples = sample_functions(model, tok, 24, stop_tokens=stops, max_new_tokens=24, seed=3)
    counts = parse_share(samples)
    assert all(s.text.startswith(PROMPT) for s in samples)
    assert counts["parse_share"] >= 0.8, [s.text for s in samples]
    one_by_one = sample_functions(
        model, tok, 24, stop_tokens=stops, max_new_tokens=24, seed=3, max_batch=1
    )
    assert [s.text for s in one_by_one] == [s.text for s in samples]

    torch.manual_seed(0)
    untrained = TinyGPT(cfg.model).eval()
    fresh = parse_share(sample_functions(untrained, tok, 24, stop_tokens=stops, seed=3))
    assert fresh["parse_share"] <= 0.1
