"""Import of Hugging Face GPT-2 and Llama folders (built here, randomly initialised, with
transformers and a byte-level BPE trained by `tokenizers`), `train.init_from`, and the whole
path through the command line: train -> export -> import -> sample / fine-tune."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from helpers import hf_bpe_tokenizer, hf_folder

from llm_tiny.export import importer
from llm_tiny.export.hf_tokenizer import from_tokenizer_json
from llm_tiny.train.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:30_000]
EOT = "<|endoftext|>"
TRICKY = "héllo 世界 🙂 e\u0301 \r\n\r\n  x\t\t y  <|endoftext|>hi 1234567 it's"


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A GPT-2-style byte-level BPE trained by HF `tokenizers` (ids in its own order)."""
    return hf_bpe_tokenizer(TEXT, EOT)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_import_gives_the_hf_models_logits_and_tokens(tmp_path, hf_tokenizer, kind):
    hf = hf_folder(tmp_path / "hf", kind, hf_tokenizer)
    assert importer.main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    model, tok, cfg, _ = load_model(tmp_path / "run")
    data = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    _, id_map = from_tokenizer_json(data, "tokenizer.json")  # HF id -> ours
    for text in (TEXT, TRICKY):
        theirs = hf_tokenizer.encode(text).ids
        assert tok.encode(text, allowed_special="all") == [id_map[i] for i in theirs]
    hf_ids = torch.tensor([hf_tokenizer.encode(TEXT[:300]).ids[:60]])
    our_ids = hf_ids.clone().apply_(id_map.__getitem__)
    with torch.no_grad():
        ours, theirs = model(our_ids)[0], hf(hf_ids).logits
    columns = torch.tensor(sorted(id_map, key=id_map.__getitem__))  # HF ids in our order
    assert (ours[..., : len(columns)] - theirs[..., columns]).abs().max().item() < 1e-5
    assert cfg.model.vocab_size == hf.config.vocab_size
    # MLP widths other than ours (4 x 64, SwiGLU's 192) come in as model.mlp_hidden.
    assert cfg.model.mlp_hidden == (200 if kind == "gpt2" else 160)
    assert cfg.data.eot == EOT and (tmp_path / "run" / "tok" / "bpe.json").exists()


