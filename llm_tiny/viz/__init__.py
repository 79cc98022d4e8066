"""Pictures of a trained model: `python -m llm_tiny viz PICTURE ...`.

Each picture is computed from a real checkpoint (a run directory means its `best.pt`) or run,
and saved as a PNG, by default inside the run directory; one module each:

- `attention`: the softmax attention weights of every head for a text, as heatmaps.
- `embeddings`: the token embedding matrix in two dimensions (PCA, or t-SNE with
  `--method tsne`, or UMAP with `--method umap`), the most frequent tokens of the training
  data labelled.
- `gradients` (`grad-flow`): mean and max |gradient| of every weight matrix for one real
  training batch, on a log scale.
- `weights`: a histogram of the entries of every weight matrix.
- `training`: weight norms, update-to-weight ratios and gradient norms over a run, from the
  `dynamics.csv` that `train.log_dynamics: true` writes; `--layers`: layer by layer, over the
  warmup and the decay.

The numbers behind each picture come from pure functions (`token_label`, `pca_2d`, `tsne_2d`,
`umap_2d`, `token_frequencies`, `gradient_stats`, `weight_histograms`, `dynamics.measure`,
`training.phase_summary`) that the tests
check against references, and so does its layout (`attention_layout`: readable labels within
a bounded size); the `plot_*` functions only draw, and save through `plots.save_figure` (an
image is exactly figsize x DPI).
"""

from __future__ import annotations

import sys

from llm_tiny.errors import ArgumentParser, add_ckpt_arg, add_device_arg, run_cli
from llm_tiny.viz.attention import (
    MAX_ATTENTION_TOKENS,
    AttentionLayout,
    attention_command,
    attention_figure,
    attention_for_text,
    attention_layout,
)
from llm_tiny.viz.embeddings import (
    embeddings_command,
    embeddings_figsize,
    fallback_ranking,
    pca_2d,
    plot_embeddings,
    token_frequencies,
    tsne_2d,
    umap_2d,
)
from llm_tiny.viz.gradients import (
    GradStat,
    grad_flow_command,
    grad_flow_figsize,
    gradient_stats,
    plot_grad_flow,
    training_batch,
)
from llm_tiny.viz.names import run_dir, run_name, token_label
from llm_tiny.viz.training import (
    layer_and_group,
    lr_phases,
    phase_summary,
    plot_dynamics,
    plot_layers,
    training_command,
)
from llm_tiny.viz.weights import plot_weight_histograms, weight_histograms, weights_command


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="llm_tiny viz",
        description="Pictures of a trained model (PNG): attention maps, token embeddings, "
        "gradient flow, weight histograms, training dynamics.",
    )
    sub = p.add_subparsers(dest="picture", required=True, metavar="PICTURE")

    def common(q: ArgumentParser, default_name: str) -> None:
        add_ckpt_arg(q)
        q.add_argument("--out", help=f"output PNG (default: RUN/{default_name})")
        q.set_defaults(default_name=default_name)

    a = sub.add_parser("attention", help="heatmaps of the attention weights for a text")
    common(a, "attention.png")
    a.add_argument("--text", required=True, help="the text to read, e.g. 'Max(3,7,5)=7'")
    a.add_argument("--layer", type=int, help="only this layer (default: every layer)")
    a.add_argument(
        "--head", type=int, help="one large heatmap of this head (of --layer, default the last)"
    )
    add_device_arg(a)
    a.set_defaults(command=attention_command)

    e = sub.add_parser("embeddings", help="the token embeddings in 2-D (PCA, t-SNE or UMAP)")
    common(e, "embeddings.png")
    e.add_argument(
        "--method", choices=("pca", "tsne", "umap"), default="pca", help="projection (default pca)"
    )
    e.add_argument("--top", type=int, default=30, help="label this many tokens (default 30)")
    e.add_argument("--data-dir", help="prepared data to count tokens in (default: the run's)")
    e.set_defaults(command=embeddings_command)

    g = sub.add_parser("grad-flow", help="gradient size per layer for one training batch")
    common(g, "grad_flow.png")
    g.add_argument("--data-dir", help="prepared data to take the batch from (default: the run's)")
    add_device_arg(g)
    g.set_defaults(command=grad_flow_command)

    w = sub.add_parser("weights", help="histograms of every weight matrix")
    common(w, "weights.png")
    w.set_defaults(command=weights_command)

    t = sub.add_parser(
        "training", help="weight norms and update ratios over a run (train.log_dynamics)"
    )
    t.add_argument("run", help="run directory trained with --train.log_dynamics=true")
    t.add_argument(
        "--out",
        help="output PNG (default: RUN/dynamics.png, with --layers RUN/dynamics_layers.png)",
    )
    t.add_argument(
        "--layers", action="store_true",
        help="update ratios and gradient norms layer by layer, warmup and decay shaded",
    )  # fmt: skip
    t.set_defaults(command=training_command, default_name="dynamics.png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        if args.picture == "training":
            args.ckpt = args.run
            if args.layers:
                args.default_name = "dynamics_layers.png"
        args.out = args.out or run_dir(args.ckpt) / args.default_name
        path = args.command(args)
        print(f"wrote {path}")
        return 0

    return run_cli(run, "llm_tiny viz")


if __name__ == "__main__":
    sys.exit(main())
