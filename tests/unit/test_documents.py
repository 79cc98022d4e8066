"""Corpora as documents: folders, JSONL and Parquet through `prepare_data`, an end-of-text
token after every document, validation by whole documents, and the sampler stopping there."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_tiny.config import DataConfig, RunConfig
from llm_tiny.data import prepare_data
from llm_tiny.data.prepare import is_validation
from llm_tiny.errors import UserError
from llm_tiny.infer.prompt import eot_ids, text_of
from tok.bpe import Tokenizer
from tok.errors import TokenizerError

EOT = "<|endoftext|>"
CORPUS = Path(__file__).resolve().parents[2] / "data" / "tiny.txt"


def corpus_docs(n: int = 60) -> list[str]:
    """n distinct speeches of Tiny Shakespeare, as documents."""
    speeches = [s.strip() for s in CORPUS.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    return speeches[:n]


def cfg(tmp_path: Path, inputs: list[Path | str], **kw) -> DataConfig:
    base = {
        "input": tuple(map(str, inputs)),
        "tokenizer": str(tmp_path / "tok" / "bpe.json"),
        "vocab_size": 300,
        "data_dir": str(tmp_path / "data"),
        "val_fraction": 0.2,
        "workers": 1,  # unit tests start no process (tests/integration/test_shards.py: 2 workers)
    }
    return DataConfig(**{**base, **kw})


def split_docs(data, split: str, eot: int) -> list[list[int]]:
    stream = data.tokens(split)
    ids = stream[0 : len(stream)].tolist()
    assert ids[-1] == eot  # every document ends with the end-of-text token
    docs, cur = [], []
    for t in ids:
        if t == eot:
            docs.append(cur)
            cur = []
        else:
            cur.append(t)
    return docs


def test_a_folder_of_mixed_formats_becomes_documents_split_by_document(tmp_path):
    docs = corpus_docs()
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i, d in enumerate(docs[:20]):
        (folder / f"{i:02}.txt").write_text(d, encoding="utf-8")
    with (folder / "sub" / "more.jsonl").open("w") as f:
        for d in docs[20:40]:
            f.write(json.dumps({"text": d, "id": 1}) + "\n")
    pq.write_table(pa.table({"text": docs[40:]}), folder / "sub" / "rest.parquet", row_group_size=7)

    data = prepare_data(cfg(tmp_path, [folder]), log=lambda _: None)
    tok = data.tokenizer
    eot = tok.special_tokens[EOT]  # registered when the tokenizer was trained from the config
    train, val = split_docs(data, "train", eot), split_docs(data, "val", eot)
    assert sorted(map(tok.decode, train + val)) == sorted(docs)
    assert sorted(map(tok.decode, val)) == sorted(d for d in docs if is_validation(d, 0.2))
    assert 0 < len(val) < len(train)
    meta = data.meta
    assert meta["splits"]["val"]["documents"] == len(val)
    assert meta["splits"]["train"]["bytes"] == sum(len(tok.decode(d).encode()) for d in train)
    assert meta["documents"]["eot"] == EOT


def test_val_input_gives_the_validation_documents_and_trains_the_tokenizer_without_them(tmp_path):
    docs = corpus_docs()
    train_file, val_file = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:45]))
    val_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[45:]))
    c = cfg(tmp_path, [train_file], val_input=(str(val_file),))
    data = prepare_data(c, log=lambda _: None)
    tok = data.tokenizer
    eot = tok.special_tokens[EOT]
    assert list(map(tok.decode, split_docs(data, "train", eot))) == docs[:45]
    assert list(map(tok.decode, split_docs(data, "val", eot))) == docs[45:]
    only_train = Tokenizer.train(docs[:45], 300, special_tokens=[EOT])
    assert tok.merges == only_train.merges
    assert data.meta["val_inputs"] == [{"path": str(val_file), "bytes": val_file.stat().st_size}]
    assert prepare_data(c, log=print).meta == data.meta  # cached: nothing to do
    # A changed validation file is noticed.
    val_file.write_text(json.dumps({"text": docs[-1]}) + "\n")
    again = prepare_data(c, log=lambda _: None)
    assert list(map(tok.decode, split_docs(again, "val", eot))) == [docs[-1]]
    with pytest.raises(TokenizerError, match=r"data.val_input: nope.jsonl not found"):
        prepare_data(cfg(tmp_path, [train_file], val_input=("nope.jsonl",)), log=print)


def test_validation_is_chosen_by_content_about_val_fraction_of_documents():
    texts = [f"document number {i}" for i in range(4000)]
    share = sum(is_validation(t, 0.1) for t in texts) / len(texts)
    assert 0.08 < share < 0.12
    assert is_validation("same text", 0.5) == is_validation("same text", 0.5)


def test_one_plain_text_file_stays_one_text(tmp_path):
    src = tmp_path / "one.txt"
    src.write_text(CORPUS.read_text(encoding="utf-8")[:20_000])
    data = prepare_data(cfg(tmp_path, [src]), log=lambda _: None)
    assert "documents" not in data.meta and EOT not in data.tokenizer.special_tokens


def test_eot_can_be_off_and_an_existing_tokenizer_must_have_it(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in corpus_docs()))
    off = prepare_data(cfg(tmp_path / "a", [jsonl], eot=None), log=lambda _: None)
    assert off.tokenizer.special_tokens == {}
    plain = tmp_path / "plain.json"
    Tokenizer.train(CORPUS.read_text()[:20_000], 300).save(plain)
    with pytest.raises(UserError, match=r"has no special token <\|endoftext\|> to end documents"):
        prepare_data(cfg(tmp_path / "b", [jsonl], tokenizer=str(plain)), log=lambda _: None)


def test_bad_records_stop_with_their_place_or_are_counted_and_skipped(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": d}) for d in corpus_docs()]
    lines[3] = "{not json"
    jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(TokenizerError, match=r"d.jsonl:4: not JSON .*data.on_bad_record: skip"):
        prepare_data(cfg(tmp_path / "a", [jsonl]), log=lambda _: None)
    notes: list[str] = []
    data = prepare_data(cfg(tmp_path / "b", [jsonl], on_bad_record="skip"), log=notes.append)
    assert any("1 bad record" in n for n in notes)
    assert sum(s["documents"] for s in data.meta["splits"].values()) == len(lines) - 1


def test_too_few_documents_for_a_validation_split_is_one_clear_line(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"text": CORPUS.read_text()[:30_000]}) + "\n")
    with pytest.raises(UserError, match="none of its 1 documents fell in the"):
        prepare_data(cfg(tmp_path, [jsonl]), log=lambda _: None)


def test_the_sampler_stops_at_the_end_of_text_token():
    tok = Tokenizer.train(CORPUS.read_text()[:20_000], 300, special_tokens=(EOT,))
    run = RunConfig()
    stops = eot_ids(tok, run)
    assert stops == [tok.special_tokens[EOT]]
    assert eot_ids(tok, run, stop=False) == []
    ids = tok.encode("ROMEO: hi") + stops + tok.encode("never shown")
    assert text_of(tok, ids, stops) == "ROMEO: hi"


def test_the_tokenizer_can_be_trained_on_a_sample(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in corpus_docs()))
    whole = prepare_data(cfg(tmp_path / "a", [jsonl]), log=lambda _: None).tokenizer
    sample = prepare_data(
        cfg(tmp_path / "b", [jsonl], tokenizer_train_bytes=3000), log=lambda _: None
    )
    assert sample.tokenizer.vocab_size == whole.vocab_size == 300
    assert sample.tokenizer.merges != whole.merges  # learnt from the first 3,000 bytes only


def test_prepare_says_which_files_of_a_folder_it_skipped(tmp_path):
    folder = tmp_path / "mydocs"
    folder.mkdir()
    for i, doc in enumerate(corpus_docs(20)):
        (folder / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    (folder / "README").write_text("read me", encoding="utf-8")
    lines: list[str] = []
    prepare_data(cfg(tmp_path, [folder]), log=lines.append)
    notes = [line for line in lines if "skipped" in line]
    assert notes == [
        f"note: {folder}: skipped 1 file with unknown extensions ({folder}/README); to read them "
        f"as text, name them or match them with a glob, e.g. '{folder}/**/README*'"
    ]
