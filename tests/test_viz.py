"""Pictures of a trained model: the numbers behind them against references, and the CLI end to
end on a tiny model trained once for the whole module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from llm_tiny import plots, viz
from llm_tiny.checkpoint import load_model
from llm_tiny.config import config_from_dict
from llm_tiny.train import train

ROOT = Path(__file__).resolve().parents[1]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide byte-level model trained for a few steps on a little Shakespeare."""
    tmp = tmp_path_factory.mktemp("viz")
    corpus = tmp / "corpus.txt"
    corpus.write_text((ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:6000])
    cfg = config_from_dict(
        {
            "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
            "data": {
                "input": [str(corpus)],
                "tokenizer": str(tmp / "tok.json"),
                "vocab_size": 256,
                "data_dir": str(tmp / "data"),
            },
            "optim": {"lr": 3e-3, "warmup_iters": 2},
            "train": {
                "out_dir": str(tmp / "run"),
                "max_iters": 6,
                "batch_size": 8,
                "eval_interval": 3,
                "eval_iters": 2,
                "threads": 1,
                "device": "cpu",
                "sample_at_end": False,
            },
        }
    )
    train(cfg, progress=False, log=lambda _: None)
    return tmp / "run"


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG, read back with matplotlib."""
    assert path.is_file() and path.stat().st_size > 0
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.std() > 0  # not a blank canvas
    return pixels.shape[1], pixels.shape[0]


def expected(figsize: tuple[float, float]) -> tuple[int, int]:
    return round(figsize[0] * plots.DPI), round(figsize[1] * plots.DPI)


def viz_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llm_tiny", "viz", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


# ----------------------------------------------------------------------------- pure functions


def test_token_labels_are_readable():
    assert viz.token_label(b"e") == "e"
    assert viz.token_label(b" the") == "␣the"
    assert viz.token_label(b"\n") == "\\n"
    assert viz.token_label(b"\t") == "\\t"
    assert viz.token_label(b"\xe4") == "\\xe4"  # half of a UTF-8 character
    assert viz.token_label("é".encode()) == "é"
    assert viz.token_label(b"it's") == "it's"


def test_pca_matches_the_covariance_eigenvectors():
    gen = torch.Generator().manual_seed(0)
    # Three directions of very different spread, then a random rotation into 8 dimensions.
    base = torch.randn(200, 3, generator=gen) * torch.tensor([5.0, 2.0, 0.5])
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen))
    x = base @ rotation[:3] + torch.tensor([3.0] * 8)
    coords, explained = viz.pca_2d(x)

    centred = (x - x.mean(0)).double().numpy()
    eigval, eigvec = np.linalg.eigh(np.cov(centred, rowvar=False, bias=True))
    top = eigvec[:, ::-1][:, :2]  # eigh sorts ascending
    reference = centred @ top
    # Each component is defined up to sign.
    for k in range(2):
        ours, ref = coords[:, k].double().numpy(), reference[:, k]
        assert min(np.abs(ours - ref).max(), np.abs(ours + ref).max()) < 1e-4
    np.testing.assert_allclose(explained.numpy(), eigval[::-1][:2] / eigval.sum(), rtol=1e-4)
    assert explained[0] > explained[1]


def test_pca_of_a_single_direction_and_a_single_point():
    line = torch.outer(torch.arange(5.0), torch.tensor([1.0, 2.0, 2.0]))
    coords, explained = viz.pca_2d(line)
    np.testing.assert_allclose(explained.numpy(), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(coords[:, 0].numpy(), [-6.0, -3.0, 0.0, 3.0, 6.0], atol=1e-5)
    coords, explained = viz.pca_2d(torch.ones(1, 4))
    assert coords.shape == (1, 2) and torch.all(coords == 0)


def test_fallback_ranking_puts_merges_first():
    vocab = [bytes([i]) for i in range(256)] + [b"th", b"the", b"e "]
    ranking = viz.fallback_ranking(vocab)
    assert ranking[:3] == [256, 257, 258]
    assert ranking[3:6] == [33, 34, 35]
    assert 10 not in ranking and 32 not in ranking  # newline and space are not "printable" here


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


# ----------------------------------------------------------------------------- the command line


def test_cli_attention_grid_and_single_head(run, tmp_path):
    out = tmp_path / "grid.png"
    result = viz_cli("attention", "--ckpt", str(run), "--text", TEXT[:20], "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    n_tokens = 20  # byte level: one token per character
    assert image_size(out) == expected(viz.attention_figsize(2, 2, n_tokens))

    single = tmp_path / "head.png"
    assert viz.main(["attention", "--ckpt", str(run), "--text", TEXT[:20], "--head", "1",
                     "--layer", "0", "--out", str(single)]) == 0  # fmt: skip
    assert image_size(single) == expected(viz.attention_figsize(1, 1, n_tokens))

    layer = tmp_path / "layer.png"
    assert viz.main(["attention", "--ckpt", str(run), "--text", "hear me", "--layer", "-1",
                     "--out", str(layer)]) == 0  # fmt: skip
    assert image_size(layer) == expected(viz.attention_figsize(1, 2, 7))


def test_attention_text_longer_than_the_context_is_cut(run, tmp_path, capsys):
    out = tmp_path / "long.png"
    assert viz.main(["attention", "--ckpt", str(run), "--text", TEXT * 3, "--out", str(out)]) == 0
    assert "drawing the first 32" in capsys.readouterr().err
    assert image_size(out) == expected(viz.attention_figsize(2, 2, 32))


def test_cli_embeddings_with_and_without_the_data(run, tmp_path, capsys):
    result = viz_cli("embeddings", "--ckpt", str(run), "--top", "10")
    assert result.returncode == 0, result.stderr
    default = run / "embeddings.png"
    assert image_size(default) == expected(viz.embeddings_figsize())

    missing = tmp_path / "fallback.png"
    args = ["embeddings", "--ckpt", str(run / "best.pt"), "--data-dir", str(tmp_path / "gone")]
    assert viz.main([*args, "--out", str(missing)]) == 0
    assert "no token counts" in capsys.readouterr().err
    assert image_size(missing) == expected(viz.embeddings_figsize())


def test_cli_grad_flow(run):
    result = viz_cli("grad-flow", "--ckpt", str(run))
    assert result.returncode == 0, result.stderr
    assert "wte = lm_head" in result.stdout and "1.mlp.proj" in result.stdout
    model, _, _, _ = load_model(run)
    n_weights = sum(1 for p in model.parameters() if p.dim() >= 2)  # a tied matrix counts once
    assert image_size(run / "grad_flow.png") == expected(viz.grad_flow_figsize(n_weights))


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


def test_cli_error_exits_2_without_traceback(tmp_path):
    result = viz_cli("attention", "--ckpt", str(tmp_path / "no_run"), "--text", "x")
    assert result.returncode == 2
    assert "not found" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_picture_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        viz.main(["pictures"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and len(err.strip().splitlines()) == 1
