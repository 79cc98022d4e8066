"""The main job end to end through the real command line: train -> eval -> sample -> plot."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]


def llm(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_tiny", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny BPE model trained through `python -m llm_tiny train` (about 10 s)."""
    tmp = tmp_path_factory.mktemp("cli")
    corpus = tmp / "corpus.txt"
    corpus.write_text((ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:40_000])
    config = {
        "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "data": {
            "input": [str(corpus)],
            "tokenizer": str(tmp / "tok" / "bpe.json"),
            "vocab_size": 300,
            "data_dir": str(tmp / "data"),
        },
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 5},
        "train": {
            "out_dir": str(tmp / "run"),
            "max_iters": 40,
            "batch_size": 8,
            "eval_interval": 20,
            "ckpt_interval": 20,
            "threads": 1,
            "device": "cpu",
        },
        "sample": {"prompt": "KING:", "max_new_tokens": 30},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    result = llm("train", str(path))
    assert result.returncode == 0, result.stderr
    assert "sample:\nKING:" in result.stdout
    assert "loss.png" in result.stdout.splitlines()[-1]  # ends by saying where things are
    return tmp / "run"


def test_training_writes_the_run(run_dir):
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.csv", "loss.png"):
        assert (run_dir / name).stat().st_size > 0, name
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    losses = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert losses[-1] < losses[0]


def test_eval_of_own_val_split_equals_the_logged_figure(run_dir):
    result = llm("eval", "--ckpt", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r["val_loss"]]
    best = min(rows, key=lambda r: float(r["val_loss"]))  # best.pt holds the best val loss
    assert measured["loss"] == pytest.approx(float(best["val_loss"]), rel=1e-5)
    assert measured["bpb"] == pytest.approx(float(best["val_bpb"]), rel=1e-5)
    assert measured["ppl"] == pytest.approx(float(best["val_ppl"]), rel=1e-5)


