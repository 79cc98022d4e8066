"""Pictures of a trained model: the numbers behind them against references, and `viz.main` on
the session's tiny run (the pure functions are tests/unit/test_viz.py; the command as a
subprocess is tests/e2e/test_viz_cli.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import expected, image_size

from llm_tiny import viz
from llm_tiny.train.checkpoint import load_model

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """The session's tiny trained run (tests/conftest.py), copied: the pictures are written
    beside its checkpoint."""
    return shutil.copytree(tiny_run, tmp_path_factory.mktemp("viz") / "run")


def test_token_frequencies_count_the_training_split(run):
    _, _, cfg, ckpt = load_model(run)
    meta = json.loads((Path(cfg.data.data_dir) / "meta.json").read_text())
    counts = viz.token_frequencies(cfg.data.data_dir, 256, ckpt["tokenizer_fingerprint"])
    assert counts is not None and counts.shape == (256,)
    assert counts.sum() == meta["splits"]["train"]["tokens"]
    # Byte-level: the count of a token is the count of its byte in the training text.
    train_bytes = Path(cfg.data.input[0]).read_bytes()[: meta["splits"]["train"]["bytes"]]
    for ch in b"e \n:Z":
        assert counts[ch] == train_bytes.count(bytes([ch]))
    assert viz.token_frequencies(cfg.data.data_dir, 256, "another tokenizer") is None
    assert viz.token_frequencies(run / "nowhere", 256) is None


def test_gradient_stats_against_torch_norms(run):
    model, _, cfg, ckpt = load_model(run)
    x, y = viz.training_batch(cfg, ckpt, Path(cfg.data.data_dir), torch.device("cpu"))
    assert x.shape == (cfg.train.batch_size, cfg.model.block_size)
    model.train()
    _, loss = model(x, y)
    loss.backward()
    stats = viz.gradient_stats(model, weights_only=False)
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    ours = sum(s.norm**2 for s in stats) ** 0.5
    assert ours == pytest.approx(float(total), rel=1e-5)
    names = [s.name for s in stats]
    assert "lm_head.weight" not in names and names[0] == "wte.weight"  # tied: listed once
    qkv = model.blocks[1].attn.qkv.weight.grad
    stat = next(s for s in stats if s.name == "blocks.1.attn.qkv.weight")
    assert stat.mean_abs == pytest.approx(float(qkv.abs().mean()))
    assert stat.max_abs == pytest.approx(float(qkv.abs().max()))
    weights = viz.gradient_stats(model)
    assert all(model.get_parameter(s.name).dim() >= 2 for s in weights)


def test_attention_weights_are_causal_distributions(run):
    model, tokenizer, cfg, _ = load_model(run)
    ids = tokenizer.encode(TEXT)[: cfg.model.block_size]
    maps = viz.attention_for_text(model, ids, torch.device("cpu"))
    assert len(maps) == cfg.model.n_layer
    T = len(ids)
    for m in maps:
        assert m.shape == (cfg.model.n_head, T, T)
        torch.testing.assert_close(m.sum(-1), torch.ones(cfg.model.n_head, T))
        assert torch.all(m.triu(diagonal=1) == 0)  # no query sees a later key
        assert torch.all(m >= 0)
    # Causality, against the model itself on a shorter input: a prefix gets the same weights.
    prefix = viz.attention_for_text(model, ids[:10], torch.device("cpu"))
    for full, short in zip(maps, prefix):
        torch.testing.assert_close(full[:, :10, :10], short)


def test_attention_text_longer_than_the_context_is_cut(run, tmp_path, capsys):
    out = tmp_path / "long.png"
    assert viz.main(["attention", "--ckpt", str(run), "--text", TEXT * 3, "--out", str(out)]) == 0
    assert "drawing the first 32" in capsys.readouterr().err
    assert image_size(out) == expected(viz.attention_layout(2, 2, 32).figsize)


def test_cli_embeddings_tsne(run, tmp_path):
    out = tmp_path / "tsne.png"
    assert viz.main(["embeddings", "--ckpt", str(run), "--method", "tsne", "--out", str(out)]) == 0
    assert image_size(out) == expected(viz.embeddings_figsize())


@pytest.mark.slow  # umap-learn compiles its numba kernels on first use: ~20 s of CPU
def test_cli_embeddings_umap(run, tmp_path, capsys):
    out = tmp_path / "umap.png"
    assert viz.main(["embeddings", "--ckpt", str(run), "--method", "umap", "--out", str(out)]) == 0
    assert image_size(out) == expected(viz.embeddings_figsize())
    assert "wrote" in capsys.readouterr().out


def test_weight_histograms_against_numpy_and_cli(run, capsys):
    model, _, _, _ = load_model(run)
    hists = viz.weight_histograms(model)
    matrices = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
    assert [h["name"] for h in hists] == [n.removesuffix(".weight") for n, _ in matrices]
    for h, (_, p) in zip(hists, matrices):
        w = p.detach().numpy().ravel()
        assert h["counts"].sum() == w.size
        assert h["std"] == pytest.approx(float(w.std()), rel=1e-5)
    assert viz.main(["weights", "--ckpt", str(run)]) == 0
    assert "wte" in capsys.readouterr().out
    assert image_size(run / "weights.png")[0] > 0


def test_dynamics_are_logged_at_log_interval_and_drawn(run, capsys):
    from llm_tiny.train.metrics import read_dynamics

    series = read_dynamics(run / "dynamics.csv")
    model, _, _, _ = load_model(run)
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    assert list(series) == names
    for points in series.values():
        assert [p[0] for p in points] == [2, 4, 6]
        assert all(w > 0 and 0 < r < 1 and g > 0 for _, w, r, g in points)
    assert viz.main(["training", str(run)]) == 0
    assert "update/weight" in capsys.readouterr().out
    assert image_size(run / "dynamics.png")[0] > 0
    assert viz.main(["training", str(run), "--layers"]) == 0
    out = capsys.readouterr().out
    assert "warmup until step" in out and "attn.qkv" in out and "median update/weight" in out
    assert image_size(run / "dynamics_layers.png")[0] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["attention", "--text", "hi", "--layer", "2"], "--layer 2 is out of range"),
        (["attention", "--text", "hi", "--head", "-3"], "--head -3 is out of range"),
        (["attention", "--text", ""], "--text is empty"),
        (["embeddings", "--top", "-1"], "--top must be >= 0"),
        (["grad-flow", "--data-dir", "/nonexistent/data"], "prepared data is missing"),
    ],
)
def test_user_errors_are_one_line(run, capsys, args, message):
    assert viz.main([*args[:1], "--ckpt", str(run), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
