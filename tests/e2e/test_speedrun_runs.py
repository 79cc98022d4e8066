"""benchmarks/speedrun.py as a user runs it, each run a real process: bad input, a smoke run of
both recipes, and the --nanogpt comparison against a stand-in checkout. (The arithmetic and the
recipes are tests/unit/test_speedrun.py.)"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "speedrun.py"


def speedrun_ref():
    spec = importlib.util.spec_from_file_location("nanogpt_ref", SCRIPT.parent / "nanogpt_ref.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_missing_or_unreadable_input_is_one_line_and_exit_2(tmp_path):
    no_flag = run_script()
    assert no_flag.returncode == 2
    assert len(no_flag.stderr.strip().splitlines()) == 1
    assert "--input" in no_flag.stderr

    missing = run_script("--input", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"speedrun.py: error: --input {tmp_path / 'nope.txt'}: not found "
        "(get tinyshakespeare.txt as docs/speedrun.md explains)"
    ]

    folder = run_script("--input", str(tmp_path))
    assert folder.returncode == 2 and "not a file" in folder.stderr

    text = tmp_path / "t.txt"
    text.write_text("hello\n" * 100)
    zero = run_script("--input", str(text), "--repeats", "0")
    assert zero.returncode == 2
    assert zero.stderr.strip() == "speedrun.py: error: --repeats must be >= 1, got 0"

    if not torch.cuda.is_available():  # an error inside a run: the run's one line, exit 2
        cuda = run_script("--input", str(text), "--device", "cuda", "--out-dir", str(tmp_path))
        assert cuda.returncode == 2
        errors = [line for line in cuda.stderr.splitlines() if not line.startswith("[")]
        assert errors == [
            "speedrun.py: error: device 'cuda' asked for, but CUDA is not available here"
        ]

    no_target = run_script("--input", str(text), "--only", "speedrun")
    assert no_target.returncode == 2 and "--target" in no_target.stderr
    assert "Traceback" not in no_target.stderr


def test_smoke_run_of_both_recipes_prints_a_table_and_the_json(tmp_path):
    """Both recipes with their step counts scaled down to a few steps on 30 KB of text."""
    text = tmp_path / "shakespeare.txt"
    text.write_text((ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:30_000])
    out_json = tmp_path / "result.json"
    proc = run_script(
        "--input",
        str(text),
        "--iters-scale",
        "0.004",
        "--threads",
        "1",
        "--out-dir",
        str(tmp_path / "out"),
        "--json-out",
        str(out_json),
        "--repeats",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert json.loads(out_json.read_text()) == result
    assert any(line.startswith("nanogpt_cpu") for line in lines)
    assert any(line.startswith("speedrun_cpu") for line in lines)

    base, fast = result["nanogpt_cpu"], result["speedrun_cpu"]
    # The target is the baseline's own final loss, so the baseline reaches it at its last
    # evaluation; only writing the final checkpoint comes after that.
    assert result["target_loss"] == base["final_val_loss"]
    assert 0 < base["time_to_target_s"] <= base["wall_s"]
    assert base["steps"] == 8  # 2000 x 0.004
    assert base["tokens"] == 8 * 12 * 64
    assert base["threads"] == 1
    assert base["evals"] == 2  # step 0 and the end
    assert fast["evals"] == 1  # the speedrun skips the step-0 evaluation
    for run in (base, fast):
        assert 0 < run["setup_s"] < run["wall_s"]
    if fast["time_to_target_s"] is None:
        assert result["ratio"] is None
    else:
        assert result["ratio"] == pytest.approx(fast["time_to_target_s"] / base["time_to_target_s"])
    for k in (0, 1):
        assert (tmp_path / "out" / "nanogpt_cpu" / f"run{k}" / "metrics.csv").is_file()
    # Two repeats, round-robin: the same losses (deterministic), a time for each, the median.
    assert result["repeats"] == 2
    assert base["final_val_loss_all"] == [base["final_val_loss"]] * 2
    assert fast["final_val_loss_all"] == [fast["final_val_loss"]] * 2
    assert base["time_to_target_s"] == pytest.approx(sum(base["time_to_target_all_s"]) / 2)


FAKE_MODEL = """
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 65
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.vocab_size)
        print("number of parameters: %.2fM" % (self.wte.weight.numel() / 1e6,))

    def forward(self, idx, targets=None):
        logits = self.wte(idx)
        if targets is None:
            return logits[:, [-1], :], None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas)
