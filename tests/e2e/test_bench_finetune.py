"""benchmarks/bench_finetune.py as a user runs it: LoRA and full fine-tuning side by side on a
trained llm_tiny base and on a local Hugging Face folder (the import tests' tiny GPT-2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CORPUS, hf_bpe_tokenizer, hf_folder

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess:
    script = ROOT / "benchmarks" / "bench_finetune.py"
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


def test_lora_and_full_fine_tuning_are_measured_on_both_bases(tmp_path):
    pytest.importorskip("transformers")
    text = CORPUS.read_text(encoding="utf-8")[:40_000]
    hf_folder(tmp_path / "hf", "gpt2", hf_bpe_tokenizer(text, "<|endoftext|>"))
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    proc = bench(
        "--input", str(tmp_path / "text.txt"), "--hf", str(tmp_path / "hf"), "--iters", "3",
        "--base-iters", "3", "--n-layer", "1", "--n-embd", "64", "--block-size", "32",
        "--batch-size", "4", "--threads", "1", "--targets", "q,v,up",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    results = {(r["base"], r["variant"]): r for r in line["results"]}
    assert set(results) == {(b, v) for b in ("llm_tiny", "imported HF") for v in ("full", "lora")}
    for base in ("llm_tiny", "imported HF"):
        full, lora = results[base, "full"], results[base, "lora"]
        assert full["status"] == lora["status"] == "ok"
        assert full["trainable_share"] == 1.0 and 0 < lora["trainable_share"] < 0.2
        assert lora["state_mib"] < full["state_mib"] and lora["ckpt_mib"] < full["ckpt_mib"] / 3
        assert lora["val_loss_start"] == full["val_loss_start"]  # the same base, the same data
        assert all(r["ms_per_step"] > 0 and r["peak_mem_mib"] > 0 for r in (full, lora))
    assert "share" in proc.stdout and "ms/step" in proc.stdout  # the table


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = bench("--input", str(tmp_path / "none.txt"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == f"bench_finetune.py: error: --input {tmp_path / 'none.txt'}: no such file"
