"""Reading corpora: which files the inputs name, and the documents in them. Errors name
the options as `python -m tok.bpe train` spells them unless the caller passes its own names;
the run config's are checked in test_documents.py / test_data.py."""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tok import sources
from tok.errors import TokenizerError
from tok.sources import BadRecords, Document, expand_inputs, iter_documents, skipped_notice


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def docs(paths, **kw) -> list[tuple[str, str]]:
    return [(d.text, d.source) for d in iter_documents(paths, **kw)]


# ----------------------------------------------------------------------------- expand_inputs


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    """A corpus folder, created in an order unlike the sorted one; cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    for name in [
        "corpus/z.txt",
        "corpus/sub/b.md",
        "corpus/a.jsonl.gz",
        "corpus/sub/deeper/c.py",
        "corpus/a.txt",
        "corpus/m.parquet",
        "corpus/.hidden.txt",
        "corpus/.git/config.txt",
        "corpus/img.png",
        "corpus/data.json",
        "corpus/README",
        "corpus/b.txt.zst",
    ]:
        write(tmp_path / name, "x")
    return tmp_path


def test_a_folder_is_walked_sorted_without_hidden_or_unknown_files(tree):
    assert expand_inputs(["corpus"]) == [
        Path(p)
        for p in [
            "corpus/a.jsonl.gz",
            "corpus/a.txt",
            "corpus/b.txt.zst",
            "corpus/m.parquet",
            "corpus/sub/b.md",
            "corpus/sub/deeper/c.py",
            "corpus/z.txt",
        ]
    ]


def test_entries_keep_their_order_and_a_file_is_read_once(tree):
    got = expand_inputs(["corpus/z.txt", "corpus/sub", "./corpus/z.txt", "corpus/README"])
    # A file named explicitly is read whatever its extension.
    assert got == [
        Path(p) for p in ["corpus/z.txt", "corpus/sub/b.md", "corpus/sub/deeper/c.py"]
    ] + [Path("corpus/README")]


def test_globs(tree):
    assert expand_inputs(["corpus/*.txt"]) == [Path("corpus/a.txt"), Path("corpus/z.txt")]
    assert expand_inputs(["corpus/**/*.md"]) == [Path("corpus/sub/b.md")]
    assert expand_inputs(["corpus/**/c.*"]) == [Path("corpus/sub/deeper/c.py")]
    # A folder matched by a glob is walked like a folder named outright.
    assert expand_inputs(["corp*"]) == expand_inputs(["corpus"])


def test_missing_inputs_are_user_errors(tree):
    with pytest.raises(TokenizerError, match=r"--input: nope.txt not found"):
        expand_inputs(["nope.txt"])
    with pytest.raises(TokenizerError, match=r"no files match corpus/\*\.rst"):
        expand_inputs(["corpus/*.rst"])
    write(tree / "images/a.png", "x")
    write(tree / "images/.b.txt", "x")
    with pytest.raises(TokenizerError, match="no text, JSONL or Parquet files in images"):
        expand_inputs(["images"])
    with pytest.raises(TokenizerError, match="no input given"):
        expand_inputs([])


# ----------------------------------------------------------------------------- plain text


def test_text_files_are_one_document_each(tmp_path):
    a = write(tmp_path / "a.txt", "hello\nworld\n")
    b = write(tmp_path / "b.md", "# title\n")
    assert docs([a, b]) == [("hello\nworld\n", str(a)), ("# title\n", str(b))]
    assert all(isinstance(d, Document) for d in iter_documents([a]))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_doc_separator_matches_str_split_at_any_chunk_size(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(sources, "_CHUNK", chunk)
    rng = random.Random(chunk)
    sep = "<|endoftext|>"
    pieces = [
        "".join(rng.choice("ab\n<|é") for _ in range(rng.randrange(1, 30))) for _ in range(40)
    ]
    text = sep.join(pieces)
    path = write(tmp_path / "a.txt", text)
    want, start = [], 0  # the reference: str.split, and the line where each piece starts
    for piece in text.split(sep):
        if piece.strip():
            want.append((piece, f"{path}:{text.count(chr(10), 0, start) + 1}"))
        start += len(piece) + len(sep)
    assert docs([path], doc_separator=sep) == want


def test_not_utf8_text_is_a_bad_record(tmp_path):
    good = write(tmp_path / "good.txt", "fine")
    bad = write(tmp_path / "bad.txt", b"ok \xff here")
    with pytest.raises(
        TokenizerError,
        match=r"bad.txt: not UTF-8 text \(invalid byte at offset 3\); set --on-bad-record skip",
    ):
        docs([good, bad])
    stats = BadRecords()
    assert docs([good, bad], on_bad_record="skip", stats=stats) == [("fine", str(good))]
    assert stats.count == 1 and stats.examples == [
        f"{bad}: not UTF-8 text (invalid byte at offset 3)"
    ]
    sep = write(tmp_path / "sep.txt", b"one\n--\ntw\xffo\n--\nthree")
    with pytest.raises(
        TokenizerError, match=r"sep.txt:2: not UTF-8 text \(invalid byte at offset 9\)"
    ):
        docs([sep], doc_separator="--")


# ----------------------------------------------------------------------------- JSON Lines


def test_jsonl_with_a_text_field(tmp_path):
    path = write(
        tmp_path / "a.jsonl", jsonl({"content": "one", "id": 1}, {"content": "two"}) + "\n"
    )
    assert docs([path], text_field="content") == [("one", f"{path}:1"), ("two", f"{path}:2")]


BAD_LINES = [
    (b"{not json", "not JSON"),
    (b'{"body": "x"}', "no 'text' value (keys: body)"),
    (b'{"text": null}', "no 'text' value (keys: text)"),
    (b'{"text": 3}', "'text' is int, not a string"),
    (b'["text"]', "not a JSON object but list"),
    (b'{"text": "caf\xe9"}', "not UTF-8 (invalid byte at column 14)"),
    (b'{"text": "a\\ud800b"}', "'text' holds a lone surrogate"),
]


@pytest.mark.parametrize(("line", "why"), BAD_LINES)
def test_a_bad_jsonl_line_names_file_and_line(tmp_path, line, why):
    path = write(tmp_path / "a.jsonl", b'{"text": "ok"}\n' + line + b"\n")
    with pytest.raises(TokenizerError) as e:
        docs([path])
    assert str(e.value).startswith(f"{path}:2: {why}")
    assert str(e.value).endswith("set --on-bad-record skip to skip such records")


def test_bad_jsonl_lines_are_counted_and_skipped(tmp_path):
    lines = [b'{"text": "first"}'] + [line for line, _ in BAD_LINES] + [b'{"text": "last"}']
    path = write(tmp_path / "a.jsonl", b"\n".join(lines))
    stats = BadRecords(keep=3)
    got = docs([path], on_bad_record="skip", stats=stats)
    assert got == [("first", f"{path}:1"), ("last", f"{path}:{len(lines)}")]
    assert stats.count == len(BAD_LINES)
    assert len(stats.examples) == 3 and stats.examples[0].startswith(f"{path}:2: not JSON")
    assert stats.summary().startswith(f"{len(BAD_LINES)} bad records skipped (first: {path}:2")


# ----------------------------------------------------------------------------- compression


def test_gzip_and_zstd_text_and_jsonl(tmp_path):
    body = jsonl({"text": "α"}, {"text": "β"}).encode()
    zst = zstandard.ZstdCompressor()
    files = [
        write(tmp_path / "a.txt.gz", gzip.compress("plain ü".encode())),
        write(tmp_path / "b.txt.zst", zst.compress(b"zstd text")),
        write(tmp_path / "c.jsonl.gz", gzip.compress(body)),
        # Two frames, as `cat x.zst y.zst` makes: one stream.
        write(tmp_path / "d.jsonl.zst", zst.compress(body[:10]) + zst.compress(body[10:])),
    ]
    assert [t for t, _ in docs(files)] == ["plain ü", "zstd text", "α", "β", "α", "β"]
    assert docs(files[3:])[1][1] == f"{files[3]}:2"


def test_corrupt_or_truncated_streams(tmp_path):
    not_gz = write(tmp_path / "a.txt.gz", "plain text, not gzip")
    with pytest.raises(TokenizerError, match=r"a.txt.gz: corrupt or truncated gzip data"):
        docs([not_gz])
    cut = write(tmp_path / "b.jsonl.gz", gzip.compress(jsonl({"text": "x" * 1000}).encode())[:-12])
    with pytest.raises(TokenizerError, match=r"b.jsonl.gz: corrupt or truncated gzip data"):
        docs([cut])
    bad_zst = write(tmp_path / "c.txt.zst", b"\x00" * 64)
    with pytest.raises(TokenizerError, match=r"c.txt.zst: corrupt or truncated zstd data"):
        docs([bad_zst])


def test_a_missing_optional_library_says_what_to_install(tmp_path, monkeypatch):
    path = write(tmp_path / "a.txt.zst", zstandard.ZstdCompressor().compress(b"x"))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # makes `import zstandard` fail
    with pytest.raises(
        TokenizerError, match=r"pip install zstandard \(or pip install 'llm_tiny\[data\]'\)"
    ):
        docs([path])


# ----------------------------------------------------------------------------- Parquet


def write_parquet(path: Path, columns: dict, row_group_size: int = 1 << 20) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_parquet_is_read_one_row_group_at_a_time(tmp_path, monkeypatch):
    texts = [f"row {i}" for i in range(10)]
    path = write_parquet(tmp_path / "a.parquet", {"id": list(range(10)), "text": texts}, 3)
    assert pq.ParquetFile(path).num_row_groups == 4
    read = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, *args, **kwargs):
        read.append((i, kwargs.get("columns")))
        return real(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    stream = iter_documents([path])
    assert next(stream) == Document("row 0", f"{path}:row 0")
    assert read == [(0, ["text"])]  # only the first row group, only the text column
    rest = list(stream)
    assert [d.text for d in rest] == texts[1:]
    assert [d.source for d in rest] == [f"{path}:row {i}" for i in range(1, 10)]
    assert [i for i, _ in read] == [0, 1, 2, 3]


def test_parquet_nulls_and_binary_text(tmp_path):
    column = pa.array([b"bytes ok", None, b"\xff bad", b""], pa.binary())
    path = write_parquet(tmp_path / "a.parquet", {"body": column})
    stats = BadRecords()
    assert docs([path], text_field="body", on_bad_record="skip", stats=stats) == [
        ("bytes ok", f"{path}:row 0")
    ]
    assert (stats.count, stats.empty) == (2, 1)
    assert stats.examples == [
        f"{path}:row 1: no 'body' value",
        f"{path}:row 2: not UTF-8 (invalid byte at offset 0)",
    ]
    with pytest.raises(
        TokenizerError, match=r"a.parquet:row 1: no 'body' value; set --on-bad-record"
    ):
        docs([path], text_field="body")


def test_parquet_without_the_column_or_corrupt(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"id": [1], "content": ["x"]})
    with pytest.raises(
        TokenizerError,
        match=r"a.parquet: no column 'text' \(columns: id, content\); set --text-field",
    ):
        docs([path])
    corrupt = write(tmp_path / "b.parquet", b"PAR1 not really")
    with pytest.raises(TokenizerError, match=r"b.parquet: not a readable Parquet file"):
        docs([corrupt])
    gz = write(tmp_path / "c.parquet.gz", gzip.compress(path.read_bytes()))
    with pytest.raises(TokenizerError, match="compressed Parquet is not supported"):
        docs([gz])


# ----------------------------------------------------------------------------- empty input and options


def test_empty_documents_are_counted_and_skipped(tmp_path):
    a = write(tmp_path / "a.txt", "")
    b = write(tmp_path / "b.jsonl", jsonl({"text": ""}, {"text": " \n"}, {"text": "x"}))
    stats = BadRecords()
    assert docs([a, b], stats=stats) == [("x", f"{b}:3")]
    assert (stats.count, stats.empty) == (0, 3)
    assert stats.summary() == "3 empty documents"


def test_no_documents_at_all_is_a_user_error(tmp_path):
    a = write(tmp_path / "a.txt", "\n")
    b = write(tmp_path / "b.jsonl", "\n\n")
    with pytest.raises(
        TokenizerError,
        match=r"--input: no documents in .*a.txt, .*b.jsonl \(1 empty document\)$",
    ):
        docs([a, b])


def test_unreadable_input_and_bad_options(tmp_path):
    folder = tmp_path / "dir.txt"
    folder.mkdir()
    with pytest.raises(TokenizerError, match=r"dir.txt: cannot read \(Is a directory\)"):
        docs([folder])
    a = write(tmp_path / "a.txt", "x")
    with pytest.raises(TokenizerError, match=r"--on-bad-record must be one of"):
        docs([a], on_bad_record="ignore")
    with pytest.raises(TokenizerError, match=r"--doc-separator must not be empty"):
        docs([a], doc_separator="")


def test_a_folder_says_what_it_skipped_and_how_to_read_it(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.md", "README", "sub/README.Debian", "sub/c.png", ".hidden.txt"):
        (docs / name).write_text("x")
    notes: list[str] = []
    files = expand_inputs([str(docs) + "/"], note=notes.append)
    assert [p.name for p in files] == ["a.txt", "b.md"]
    assert len(notes) == 1  # one line per folder; hidden files are not counted
    assert f"{docs}: skipped 3 files with unknown extensions" in notes[0]
    assert "README" in notes[0] and f"'{docs}/**/README*'" in notes[0]
    # Named directly or matched by a glob, such a file is read (as text).
    named = expand_inputs([str(docs / "README"), str(docs / "**" / "README*")], note=notes.append)
    assert [p.name for p in named] == ["README", "README.Debian"]
    assert len(notes) == 1
    assert expand_inputs([str(docs / "a.txt")], note=notes.append) and len(notes) == 1


def test_the_notice_of_many_skipped_files_shows_a_few():
    skipped = [Path(f"d/f{i}") for i in range(5)]
    line = skipped_notice("d", skipped)
    assert line.startswith(
        "note: d: skipped 5 files with unknown extensions (d/f0, d/f1, d/f2, ...)"
    )