"""


FAKE_PREPARE = """
import numpy as np
text = open("input.txt").read()
stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
n = len(text)
for name, part in (("train", text[: int(n * 0.9)]), ("val", text[int(n * 0.9) :])):
    np.array([stoi[c] for c in part], dtype=np.uint16).tofile(name + ".bin")
"""


FAKE_TRAIN = """
import ast, os, sys
import numpy as np
import torch
from model import GPT, GPTConfig

cfg = {"out_dir": "out-shakespeare-char", "max_iters": 5000, "learning_rate": 1e-3}
for arg in sys.argv[2:]:  # sys.argv[1] is the config file
    key, value = arg[2:].split("=", 1)
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    cfg[key] = value
assert cfg["device"] == "cpu" and cfg["block_size"] == 64 and cfg["batch_size"] == 12
text = open("data/shakespeare_char/input.txt").read()
data = np.fromfile("data/shakespeare_char/train.bin", dtype=np.uint16).astype(np.int64)
torch.manual_seed(1337)
args = dict(block_size=64, vocab_size=len(set(text)), n_layer=4, n_head=4, n_embd=128)
model = GPT(GPTConfig(**args))
opt = model.configure_optimizers(0.1, 0.1, (0.9, 0.99), "cpu")
for it in range(cfg["max_iters"] + 1):
    ix = torch.randint(len(data) - 65, (12,))
    x = torch.stack([torch.from_numpy(data[i : i + 64]) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1 : i + 65]) for i in ix])
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    print(f"iter {it}: loss {loss.item():.4f}")
os.makedirs(cfg["out_dir"], exist_ok=True)
torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "model_args": args,
            "iter_num": cfg["max_iters"], "best_val_loss": loss.detach(), "config": cfg},
           os.path.join(cfg["out_dir"], "ckpt.pt"))
