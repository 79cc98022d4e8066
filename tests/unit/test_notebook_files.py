"""The notebooks as files: valid, and saved without outputs (running them in a kernel is
tests/e2e/test_notebooks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def test_every_notebook_is_valid_and_carries_no_outputs():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [p.name for p in paths] == [
        "01_tokenizer.ipynb",
        "02_attention.ipynb",
        "03_training.ipynb",
    ]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), path.name
        assert sum(c.cell_type == "markdown" for c in nb.cells) >= len(code) // 2, path.name
