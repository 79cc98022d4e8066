"""The tokenizer across processes: encoding a file and counting chunks in worker pools give
what one process gives, and training in a fresh interpreter (another hash seed) gives the same
file. (The rest of the encoder and trainer is tests/unit/test_tok_bpe.py and
tests/unit/test_tok_trainer.py, in one process.)"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex

from tok import trainer
from tok.bpe import Tokenizer
from tok.corpus import iter_pieces, piece_text
from tok.patterns import resolve_pattern
from tok.trainer import count_pieces

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "data" / "tiny.txt"
MIXED_CORPUS = (
    "Hello world! It's 2024, isn't it?\r\n"
    "日本語のテキストと中文文本。 Ça va? Über naïve café — “quotes”.\n"
    "    indented code(x, y) = x**2 + y**2  # comment\n"
    "emoji 😀😀 👍🏽 and e\u0301 combining, tabs\tand\ttabs.\n\n\n"
) * 8

MIXED = "".join(
    f"Line {i}: naïve café {'日本語 ' * (i % 3 == 0)}x = {i * 37 % 101}\n    indented {i}!\n"
    for i in range(400)
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """The encoder tests' tokenizer (tests/unit/test_tok_bpe.py)."""
    text = TINY.read_text(encoding="utf-8")[:60_000]
    return Tokenizer.train(
        [text, MIXED_CORPUS], 700, special_tokens=["<|endoftext|>", "<|pad|>"], fast=False
    )


def test_encode_file_in_parallel_equals_serial(tok, tmp_path):
    text = (MIXED_CORPUS + "Line of plain words.\nAnother line here!\n") * 30
    path = tmp_path / "in.txt"
    path.write_bytes(text.encode("utf-8"))
    serial = tok.encode_file(path, workers=1)
    parallel = tok.encode_file(path, workers=2, parallel_threshold=1)
    assert np.array_equal(serial, parallel)
    assert serial.tolist() == tok.encode(text)


def test_training_in_a_fresh_process_gives_the_same_file(tmp_path):
    # Hash randomization differs between processes: the result must not depend on it.
    text = "peter piper picked a peck of pickled peppers\n" * 5
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    code = (
        "import sys; from pathlib import Path; from tok.bpe import Tokenizer; "
        "Tokenizer.train(Path(sys.argv[1]), 300).save(sys.argv[2])"
    )
    for name in ("x.json", "y.json"):
        subprocess.run(
            [sys.executable, "-c", code, str(src), str(tmp_path / name)],
            check=True,
            cwd=REPO,
            env={"PYTHONHASHSEED": "random", "PATH": ""},
        )
    assert (tmp_path / "x.json").read_bytes() == (tmp_path / "y.json").read_bytes()
    local = Tokenizer.train(text, 300)
    assert Tokenizer.load(tmp_path / "x.json").merges == local.merges


def test_parallel_counting_gives_the_same_file_as_one_worker(tmp_path, monkeypatch):
    # Several files and texts, each cut into many pieces, counted in tasks of a few pieces:
    # the pool is used, and the file is byte-identical to the one-worker file.
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"part{k}.txt")
        paths[-1].write_text(MIXED[k * 9000 : (k + 1) * 9000 + 5000], encoding="utf-8")
    inputs = [MIXED[:7000], paths[0], MIXED[20_000:], paths[1]]
    monkeypatch.setattr("tok.trainer.TASK_BYTES", 3000)
    pooled = []
    real = trainer._count_in_pool
    monkeypatch.setattr(trainer, "_count_in_pool", lambda *a: pooled.append(1) or real(*a))
    files = {}
    for workers in (1, 2):
        tok = Tokenizer.train(inputs, 400, files=[paths[2]], workers=workers)
        files[workers] = tok.save(tmp_path / f"w{workers}" / "bpe.json").read_bytes()
    assert pooled == [1] and files[1] == files[2]


def test_pieces_counted_in_a_pool_equal_the_whole_text(tmp_path):
    f = tmp_path / "mixed.txt"
    f.write_text(MIXED, encoding="utf-8")
    for name in ("gpt2", "gpt4"):
        pattern = resolve_pattern(name)
        whole = Counter(regex.findall(pattern.source, MIXED))
        for inputs in (f, MIXED):
            pieces = list(iter_pieces(inputs, block_size=2000))
            assert len(pieces) > 10
            assert "".join(map(piece_text, pieces)) == MIXED
            for workers in (1, 2):
                counts = count_pieces(pieces, pattern, workers=workers, task_bytes=5000)
                assert counts == whole
