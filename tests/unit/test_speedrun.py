"""benchmarks/speedrun.py: the time-to-target arithmetic, the recipes and the reference's
window loss (runs of the script are tests/e2e/test_speedrun_runs.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llm_tiny.config import config_from_dict, load_config, read_yaml, with_dotted

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "speedrun.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("speedrun", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


speedrun = _load_script()


# ----------------------------------------------------------------------------- arithmetic


def test_time_to_target_is_the_first_evaluation_at_or_below_it():
    evals = [(0, 1.5, 5.5), (200, 10.0, 2.0), (400, 19.0, 1.874), (600, 28.0, 1.85)]
    assert speedrun.time_to_target(evals, 1.874, setup_s=2.5) == 21.5  # equal counts
    assert speedrun.time_to_target(evals, 1.9, setup_s=0.0) == 19.0
    assert speedrun.time_to_target(evals, 1.8) is None


def test_read_evals_keeps_only_the_evaluation_rows(tmp_path):
    # The layout llm_tiny.train.metrics writes (docs/training.md): empty cells where not measured.
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "step,tokens,train_loss,val_loss,val_ppl,val_bpb,lr,grad_norm,tokens_per_s,elapsed_s\n"
        "0,0,,5.5,244.7,7.9,,,,0.75\n"
        "10,7680,3.1,,,,0.001,1.2,9000.0,1.5\n"
        "20,15360,2.9,2.8,16.4,4.0,0.001,1.1,9100.0,3.25\n"
    )
    assert speedrun.read_evals(csv) == [(0, 0.75, 5.5), (20, 3.25, 2.8)]


def test_scale_iters_shrinks_every_step_count_and_keeps_the_schedule_valid():
    raw = {
        "train": {"max_iters": 2000, "eval_interval": 2000, "ckpt_interval": 500},
        "optim": {"warmup_iters": 100, "lr_decay_iters": 2000},
    }
    small = speedrun.scale_iters(raw, 0.002)
    assert small["train"] == {"max_iters": 4, "eval_interval": 4, "ckpt_interval": 1}
    assert small["optim"] == {"warmup_iters": 1, "lr_decay_iters": 4}
    assert raw["train"]["max_iters"] == 2000  # the input is not modified
    config_from_dict(small)  # still a valid config


def test_table_keeps_its_columns_when_a_run_misses_the_target():
    hit = {
        "time_to_target_s": 90.0,
        "final_val_loss": 1.87,
        "wall_s": 90.0,
        "steps": 2000,
        "tokens": 1_536_000,
    }
    miss = {**hit, "time_to_target_s": None, "final_val_loss": 1.88, "wall_s": 40.0}
    lines = speedrun.table([("base", hit), ("miss", miss)], base_time=90.0).splitlines()
    assert len({len(line) for line in lines}) == 1  # every line as wide as the header
    assert lines[2].split()[1:] == ["90.0", "1.8700", "90.0", "2000", "1,536,000", "1.00x"]
    assert lines[3].split()[1:] == ["-", "1.8800", "40.0", "2000", "1,536,000", "-"]


# ----------------------------------------------------------------------------- the recipes


def test_nanogpt_cpu_is_nanogpts_documented_cpu_recipe():
    # nanoGPT README's CPU command for config/train_shakespeare_char.py, and that file's and
    # train.py's values for everything the command leaves alone.
    cfg = load_config(ROOT / "configs" / "nanogpt_cpu.yaml")
    m, o, t = cfg.model, cfg.optim, cfg.train
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (4, 4, 128, 64, 0.0)
    assert (m.pos_emb, m.norm, m.mlp, m.tie_weights, m.bias) == (
        "learned",
        "layernorm",
        "gelu",
        True,
        False,
    )
    assert (t.batch_size, t.grad_accum_steps, t.max_iters) == (12, 1, 2000)
    assert (o.lr, o.min_lr, o.warmup_iters, cfg.lr_decay_iters, o.schedule) == (
        1e-3,
        1e-4,
        100,
        2000,
        "cosine",
    )
    assert (o.weight_decay, o.beta1, o.beta2, o.grad_clip) == (0.1, 0.9, 0.99, 1.0)
    assert (t.dtype, t.compile, t.device) == ("float32", False, "cpu")
    assert (cfg.data.vocab_size, cfg.data.val_fraction) == (256, 0.1)
    assert t.eval_iters is None  # the final loss is over the full validation split


def test_the_ablation_ladder_climbs_from_the_baseline_to_the_speedrun_recipe():
    base = read_yaml(ROOT / "configs" / "nanogpt_cpu.yaml")
    top = with_dotted(base, speedrun.ladder_overrides(len(speedrun.LADDER) - 1))
    recipe = load_config(ROOT / "configs" / "speedrun_cpu.yaml")
    climbed = config_from_dict(top)
    # Paths differ (each recipe has its own out/ folder); everything that is trained does not.
    for section in ("model", "optim", "train"):
        a, b = getattr(climbed, section), getattr(recipe, section)
        if section == "train":
            a, b = (
                a.__class__(**{**vars(a), "out_dir": ""}),
                b.__class__(**{**vars(b), "out_dir": ""}),
            )
        assert a == b, section
    assert climbed.data.vocab_size == recipe.data.vocab_size
    assert climbed.data.val_fraction == recipe.data.val_fraction
    assert speedrun.LADDER[0][1] == {}  # the first rung is the baseline itself
    for _, changes in speedrun.LADDER[1:]:
        assert changes, "every rung adds a lever"


# ----------------------------------------------------------------------------- the command


# ----------------------------------------------------------------------------- --nanogpt
# NOTE: no nanoGPT checkout is available to these tests. `fake_nanogpt` writes a stand-in
# with nanoGPT's file layout, command line and checkpoint keys around a bigram model: a
# fixture for the harness's process handling and scoring only, not a reference for nanoGPT's
# speed or loss.


def test_window_loss_scores_non_overlapping_windows_against_a_written_out_sum():
    ref = speedrun_ref()
    torch.manual_seed(0)
    table = torch.randn(5, 5)

    def bigram(x, y):
        logits = table[x]
        return logits, torch.nn.functional.cross_entropy(logits.view(-1, 5), y.view(-1))

    ids = torch.randint(0, 5, (2 * 4 + 3,)).tolist()  # two windows of 4, and a tail unused
    got = ref.window_loss(bigram, ids, block=4, batch=1)
    pairs = [(ids[i], ids[i + 1]) for i in range(8)]  # every position of the two windows
    want = -sum(float(table[a].log_softmax(-1)[b]) for a, b in pairs) / 8
    assert got == pytest.approx(want, rel=1e-6)


def speedrun_ref():
    spec = importlib.util.spec_from_file_location("nanogpt_ref", SCRIPT.parent / "nanogpt_ref.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
