"""Helpers shared by test files of several tiers (tests/ is on the import path: pyproject's
`pythonpath`), so that splitting a file by tier never copies its helpers."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch
import yaml

from llm_tiny.config import DataConfig, ModelConfig
from llm_tiny.model import TinyGPT

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "tiny.txt"


# ----------------------------------------------------------------------------- models


def lively_model(seed: int = 0, **config) -> TinyGPT:
    """A tiny model in eval mode with every parameter ~ N(0, 0.3), biases and gains included:
    varied, confident predictions. GPT-2's initialisation gives near-uniform outputs and zero
    biases, which hide mistakes (greedy decoding would repeat one token)."""
    torch.manual_seed(seed)
    model = TinyGPT(ModelConfig(**config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


# ----------------------------------------------------------------------------- prepared data


def corpus_jsonl(path: Path, copies: int = 1) -> Path:
    """Tiny Shakespeare's speeches as JSON Lines documents, `copies` times over."""
    speeches = [s for s in CORPUS.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    with path.open("w") as f:
        for c in range(copies):
            for i, s in enumerate(speeches):
                f.write(json.dumps({"text": f"{c}.{i}\n{s}"}) + "\n")
    return path


def data_cfg(tmp_path: Path, jsonl: Path, **kw) -> DataConfig:
    values = {
        "input": (str(jsonl),),
        "tokenizer": str(tmp_path / "tok.json"),
        "vocab_size": 300,
        "data_dir": str(tmp_path / "data"),
        "shard_tokens": 5000,
    }
    return DataConfig(**{**values, **kw})


def shard_hashes(data_dir: Path) -> dict[str, str]:
    meta = json.loads((data_dir / "meta.json").read_text())
    return {s["file"]: s["sha256"] for split in meta["splits"].values() for s in split["shards"]}


# ----------------------------------------------------------------------------- sweeps


def write_base(tmp_path: Path) -> Path:
    """A tiny byte-level run config over a small made-up text, all paths inside tmp_path."""
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "red", "big", "fox"]
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(600)]
    text = tmp_path / "text.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = {
        "model": {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 16},
        "data": {
            "input": [str(text)],
            "tokenizer": str(tmp_path / "tok" / "bytes.json"),
            "vocab_size": 256,
            "data_dir": str(tmp_path / "data"),
        },
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_iters": 2},
        "train": {
            "out_dir": str(tmp_path / "run"),
            "max_iters": 10,
            "batch_size": 4,
            "eval_interval": 100,
            "eval_iters": 4,
            "eval_batch_size": 8,
            "log_interval": 2,
            "ckpt_interval": 100,
            "device": "cpu",
            "sample_at_end": False,
        },
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    return path


def write_spec(tmp_path: Path, **fields) -> Path:
    spec = {
        "base": "base.yaml",
        "sweep_dir": str(tmp_path / "sweep"),
        "method": "grid",
        "space": {"optim.lr": [1.0e-3, 3.0e-3]},
        "budget": {"iters": 6},
        **fields,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- pictures


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG, read back with matplotlib."""
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 0
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.std() > 0  # not a blank canvas
    return pixels.shape[1], pixels.shape[0]


def expected(figsize: tuple[float, float]) -> tuple[int, int]:
    """The pixel size of a figure of `figsize` inches at the project's DPI."""
    from llm_tiny.plots import DPI

    return round(figsize[0] * DPI), round(figsize[1] * DPI)


# ----------------------------------------------------------------------------- scripts


def load_script(name: str):
    """`benchmarks/NAME.py` imported as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_checkpoint(path: Path, model: TinyGPT, tok) -> Path:
    """A minimal checkpoint of `model` (what `load_model` reads), as a run directory."""
    import dataclasses

    from llm_tiny.config import RunConfig, config_to_dict
    from llm_tiny.train.checkpoint import FORMAT, VERSION, save_checkpoint

    cfg = RunConfig(model=model.config)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, vocab_size=tok.vocab_size))
    ckpt = {
        "format": FORMAT, "version": VERSION, "config": config_to_dict(cfg),
        "model": model.state_dict(), "step": 0, "tokenizer": tok.to_json(),
        "tokenizer_fingerprint": tok.fingerprint,
    }  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, path / "best.pt")
    return path


# ----------------------------------------------------------------------------- conversations

WORDS = ["hi", "yes", "no", "ok", "été", "中", "", "a b", " x\n"]


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """`n` short random conversations: an optional system message, one to three turns, some
    content empty, some unicode; each ends with an assistant turn."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = [{"role": "system", "content": rng.choice(WORDS)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": rng.choice(WORDS)},
                         {"role": "assistant", "content": rng.choice(WORDS[:6])}]  # fmt: skip
        out.append(messages)
    return out


def write_conversations(path: Path, n: int, seed: int = 0) -> Path:
    """`conversations(n, seed)` as JSON Lines, `{"messages": [...]}` a line."""
    path.write_text(
        "".join(
            json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in conversations(n, seed)
        ),
        encoding="utf-8",
    )
    return path


def sft_config(tmp: Path, base: Path, **train) -> dict:
    """A chat run's config dict: `base` (a run) fine-tuned on 200 conversations in `tmp`."""
    tmp.mkdir(parents=True, exist_ok=True)
    chats = write_conversations(tmp / "chats.jsonl", 200)
    return {
        "data": {"kind": "chat", "input": [str(chats)], "val_fraction": 0.1, "workers": 1},
        "optim": {"lr": 3e-3, "warmup_iters": 2},
        "train": {"init_from": str(base), "out_dir": str(tmp / "chat"), "max_iters": 6,
                  "batch_size": 8, "eval_interval": 3, "eval_iters": 2, "log_interval": 2,
                  "threads": 1, "device": "cpu", "sample_at_end": False, **train},
    }  # fmt: skip


# ----------------------------------------------------------------------------- Hugging Face folders


def hf_bpe_tokenizer(text: str, eot: str):
    """A GPT-2-style byte-level BPE trained by HF `tokenizers` on `text` (ids in its own order),
    with the special token `eot`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[eot], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator([text], trainer)
    return tok


def hf_folder(path: Path, kind: str, hf_tokenizer, eot: str = "<|endoftext|>") -> torch.nn.Module:
    """Save a random tiny HF model of `kind` and the tokenizer in `path`; return the model."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )  # fmt: skip

    torch.manual_seed(0)
    vocab, eot_id = hf_tokenizer.get_vocab_size(), hf_tokenizer.token_to_id(eot)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=200,
            bos_token_id=eot_id, eos_token_id=eot_id,
        )  # fmt: skip
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=vocab + 8, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=eot_id,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    with torch.no_grad():  # norms and biases away from 1 and 0, so each one matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=hf_tokenizer, eos_token=eot).save_pretrained(path)
    return model.eval()
