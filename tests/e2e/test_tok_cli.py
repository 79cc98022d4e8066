"""`python -m tok.bpe`: every command and error case, through a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tok.bpe import Tokenizer

REPO = Path(__file__).resolve().parents[2]
CORPUS = "".join(
    f"Line {i}: Hello world number {i * 37 % 101}! Naïve café, 日本語 😀 {'ab' * (i % 7)}\r\n"
    for i in range(200)
)


def run(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "tok.bpe", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=env,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("python -m tok.bpe")
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder holding corpus.txt and the tokenizer trained on it at tok/bpe.json."""
    root = tmp_path_factory.mktemp("cli")
    (root / "corpus.txt").write_bytes(CORPUS.encode("utf-8"))
    proc = run(
        "train", "--input", "corpus.txt", "--vocab-size", "300", "--special", "<|endoftext|>",
        cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "vocab size 300 (256 bytes + 43 merges + 1 special tokens)" in out
    assert "trained in" in out and "bytes per token on the training text" in out
    return root


def test_train_writes_the_default_files(trained):
    tok = Tokenizer.load(trained / "tok" / "bpe.json")
    assert tok.vocab_size == 300 and tok.special_tokens == {"<|endoftext|>": 299}
    assert (trained / "tok" / "bpe.vocab").is_file()
    assert Tokenizer.train(CORPUS, 300, special_tokens=["<|endoftext|>"]).merges == tok.merges


def test_train_options(trained):
    proc = run(
        "train", "--input", "corpus.txt", "corpus.txt", "--vocab-size", "270", "--pattern",
        "gpt2", "--out", "other/t.json", "--progress", cwd=trained,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    tok = Tokenizer.load(trained / "other" / "t.json")
    assert tok.pattern_name == "gpt2" and tok.vocab_size == 270


def test_train_workers_and_max_bytes(trained):
    proc = run(
        "train", "--input", "corpus.txt", "--vocab-size", "300", "--workers", "2", "--max-bytes",
        "3000", "--out", "sample/t.json", cwd=trained,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert "trained on a sample of about 3000 bytes" in proc.stdout.decode()
    tok = Tokenizer.load(trained / "sample" / "t.json")
    expected = Tokenizer.train(trained / "corpus.txt", 300, max_bytes=3000, workers=1)
    assert tok.merges == expected.merges
    for flag in ("--workers", "--max-bytes"):
        proc = run("train", "--input", "corpus.txt", "--vocab-size", "300", flag, "0", cwd=trained)
        assert_one_line_error(proc, f"{flag[2:].replace('-', '_')} must be an integer >= 1, got 0")


def test_train_reads_folders_jsonl_and_parquet_as_documents(tmp_path):
    """The same inputs as a run config's `data.input`: a folder of text, JSONL, Parquet; the
    merges are those of the library trained on the same documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = CORPUS.splitlines(keepends=True)
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a.txt").write_bytes("".join(lines[:50]).encode("utf-8"))
    (tmp_path / "src" / "sub" / "b.md").write_bytes("".join(lines[50:100]).encode("utf-8"))
    records = [json.dumps({"body": line}) for line in lines[100:150]]
    (tmp_path / "c.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"body": lines[150:]}), tmp_path / "d.parquet")
    proc = run(
        "train", "--input", "src", "c.jsonl", "d.parquet", "--text-field", "body",
        "--vocab-size", "290", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    documents = ["".join(lines[:50]), "".join(lines[50:100]), *lines[100:]]
    expected = Tokenizer.train(documents, 290)
    assert Tokenizer.load(tmp_path / "tok" / "bpe.json").merges == expected.merges
    assert "bytes per token on the training text" in proc.stdout.decode()

    (tmp_path / "bad.jsonl").write_text('{"body": "fine"}\nnot json\n', encoding="utf-8")
    bad = ("train", "--input", "bad.jsonl", "--text-field", "body", "--vocab-size", "260")
    assert_one_line_error(run(*bad, cwd=tmp_path), "bad.jsonl:2: not JSON", "--on-bad-record skip")
    proc = run(*bad, "--on-bad-record", "skip", "--out", "skip.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert_one_line_error(
        run("train", "--input", "d.parquet", "--vocab-size", "260", cwd=tmp_path),
        "no column 'text'",
        "set --text-field",
    )
    assert_one_line_error(
        run("train", "--input", "*.rst", "--vocab-size", "260", cwd=tmp_path),
        "--input: no files match *.rst",
    )


def test_encode_text_file_stdin_and_json(trained):
    tok = Tokenizer.load(trained / "tok" / "bpe.json")
    text = "Hello café 😀<|endoftext|>"
    expected = tok.encode(text)
    proc = run("encode", "--text", text, cwd=trained)
    assert proc.returncode == 0 and proc.stdout.decode().split() == [str(i) for i in expected]
    (trained / "in.txt").write_bytes(text.encode("utf-8"))
    proc = run("encode", "--input", "in.txt", "--json", cwd=trained)
    assert json.loads(proc.stdout) == expected
    proc = run("encode", "--json", cwd=trained, stdin=text.encode("utf-8"))
    assert json.loads(proc.stdout) == expected
    proc = run("encode", "--text", text, "--allowed-special", "all", "--json", cwd=trained)
    assert json.loads(proc.stdout)[-1] == 299


def test_decode_ids_file_and_stdin_round_trip(trained):
    tok = Tokenizer.load(trained / "tok" / "bpe.json")
    text = "Naïve\r\nworld 日本語 ends without newline"
    ids = tok.encode(text)
    proc = run("decode", "--ids", " ".join(map(str, ids)), cwd=trained)
    assert proc.returncode == 0 and proc.stdout.decode("utf-8") == text
    (trained / "ids.json").write_text(json.dumps(ids), encoding="utf-8")
    proc = run("decode", "--input", "ids.json", "--no-fast", cwd=trained)
    assert proc.stdout.decode("utf-8") == text
    proc = run("decode", cwd=trained, stdin=",".join(map(str, ids)).encode())
    assert proc.stdout.decode("utf-8") == text


def test_info(trained):
    proc = run("info", "--tokenizer", "tok/bpe.json", "--merges", "2", cwd=trained)
    out = proc.stdout.decode("utf-8")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "vocab size    300 (256 bytes + 43 merges + 1 special tokens)" in out
    assert "pattern       gpt4:" in out and '"<|endoftext|>"=299' in out
    tok = Tokenizer.load(trained / "tok" / "bpe.json")
    assert f"fingerprint   {tok.fingerprint}" in out
    assert "     256 " in out and "     298 " in out and "  ..." in out


def test_error_missing_files(trained):
    assert_one_line_error(
        run("train", "--input", "nope.txt", "--vocab-size", "300", cwd=trained), "nope.txt"
    )
    assert_one_line_error(
        run("encode", "--tokenizer", "missing.json", "--text", "x", cwd=trained),
        "missing.json: no such file",
    )
    assert_one_line_error(
        run("encode", "--input", "nope.txt", cwd=trained), "nope.txt: no such file"
    )


def test_error_empty_training_input_saves_nothing(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    proc = run("train", "--input", "empty.txt", "--vocab-size", "300", cwd=tmp_path)
    assert_one_line_error(proc, "empty.txt: empty; there is no text to train on")
    assert not (tmp_path / "tok").exists()


def test_error_vocab_size_below_bytes_and_specials(trained):
    proc = run(
        "train", "--input", "corpus.txt", "--vocab-size", "257", "--special", "<a>", "<b>",
        cwd=trained,
    )  # fmt: skip
    assert_one_line_error(proc, "vocab size 257 is below the minimum 258")


def test_error_bad_ids(trained):
    assert_one_line_error(run("decode", "--ids", "1 two 3", cwd=trained), "not an integer: 'two'")
    assert_one_line_error(run("decode", "--ids", "1 300", cwd=trained), "token id 300 is out of")
    assert_one_line_error(run("decode", "--ids", "[1, 2.5]", cwd=trained), "not an integer: 2.5")
    assert_one_line_error(run("decode", "--ids", "-4", cwd=trained), "token id -4 is out of")


def test_error_bad_pattern(trained):
    proc = run(
        "train", "--input", "corpus.txt", "--vocab-size", "300", "--pattern", "[a-", cwd=trained
    )
    assert_one_line_error(proc, "bad split pattern '[a-'")
    proc = run(
        "train", "--input", "corpus.txt", "--vocab-size", "300", "--pattern", r"\w*", cwd=trained
    )
    assert_one_line_error(proc, "can match the empty string")


def test_error_bad_tokenizer_file_and_usage(trained):
    (trained / "broken.json").write_text("{", encoding="utf-8")
    assert_one_line_error(
        run("info", "--tokenizer", "broken.json", cwd=trained), "broken.json: not valid JSON"
    )
    assert_one_line_error(run("train", "--input", "corpus.txt", cwd=trained), "--vocab-size")
    assert_one_line_error(run("frobnicate", cwd=trained), "invalid choice")
    assert_one_line_error(
        run("encode", "--text", "<|endoftext|>", "--allowed-special", "none_raise", cwd=trained),
        "contains the special token",
    )
