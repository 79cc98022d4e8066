"""Pictures of a model: the pure functions behind them against references, layouts and figures
(on a trained run: tests/integration/test_viz_run.py; the command: tests/e2e/test_viz_cli.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import expected, image_size

from llm_tiny import plots, viz
from llm_tiny.errors import UserError

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


@pytest.mark.parametrize(
    ("layers", "heads"), [(1, 1), (1, 2), (1, 4), (2, 2), (2, 4), (4, 4), (1, 6)]
)
@pytest.mark.parametrize("n_tokens", [1, 7, 12, 20, 32, 58, 64])
def test_attention_layout_is_readable_and_bounded(layers, heads, n_tokens):
    layout = viz.attention_layout(layers, heads, n_tokens)
    width, height = expected(layout.figsize)
    # The old grid of 4 heads for a long text was 2460 x 680 pixels with 4-point labels.
    assert width <= 1600 and height <= 1600
    assert layout.rows * layout.cols >= layers * heads  # room for every heatmap
    assert layout.rows % layers == 0 and layout.cols <= heads
    assert layout.fontsize >= (10 if layers * heads == 1 else 8)
    # The labelled tokens fit along a heatmap's side at that size (1.3 x the font per label).
    labelled = -(-n_tokens // layout.every)
    assert labelled * 1.3 * layout.fontsize / 72 <= layout.side + 1e-6
    if layout.every > 1:  # tokens go unlabelled only when the heatmaps cannot grow
        largest = 10.0 if layers * heads == 1 else 6.0
        assert layout.side >= largest - 1e-3 or max(layout.figsize) >= 15.8


def test_attention_layout_wraps_heads_rather_than_shrinking_them():
    wide = viz.attention_layout(1, 4, 32)  # the Shakespeare layer-0 picture of the docs
    assert (wide.rows, wide.cols, wide.every) == (2, 2, 1)
    short = viz.attention_layout(2, 4, 12)  # the digits grid: short enough for one row per layer
    assert (short.rows, short.cols, short.every) == (2, 4, 1)


def test_attention_figure_has_axis_titles_a_colour_bar_and_readable_ticks():
    T, n_head = 64, 3
    gen = torch.Generator().manual_seed(0)
    causal = torch.full((T, T), float("-inf")).triu(1)
    maps = [torch.softmax(torch.randn(n_head, T, T, generator=gen) + causal, -1)]
    fig = viz.attention_figure(maps, [f"t{i}" for i in range(T)], layers=[0], title="x")
    try:
        layout = viz.attention_layout(1, n_head, T)
        assert tuple(fig.get_size_inches()) == pytest.approx(layout.figsize)
        heatmaps = [ax for ax in fig.axes if ax.get_images()]
        assert len(heatmaps) == n_head  # a wrapped layer leaves its spare cell blank
        for ax in heatmaps:
            assert (
                ax.get_xlabel().startswith("key token")
                and f"1 in {layout.every}" in ax.get_xlabel()
            )
            assert ax.get_ylabel().startswith("query token")
            ticks = ax.get_xticklabels()
            assert [t.get_text() for t in ticks] == [f"t{i}" for i in range(0, T, layout.every)]
            assert all(t.get_fontsize() >= 8 for t in [*ticks, *ax.get_yticklabels()])
        colour_bars = [ax for ax in fig.axes if "attention weight" in ax.get_ylabel()]
        assert len(colour_bars) == 1
    finally:
        plots.pyplot().close(fig)


# ----------------------------------------------------------------------------- the command line


def test_tsne_keeps_clusters_apart_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 16, generator=g) * 0.1
    b = torch.randn(20, 16, generator=g) * 0.1 + 5.0
    coords = viz.tsne_2d(torch.cat([a, b]), seed=1)
    assert coords.shape == (40, 2)
    ca, cb = coords[:20], coords[20:]
    gap = (ca.mean(0) - cb.mean(0)).norm()
    assert gap > 3 * max(ca.std(0).norm(), cb.std(0).norm())  # two clusters stay two clusters
    assert torch.equal(coords, viz.tsne_2d(torch.cat([a, b]), seed=1))


@pytest.mark.slow  # umap-learn compiles its numba kernels on first use: ~20 s of CPU
def test_umap_keeps_clusters_apart_and_is_seeded():
    """Three tight clusters far apart in 16-D: UMAP (umap-learn itself) keeps each point's
    nearest neighbour in its own cluster and the clusters apart; the same seed, the same
    picture."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 10
    x = torch.cat([c + 0.1 * torch.randn(15, 16, generator=g) for c in centres])
    coords = viz.umap_2d(x, seed=1)
    assert coords.shape == (45, 2)
    cluster = torch.arange(45) // 15
    dist = torch.cdist(coords, coords) + torch.eye(45) * 1e9
    assert torch.equal(cluster[dist.argmin(1)], cluster)
    means = torch.stack([coords[cluster == k].mean(0) for k in range(3)])
    spread = max(float(coords[cluster == k].std(0).norm()) for k in range(3))
    gaps = torch.pdist(means)
    assert float(gaps.min()) > 3 * spread  # three clusters stay three clusters
    assert torch.equal(coords, viz.umap_2d(x, seed=1))


def test_umap_without_the_package_or_with_too_few_tokens_is_one_line(monkeypatch):
    with pytest.raises(UserError, match=r"^UMAP needs at least 4 tokens, got 3; use --method pca"):
        viz.umap_2d(torch.randn(3, 8))
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    with pytest.raises(UserError, match=r"^--method umap needs umap-learn: pip install umap-learn"):
        viz.umap_2d(torch.randn(10, 8))