def test_eval_of_a_text_file_with_stride(run_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text((ROOT / "data" / "tiny.txt").read_text()[-5000:])
    plain = json.loads(llm("eval", "--ckpt", str(run_dir), "--input", str(text), "--json").stdout)
    strided = llm("eval", "--ckpt", str(run_dir), "--input", str(text), "--stride", "8", "--json")
    strided = json.loads(strided.stdout)
    assert plain["tokens"] == strided["tokens"]  # every token but the first, scored once
    assert strided["loss"] != plain["loss"]  # ...but with other contexts
    full = llm("eval", "--ckpt", str(run_dir), "--input", str(text), "--stride", "32", "--json")
    assert json.loads(full.stdout) == plain  # stride = block_size: non-overlapping windows
    human = llm("eval", "--ckpt", str(run_dir), "--input", str(text))
    assert "bits per byte" in human.stdout


def test_sampling_is_seeded_and_streaming_matches(run_dir):
    base = ("sample", "--ckpt", str(run_dir), "--max-new-tokens", "40", "--prompt", "ROMEO:")
    a = llm(*base, "--seed", "7")
    b = llm(*base, "--seed", "7")
    c = llm(*base, "--seed", "8")
    streamed = llm(*base, "--seed", "7", "--stream")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout == streamed.stdout
    assert a.stdout != c.stdout
    assert a.stdout.startswith("ROMEO:")


def test_sampling_options(run_dir, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("First Citizen:\n")
    two = llm(
        "sample", "--ckpt", str(run_dir / "last.pt"), "--prompt-file", str(prompt),
        "--num-samples", "2", "--top-k", "5", "--temperature", "0.7", "--max-new-tokens", "10",
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("First Citizen:") == 2 and "sample 2" in two.stdout
    greedy = [
        llm("sample", "--ckpt", str(run_dir), "--temperature", "0", "--seed", s) for s in "12"
    ]
    assert greedy[0].stdout == greedy[1].stdout  # temperature 0 ignores the seed
    beam = llm("sample", "--ckpt", str(run_dir), "--beam-width", "3", "--max-new-tokens", "8")
    assert beam.returncode == 0, beam.stderr


def test_long_prompt_is_truncated_with_a_notice(run_dir):
    long_prompt = (ROOT / "data" / "tiny.txt").read_text()[:2000]
    result = llm("sample", "--ckpt", str(run_dir), "--prompt", long_prompt, "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert "longer than the context (32)" in result.stderr


def test_plot_compares_runs(run_dir, tmp_path):
    out = tmp_path / "cmp.png"
    result = llm("plot", str(run_dir), str(run_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[:2] == (800, 1200)


def bad_checkpoint(run_dir: Path, tmp_path: Path) -> Path:
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    ckpt["version"] = 999
    path = tmp_path / "future.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sample", "--ckpt", "{tmp}/missing"), "no checkpoint here"),
        (("sample", "--ckpt", "{future}"), "version"),
        (("sample", "--ckpt", "{run}", "--temperature", "-1"), "--temperature must be >= 0"),
        (("sample", "--ckpt", "{run}", "--top-k", "0"), "--top-k must be >= 1"),
        (("sample", "--ckpt", "{run}", "--top-p", "1.5"), "--top-p must be in (0, 1]"),
        (("sample", "--ckpt", "{run}", "--prompt-file", "{tmp}/none.txt"), "prompt file not found"),
        (("sample", "--ckpt", "{run}", "--max-new-tokens", "x"), "invalid int value"),
        (("sample", "--ckpt", "{run}", "--beam-width", "2", "--num-samples", "3"), "deterministic"),
        (("eval", "--ckpt", "{tmp}/missing"), "missing"),
        (("eval", "--ckpt", "{run}", "--input", "{tmp}/none.txt"), "input file not found"),
        (("eval", "--ckpt", "{run}", "--stride", "0"), "--stride must be in [1, block_size"),
        (("plot", "{tmp}"), "no metrics.csv here"),
    ],
)
def test_errors_are_one_line_exit_2(run_dir, tmp_path, args, message):
    future = bad_checkpoint(run_dir, tmp_path)
    args = [a.format(tmp=tmp_path, run=run_dir, future=future) for a in args]
    result = llm(*args)
    assert result.returncode == 2, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_make_sample_without_a_run_says_train_first(tmp_path):
    result = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "sample", f"RUN={tmp_path / 'out' / 'tiny'}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "make train" in result.stderr


def test_each_run_owns_its_tokenizer_and_data_and_eval_notices_foreign_data(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "model": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
                "data": {"input": [str(ROOT / "data" / "tiny.txt")], "vocab_size": 260},
                "optim": {"warmup_iters": 2},
                "train": {"out_dir": str(tmp_path / "a"), "max_iters": 4, "eval_iters": 2},
            }
        )
    )
    mine = tmp_path / "mine.txt"
    mine.write_text("To be, or not to be, that is the question.\n" * 200)
    assert llm("train", str(base)).returncode == 0
    a = tmp_path / "a"
    assert (a / "tok" / "bpe.json").is_file() and (a / "data" / "meta.json").is_file()
    before = {p.name: p.stat().st_mtime_ns for p in (a / "data").iterdir()}
    score = json.loads(llm("eval", "--ckpt", str(a), "--json").stdout)

    # Training on other text into another directory touches nothing of the first run.
    other = llm("train", str(base), f"--data.input=[{mine}]", f"--train.out_dir={tmp_path / 'b'}")
    assert other.returncode == 0, other.stderr
    assert (tmp_path / "b" / "tok" / "bpe.json").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in (a / "data").iterdir()} == before
    assert json.loads(llm("eval", "--ckpt", str(a), "--json").stdout) == score

    # Shared on purpose, then rewritten with other text: eval says so instead of scoring it.
    shared = [f"--data.data_dir={a / 'data'}", f"--data.tokenizer={a / 'tok' / 'bpe.json'}"]
    out_c = f"--train.out_dir={tmp_path / 'c'}"
    assert llm("train", str(base), f"--data.input=[{mine}]", *shared, out_c).returncode == 0
    stale = llm("eval", "--ckpt", str(a))
    assert stale.returncode == 2 and len(stale.stderr.strip().splitlines()) == 1
    assert "now holds data prepared from other text" in stale.stderr


def test_make_train_data_trains_on_your_own_text(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text((ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:30_000])
    quick = [
        f"--train.out_dir={tmp_path / 'run'}",  # instead of out/mine, to stay out of the clone
        "--train.max_iters=4", "--train.eval_iters=2", "--train.sample_at_end=false",
        "--model.n_layer=1", "--data.vocab_size=300", "--optim.warmup_iters=2",
    ]  # fmt: skip
    made = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "train", f"DATA={mine}", f"ARGS={' '.join(quick)}"],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    meta = json.loads((tmp_path / "run" / "data" / "meta.json").read_text())
    assert meta["inputs"] == [{"path": str(mine), "bytes": 30_000}]
    assert (tmp_path / "run" / "tok" / "bpe.json").is_file()
    dry = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "train", "DATA=my.txt"], capture_output=True, text=True
    )
    assert "--data.input=[my.txt] --train.out_dir=out/my" in dry.stdout


@pytest.mark.parametrize(
    ("data", "run"),
    [
        ("my.txt", "out/my"),
        ("docs/mydocs/", "out/mydocs"),  # tab completion's trailing slash
        ("mydocs", "out/mydocs"),
        ("x.jsonl", "out/x-jsonl"),
        ("x.parquet", "out/x-parquet"),
        ("a/x.jsonl.gz", "out/x-jsonl-gz"),
    ],
)
def test_make_train_names_each_input_its_own_run(data, run):
    dry = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "train", f"DATA={data}"], capture_output=True, text=True
    )
    assert f"--data.input=[{data}] --train.out_dir={run} " in dry.stdout + " "
