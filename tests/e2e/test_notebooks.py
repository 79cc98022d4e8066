"""The notebooks in notebooks/ run top to bottom in a real Jupyter kernel (nbclient + ipykernel),
as a learner would run them, with few training steps; the checks read what their cells print.

Each notebook checks its own claims (its hand computations against the library, with `assert`),
so a notebook that runs without an error has passed those; the checks here make sure the cells
that print the results did run and printed sensible values.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
STEPS = 12  # training steps per run: enough to move the loss, short enough for the suite


def run_notebook(name: str, work: Path) -> tuple[str, int]:
    """Execute notebooks/`name` in a fresh python3 kernel started in notebooks/ (as Jupyter
    does); returns everything its cells printed and the number of images they displayed."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # the kernel imports this checkout's llm_tiny and tok
        "LLM_TINY_NOTEBOOK_DIR": str(work),
        "LLM_TINY_NOTEBOOK_STEPS": str(STEPS),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute(env=env)  # raises CellExecutionError, with the cell and traceback, on error
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                images += "image/png" in out.data
    return "".join(text), images


def test_tokenizer_notebook(tmp_path):
    out, images = run_notebook("01_tokenizer.ipynb", tmp_path)
    # The hand-made merge and the library's agree (the notebook asserts it too).
    assert "by hand:   merge (97, 116) = b'at' -> token 256" in out
    assert "library:   merge (97, 116) = b'at'" in out
    assert "30 merges by hand == the library's 30 merges" in out
    # The compression table: 1 byte per token with no merges, more with every size after.
    table = re.findall(r"^\s*(\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)$", out, re.M)
    sizes = [int(row[0]) for row in table]
    seen = [float(row[1]) for row in table]
    unseen = [float(row[2]) for row in table]
    assert sizes[0] == 256 and seen[0] == unseen[0] == 1.0 and len(sizes) >= 5
    assert seen == sorted(seen) and unseen == sorted(unseen) and seen[-1] > 2.5
    assert "special_tokens={'<|endoftext|>': 511}" in out
    assert "as special token: [" in out and ", 511, " in out
    assert "loaded back: fingerprint" in out
    assert images == 1
    assert (tmp_path / "tokenizer" / "bpe_1024.json").is_file()


def test_attention_notebook(tmp_path):
    out, images = run_notebook("02_attention.ipynb", tmp_path)
    assert f"training for {STEPS} steps" in out and f"done: step {STEPS}" in out
    for check in (
        "RMSNorm by hand == block.norm1",
        "RoPE by hand == the model's rotation",
        "attention weights by hand == model.attention_maps(idx)[0]",
        "rows sum to one: True",
        "attention output by hand == block.attn(...) (sdpa)",
        "all 2 layers: attention by hand == model.attention_maps",
    ):
        assert check in out
    # One line per head of the summary table: 2 layers x 4 heads.
    assert len(re.findall(r"^\s+[01]\s+[0-3]\s+\d+\.\d tokens\s+\d+%\s+\d+%$", out, re.M)) == 8
    assert images == 2
    assert (tmp_path / "attention" / "run" / "best.pt").is_file()


def test_training_notebook(tmp_path):
    out, images = run_notebook("03_training.ipynb", tmp_path)
    finals = dict(re.findall(r"^(lr \S+).*final validation loss (\d+\.\d+)$", out, re.M))
    assert set(finals) == {"lr 3e-3", "lr 3e-4", "lr 1e-1"}
    # 12 steps move every run below the loss of a uniform guess, ln(512), the baseline the most.
    assert all(float(v) < math.log(512) for v in finals.values())
    assert float(finals["lr 3e-3"]) < float(finals["lr 3e-4"])
    assert "every logged learning rate matches lr_for" in out
    assert "lowest validation loss" in out
    assert "\nROMEO:" in out  # the sample starts with its prompt
    assert images == 4
    for run in ("baseline", "lr_3e-4", "lr_1e-1", "small_data"):
        assert (tmp_path / "training" / run / "best.pt").is_file()
