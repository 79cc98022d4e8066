"""What a user shares keeps the umask's permissions: a tokenizer, an HF export folder and its
files, a GGUF file, an imported run. Atomic writes go through owner-only temporary files and
folders (mkstemp, mkdtemp); what they turn into must not stay owner-only."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from llm_tiny.export.cli import main as export_main
from llm_tiny.export.importer import main as import_main
from tok.bpe import Tokenizer
from tok.serialize import default_mode

RUN = Path(__file__).resolve().parents[1] / "fixtures" / "run_before_layout"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_default_mode_follows_the_umask(umask):
    assert default_mode() == 0o666 & ~umask
    assert default_mode(directory=True) == 0o777 & ~umask


def test_shared_files_keep_the_umask_permissions(tmp_path, umask):
    pytest.importorskip("safetensors")
    pytest.importorskip("gguf")
    files, dirs = 0o666 & ~umask, 0o777 & ~umask
    tok = Tokenizer.train("a small text to train on, twice: a small text", 260)
    tok.save(tmp_path / "tok" / "bpe.json")
    assert mode(tmp_path / "tok" / "bpe.json") == files
    assert mode(tmp_path / "tok" / "bpe.vocab") == files

    run = shutil.copytree(RUN, tmp_path / "run")
    assert export_main(["--ckpt", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert mode(tmp_path / "hf") == dirs
    for f in (tmp_path / "hf").iterdir():
        assert mode(f) == files, f.name
    gguf = tmp_path / "m.gguf"
    assert export_main(["--ckpt", str(run), "--format", "gguf", "--out", str(gguf)]) == 0
    assert mode(gguf) == files

    assert import_main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0
    for f in [tmp_path / "imported", *(tmp_path / "imported").rglob("*")]:
        assert mode(f) == (dirs if f.is_dir() else files), f