def test_update_ratio_of_one_real_adamw_step():
    from llm_tiny.train.dynamics import measure, snapshot

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    w0 = [model[0].weight.detach().clone(), model[1].weight.detach().clone()]
    before = snapshot(model)
    model(torch.randn(5, 4)).pow(2).mean().backward()
    opt.step()
    rows = measure(model, before)
    assert [r[0] for r in rows] == ["0.weight", "1.weight"]
    after = (model[0].weight.detach(), model[1].weight.detach())
    for (_, norm, ratio, grad), old, new, lin in zip(rows, w0, after, model):
        assert norm == pytest.approx(float(new.norm()))
        assert ratio == pytest.approx(float((new - old).norm() / old.norm()), rel=1e-6)
        assert grad == pytest.approx(float(lin.weight.grad.norm()), rel=1e-6)
    model[0].weight.grad = None  # a matrix without a gradient (frozen): nan, not an error
    assert math.isnan(measure(model, before)[0][3])


def test_layer_names_phases_and_the_phase_summary():
    assert viz.layer_and_group("blocks.11.mlp.proj.weight") == (11, "mlp.proj")
    assert viz.layer_and_group("lm_head.weight") == (None, "lm_head")
    # warmup 3 steps, hold 2, decay: the phases of a wsd curve; a cosine decays at once.
    wsd = [(1, 0.3), (2, 0.6), (3, 1.0), (4, 1.0), (5, 1.0), (6, 0.5), (7, 0.1)]
    assert viz.lr_phases(wsd) == (3, 5)
    assert viz.lr_phases([(1, 0.5), (2, 1.0), (3, 0.9)]) == (2, 2)
    series = {
        "blocks.0.attn.qkv.weight": [(1, 1.0, 1e-2, 3.0), (4, 1.0, 2e-3, 1.0), (7, 1.0, 1e-4, 0.5)],
        "blocks.1.attn.qkv.weight": [(1, 1.0, 3e-2, 5.0), (4, 1.0, 4e-3, 2.0), (7, 1.0, 3e-4, 0.7)],
        "wte.weight": [(1, 1.0, 1e-3, 1.0), (7, 1.0, 1e-5, 0.1)],
    }
    summary = viz.phase_summary(series, *viz.lr_phases(wsd))
    assert summary["attn.qkv"] == {
        "warmup": ((1e-2 + 3e-2) / 2, 4.0), "peak": ((2e-3 + 4e-3) / 2, 1.5),
        "decay": ((1e-4 + 3e-4) / 2, 0.6),
    }  # fmt: skip
    assert summary["wte"] == {"warmup": (1e-3, 1.0), "decay": (1e-5, 0.1)}  # no peak row logged


def test_training_picture_without_a_dynamics_log_is_one_line(tmp_path, capsys):
    assert viz.main(["training", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--train.log_dynamics=true" in err and len(err.strip().splitlines()) == 1


def test_unknown_picture_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        viz.main(["pictures"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- loss curves (plots)


def test_log_scale_rule():
    assert plots.log_scale([5.5, 0.3, 0.01])  # the digit task: 5.5 down to 0.01
    assert not plots.log_scale([6.3, 3.3, 2.9])  # Shakespeare: well within two decades
    assert not plots.log_scale([5.0, 0.05])  # exactly two orders of magnitude: still linear
    assert plots.log_scale([5.0, 0.049])
    assert not plots.log_scale([4.0, 0.0, float("nan"), 0.5])  # zeros and nan are not in the span
    assert not plots.log_scale([]) and not plots.log_scale([0.0])
    assert plots.log_scale([6.0, 1.6], "on") and not plots.log_scale([5.5, 0.001], "off")
    with pytest.raises(ValueError, match="log_y"):
        plots.log_scale([1.0], "yes")


def write_losses(run_dir: Path, losses: list[float]) -> Path:
    from llm_tiny.train.metrics import MetricsLog

    run_dir.mkdir(parents=True)
    log = MetricsLog(run_dir)
    for step, loss in enumerate(losses):
        log.write(step, tokens=100 * step, train_loss=loss, val_loss=loss, val_bpb=loss / 0.7)
    log.close()
    return run_dir


@pytest.mark.parametrize(
    ("losses", "log_y", "scale"),
    [
        ([5.5, 1.0, 0.3, 0.02, 0.004], "auto", "log"),
        ([6.3, 4.0, 3.3], "auto", "linear"),
        ([6.3, 4.0, 3.3], "on", "log"),
        ([5.5, 1.0, 0.004], "off", "linear"),
    ],
)
def test_loss_figure_sets_the_y_scale_and_says_so(tmp_path, losses, log_y, scale):
    run = write_losses(tmp_path / "run", losses)
    fig = plots.loss_figure([run], log_y)
    try:
        ax_step, ax_tok, ax_lr, ax_bpb = fig.axes
        for ax in (ax_step, ax_tok, ax_bpb):
            assert ax.get_yscale() == scale
            assert ("log scale" in ax.get_ylabel()) == (scale == "log")
        assert ax_lr.get_yscale() == "linear"
    finally:
        plots.pyplot().close(fig)


def test_plot_cli_log_y_flag(tmp_path, capsys):
    run = write_losses(tmp_path / "run", [5.5, 0.3, 0.001])
    assert plots.main([str(run), "--log-y", "off"]) == 0
    assert image_size(run / "loss.png") == (1200, 800)
    with pytest.raises(SystemExit) as exit_info:
        plots.main([str(run), "--log-y", "maybe"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