def test_import_errors_are_one_line_exit_2(tmp_path, hf_tokenizer, capsys):
    def error(*args: str) -> str:
        code = importer.main(["--hf", *args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    assert "not a folder" in error(str(tmp_path / "none"), "--out", str(tmp_path / "r"))
    (tmp_path / "empty").mkdir()
    assert "config.json" in error(str(tmp_path / "empty"), "--out", str(tmp_path / "r"))
    folder = tmp_path / "hf"
    hf_folder(folder, "gpt2", hf_tokenizer)
    capsys.readouterr()  # transformers' progress bars
    config = json.loads((folder / "config.json").read_text())

    (folder / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    assert "unsupported architecture" in error(str(folder), "--out", str(tmp_path / "r"))
    (folder / "config.json").write_text(json.dumps(config | {"activation_function": "relu"}))
    assert "relu" in error(str(folder), "--out", str(tmp_path / "r"))
    (folder / "config.json").write_text(json.dumps(config))

    tokenizer = (folder / "tokenizer.json").read_text()
    data = json.loads(tokenizer)
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    assert "not a byte-level BPE" in error(str(folder), "--out", str(tmp_path / "r"))
    data["model"]["type"] = "WordPiece"
    (folder / "tokenizer.json").write_text(json.dumps(data))
    assert "not a byte-level BPE" in error(str(folder), "--out", str(tmp_path / "r"))
    (folder / "tokenizer.json").unlink()
    assert "tokenizer.json" in error(str(folder), "--out", str(tmp_path / "r"))
    (folder / "tokenizer.json").write_text(tokenizer)

    (folder / "model.safetensors").rename(folder / "moved")
    assert "no weights" in error(str(folder), "--out", str(tmp_path / "r"))
    (folder / "model.safetensors").write_bytes(b"garbage")
    assert "cannot read the weights" in error(str(folder), "--out", str(tmp_path / "r"))
    (folder / "moved").rename(folder / "model.safetensors")

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert "--force" in error(str(folder), "--out", str(tmp_path / "taken"))
    assert not (tmp_path / "r").exists()  # nothing half-written by any failure


# ----------------------------------------------------------------------------- the CLI path


def test_train_export_import_sample_and_fine_tune_through_the_cli(tmp_path, capsys):
    """The commands in-process (`python -m llm_tiny` dispatches to the same `main`s)."""
    from llm_tiny.__main__ import main

    def llm(*args: str) -> SimpleNamespace:
        code = main(list(args))
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    config = {
        "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "pos_emb": "rope",
                  "norm": "rmsnorm", "mlp": "swiglu", "bias": False},
        "data": {"input": [str(corpus)], "vocab_size": 300},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 2},
        "train": {"out_dir": str(tmp_path / "run"), "max_iters": 20, "batch_size": 8,
                  "eval_interval": 20, "eval_iters": 2, "ckpt_interval": 20, "threads": 1,
                  "device": "cpu", "sample_at_end": False},
    }  # fmt: skip
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    result = llm("train", str(tmp_path / "tiny.yaml"))
    assert result.returncode == 0, result.stderr

    hf, gguf = tmp_path / "hf", tmp_path / "m.gguf"
    result = llm("export", "--ckpt", str(tmp_path / "run"), "--format", "hf", "--out", str(hf))
    assert result.returncode == 0 and "LlamaForCausalLM" in result.stdout, result.stderr
    result = llm("export", "--ckpt", str(tmp_path / "run"), "--format", "gguf", "--out", str(gguf))
    assert result.returncode == 0 and gguf.stat().st_size > 0, result.stderr
    result = llm("import", "--hf", str(hf), "--out", str(tmp_path / "imported"))
    assert result.returncode == 0, result.stderr
    sample = ["--prompt", "KING:", "--max-new-tokens", "20", "--temperature", "0"]
    a = llm("sample", "--ckpt", str(tmp_path / "run"), *sample)
    b = llm("sample", "--ckpt", str(tmp_path / "imported"), *sample)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout

    # Fine-tuning from the imported model: the model section comes from its checkpoint.
    fine = config | {"model": {"dropout": 0.0}, "data": {"input": [str(corpus)]}}
    fine["train"] = config["train"] | {"out_dir": str(tmp_path / "fine"), "max_iters": 3,
                                       "init_from": str(tmp_path / "imported")}  # fmt: skip
    (tmp_path / "fine.yaml").write_text(yaml.safe_dump(fine))
    result = llm("train", str(tmp_path / "fine.yaml"))
    assert result.returncode == 0, result.stderr
    assert "starting from the weights of" in result.stdout
    _, _, cfg, ckpt = load_model(tmp_path / "fine", name="last.pt")
    assert ckpt["step"] == 3 and cfg.model.pos_emb == "rope" and cfg.model.n_embd == 32
    vals = {
        d: [r["val_loss"] for r in _rows(tmp_path / d) if r["val_loss"]] for d in ("run", "fine")
    }
    # The fine-tuned run starts where the trained one ended (a fresh model would be at ln 300).
    assert abs(vals["fine"][0] - vals["run"][-1]) < 0.2 and vals["run"][0] > 5.0

    fine["model"] = {"n_embd": 64}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(fine | {"train": fine["train"] | {
        "out_dir": str(tmp_path / "bad")}}))  # fmt: skip
    result = llm("train", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "model.n_embd is 32 in the checkpoint but 64 in the config" in result.stderr


def _rows(run: Path) -> list[dict]:
    from llm_tiny.train.metrics import read_metrics

    return read_metrics(run / "metrics.csv")


def test_init_from_fills_the_model_and_refuses_another_tokenizer(tmp_path, hf_tokenizer):
    from llm_tiny.config import load_config
    from llm_tiny.errors import UserError
    from llm_tiny.train.checkpoint import start_from
    from tok.bpe import Tokenizer

    hf_folder(tmp_path / "hf", "llama", hf_tokenizer)
    importer.main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "base")])
    flags = [f"--train.init_from={tmp_path / 'base'}", f"--train.out_dir={tmp_path / 'new'}"]
    cfg, weights = start_from(load_config(None, flags))
    assert (cfg.model.n_kv_head, cfg.model.tie_weights, cfg.model.mlp) == (2, False, "swiglu")
    assert cfg.data.vocab_size == 400 and weights["wte.weight"].shape == (408, 64)
    copied = Tokenizer.load(tmp_path / "new" / "tok" / "bpe.json")  # the run trains with it
    assert copied.fingerprint == Tokenizer.load(tmp_path / "base" / "tok" / "bpe.json").fingerprint
    other = tmp_path / "other.json"
    Tokenizer.train(TEXT, 300, workers=1).save(other)
    with pytest.raises(UserError, match="its tokenizer differs"):
        start_from(load_config(None, [*flags, f"--data.tokenizer={other}"]))


def test_import_reads_bare_gpt2_keys_and_pytorch_bin(tmp_path, hf_tokenizer):
    """The original GPT-2 files name tensors without "transformer." (`GPT2Model`'s keys), and
    older folders hold `pytorch_model.bin` (read with `weights_only=True`)."""
    from safetensors.torch import load_file

    hf_folder(tmp_path / "hf", "gpt2", hf_tokenizer)
    importer.main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "a")])
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(bare, tmp_path / "hf" / "pytorch_model.bin")
    assert importer.main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "b")]) == 0
    a, b = load_model(tmp_path / "a")[0].state_dict(), load_model(tmp_path / "b")[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