"""


def fake_nanogpt(root: Path) -> Path:
    """A stand-in nanoGPT checkout (see the NOTE above)."""
    (root / "config").mkdir(parents=True)
    (root / "data" / "shakespeare_char").mkdir(parents=True)
    (root / "config" / "train_shakespeare_char.py").write_text("out_dir = 'out-shakespeare-char'\n")
    (root / "model.py").write_text(FAKE_MODEL)
    (root / "train.py").write_text(FAKE_TRAIN)
    (root / "data" / "shakespeare_char" / "prepare.py").write_text(FAKE_PREPARE)
    return root


def test_nanogpt_comparison_runs_both_whole_processes_and_scores_both_models(tmp_path):
    ref = speedrun_ref()
    text = tmp_path / "shakespeare.txt"
    text.write_text((ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:30_000])
    checkout = fake_nanogpt(tmp_path / "nanoGPT")
    out_json = tmp_path / "result.json"
    args = ["--input", str(text), "--nanogpt", str(checkout), "--iters-scale", "0.004"]
    # A relative --out-dir, as a user types it: nanoGPT runs in its checkout, so the harness
    # must hand it an absolute path (a relative one once wrote ckpt.pt into the checkout).
    args += ["--threads", "1", "--out-dir", "out", "--json-out", str(out_json)]
    proc = run_script(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out_json.read_text()) == result
    theirs, ours = result["nanogpt"], result["speedrun_cpu"]
    assert theirs["wall_s"] > 0 and ours["wall_s"] > 0
    assert result["ratio"] == pytest.approx(ours["wall_s"] / theirs["wall_s"])
    # The documented command, with the steps scaled for the smoke run and our output folder.
    assert theirs["command"].startswith("train.py config/train_shakespeare_char.py --device=cpu")
    assert "--max_iters=8" in theirs["command"] and theirs["iter"] == 8
    assert not (checkout / "out-shakespeare-char").exists()  # nothing written into its outputs
    assert not list(checkout.rglob("ckpt.pt"))  # nor anywhere else in the checkout
    # Both scores against their references: nanoGPT's checkpoint scored by hand, ours by
    # llm_tiny's own evaluation over the same windows.
    whole = text.read_text()
    val = whole[int(len(whole) * 0.9) :]
    n = (len(val) - 1) // 64
    ckpt = torch.load(tmp_path / "out" / "nanogpt" / "run0" / "ckpt.pt", weights_only=True)
    table = ckpt["model"]["wte.weight"]
    stoi = {ch: i for i, ch in enumerate(sorted(set(whole)))}
    ids = [stoi[c] for c in val[: n * 64 + 1]]
    pairs = [(ids[i], ids[i + 1]) for i in range(n * 64)]
    want = -sum(float(table[a].log_softmax(-1)[b]) for a, b in pairs) / len(pairs)
    assert theirs["val_loss"] == pytest.approx(want, rel=1e-5)

    from llm_tiny.eval.loss import evaluate_tokens
    from llm_tiny.train.checkpoint import load_model

    run = tmp_path / "out" / "speedrun_cpu" / "whole0" / "run"
    model, tok, _, _ = load_model(run, "cpu", name="last.pt")
    tokens = np.array(tok.encode_ordinary(val[: n * 64 + 1]))
    ev = evaluate_tokens(model, tokens, n * 64, 64, 16, "cpu")
    assert ours["val_loss"] == pytest.approx(ev["loss"], rel=1e-5)
    assert ours["iter"] == 4  # 900 x 0.004 (the speedrun recipe)
    assert "llm_tiny:" in proc.stdout and "nanoGPT:" in proc.stdout
    assert ref.check_checkout(checkout) == checkout.resolve()


def test_nanogpt_checkout_problems_are_one_line(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello\n" * 100)
    missing = run_script("--input", str(text), "--nanogpt", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.strip().endswith("not a directory (a checkout of karpathy/nanoGPT)")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.py").write_text("")
    half = run_script("--input", str(text), "--nanogpt", str(tmp_path / "half"))
    assert half.returncode == 2 and "model.py is missing" in half.stderr
    both = run_script("--input", str(text), "--nanogpt", str(tmp_path), "--ablation")
    assert both.returncode == 2 and "leave out --only, --ablation" in both.stderr


@pytest.mark.slow  # two training subprocesses; the --nanogpt speedrun test covers the checkout
def test_bench_train_adds_the_nanogpt_variant_in_the_same_run(tmp_path):
    checkout = fake_nanogpt(tmp_path / "nanoGPT")
    bench = ROOT / "benchmarks" / "bench_train.py"
    args = ["--input", str(ROOT / "data" / "tiny.txt"), "--config", "configs/nanogpt_cpu.yaml"]
    args += ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "64"]
    args += ["--batch-size", "2", "--iters", "2", "--warmup", "1", "--variants", "sdpa"]
    args += ["--device", "cpu", "--threads", "1", "--nanogpt", str(checkout)]
    proc = subprocess.run(
        [sys.executable, str(bench), *args], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["variant"] for r in results] == ["sdpa", "nanogpt"]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in results)
    # The stand-in is a bigram table of 256 x 256: it did train, on the same batches.
    assert results[1]["final_loss"] != results[0]["final_loss"]
    without = subprocess.run(
        [sys.executable, str(bench), "--variants", "nanogpt"], capture_output=True, text=True
    )
    assert without.returncode == 2 and "needs --nanogpt DIR" in without.stderr
