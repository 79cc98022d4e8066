"""The import command: `python -m llm_tiny import --hf DIR --out RUN`.

Reads a local Hugging Face folder of a GPT-2 or Llama model (`config.json`, the weights as
`model.safetensors`, sharded safetensors or `pytorch_model.bin`, and a byte-level BPE
`tokenizer.json`) and writes a run directory that `sample`, `eval`, `export` and
`train.init_from` read: `RUN/best.pt` (the weights, the config, our tokenizer; step 0),
`RUN/tok/bpe.json` and `RUN/config.yaml`. Nothing is downloaded: a model in the HF cache is the
snapshot folder `~/.cache/huggingface/hub/models--NAME/snapshots/HASH`.

HF token ids and ours differ (ours: the 256 bytes, then one id per merge in rank order, then the
special tokens), so the embedding rows (and an untied LM head's) are reordered to our ids.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llm_tiny.errors import ArgumentParser, UserError, run_cli
from llm_tiny.export.files import check_out, need, staged_dir
from tok.errors import first_line


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="llm_tiny import",
        description="Import a local Hugging Face GPT-2 or Llama folder as an llm_tiny run.",
    )
    p.add_argument("--hf", required=True, help="the HF model folder (a snapshot in the HF cache)")
    p.add_argument("--out", required=True, help="the run directory to write")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: import_hf(Path(args.hf), Path(args.out), args.force), "llm_tiny import")


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (an HF model folder has {what})") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({first_line(e)})") from None


def read_weights(folder: Path) -> dict[str, Tensor]:
    """All tensors of an HF folder as float32: safetensors (one file or an index of shards),
    else `pytorch_model.bin` read with `weights_only=True` (no code runs)."""
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(read_json(index, "an index")["weight_map"].values())) if index.exists() else []
    )
    if not files and (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    out: dict[str, Tensor] = {}
    try:
        if files:
            load_file = need("safetensors.torch").load_file
            for name in files:
                out.update(load_file(str(folder / name)))
        elif (folder / "pytorch_model.bin").exists():
            out = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise UserError(
                f"{folder}: no weights (model.safetensors, model.safetensors.index.json or "
                "pytorch_model.bin)"
            )
    except UserError:
        raise
    except Exception as e:  # safetensors and torch raise many kinds for a bad file
        raise UserError(f"{folder}: cannot read the weights ({first_line(e)})") from None
    return {k: v.to(torch.float32) for k, v in out.items()}


def reorder_rows(t: Tensor, id_map: dict[int, int], rows: int) -> Tensor:
    """Rows of an embedding (or LM head) from HF ids to ours: row `id_map[i]` of the result is
    row `i` of `t`; HF rows beyond the tokenizer keep their order after our tokens."""
    extra = [i for i in range(t.shape[0]) if i not in id_map]
    order = dict(id_map) | {i: len(id_map) + k for k, i in enumerate(extra)}
    out = t.new_zeros(rows, t.shape[1])
    src = torch.tensor(list(order.keys()))
    out[torch.tensor(list(order.values()))] = t[src]
    return out


def import_hf(folder: Path, out: Path, force: bool = False) -> int:
    from llm_tiny.config import RunConfig, config_to_dict, save_config, validate
    from llm_tiny.export.hf import from_hf, model_config_from_hf
    from llm_tiny.export.hf_tokenizer import from_tokenizer_json
    from llm_tiny.model import TinyGPT
    from llm_tiny.train.checkpoint import FORMAT, VERSION, save_checkpoint
    from llm_tiny.train.rundir import BEST, CONFIG_FILE

    t0 = time.perf_counter()
    if not folder.is_dir():
        raise UserError(f"--hf {folder}: not a folder (give the HF model folder)")
    check_out(out, force)
    hf_config = read_json(folder / "config.json", "config.json")
    model_cfg = model_config_from_hf(hf_config, str(folder / "config.json"))
    tok_path = folder / "tokenizer.json"
    tok_data = read_json(tok_path, "tokenizer.json")
    tok, id_map = from_tokenizer_json(tok_data, str(tok_path))
    if (tok_data.get("model") or {}).get("ignore_merges"):
        print(
            "note: this tokenizer sets ignore_merges (a chunk that is a whole token is kept "
            "whole); ours always applies the merges, so a rare word may split differently"
        )
    if max(id_map) >= model_cfg.vocab_size:
        raise UserError(
            f"{tok_path}: token id {max(id_map)} has no row in the model "
            f"(vocab_size {model_cfg.vocab_size})"
        )
    state = from_hf(read_weights(folder), model_cfg, str(folder))
    rows = max(model_cfg.vocab_size, tok.vocab_size)
    for key in ("wte.weight", "lm_head.weight"):
        state[key] = reorder_rows(state[key], id_map, rows)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=rows)
    model = TinyGPT(model_cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{folder}: the weights do not fit the config ({first_line(e)})") from None

    _check_chat_template(folder, tok)
    eos = _special_name(hf_config.get("eos_token_id"), id_map, tok)
    run_cfg = RunConfig(model=model_cfg)
    run_cfg = dataclasses.replace(
        run_cfg,
        data=dataclasses.replace(
            run_cfg.data, vocab_size=tok.vocab_size, pattern=tok.pattern_name or tok.pattern,
            special_tokens=tuple(tok.special_tokens), eot=eos,
        ),
        train=dataclasses.replace(run_cfg.train, out_dir=str(out)),
    )  # fmt: skip
    validate(run_cfg, "imported config")
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "config": config_to_dict(run_cfg),
        "model": model.state_dict(),
        "step": 0,
        "tokens_seen": 0,
        "best_val_loss": math.inf,
        "tokenizer": tok.to_json(),
        "tokenizer_fingerprint": tok.fingerprint,
        "imported_from": str(folder.resolve()),
    }
    with staged_dir(out) as tmp:
        save_checkpoint(ckpt, tmp / BEST)
        tok.save(tmp / "tok" / "bpe.json")
        save_config(run_cfg, tmp / CONFIG_FILE)
    arch = (hf_config.get("architectures") or ["?"])[0]
    print(
        f"wrote {out}: {arch} as TinyGPT ({model.num_params() / 1e6:.2f}M parameters, "
        f"{tok.vocab_size} tokens) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _check_chat_template(folder: Path, tok: Any) -> None:
    """Say whether the folder's chat template comes along: a run chats with our template
    when its tokenizer has the turn tokens, so a template ours reproduces is kept by keeping
    them, and any other is left behind (one line; the run then uses the plain template)."""
    from llm_tiny.export.hf_tokenizer import reproduces_template
    from tok.chat import has_template

    path = folder / "tokenizer_config.json"
    source = (
        read_json(path, "tokenizer_config.json").get("chat_template") if path.is_file() else None
    )
    if isinstance(source, list):  # several named templates: the default one
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if not source:
        return
    if has_template(tok) and reproduces_template(source):
        print(f"kept the chat template of {path} (llm_tiny's: <|user|>...<|end|>)")
    else:
        print(f"note: the chat template of {path} is not one llm_tiny can reproduce; the run "
              "has no chat template (chat and the server use the plain User:/Assistant: one)")  # fmt: skip


def _special_name(hf_id: Any, id_map: dict[int, int], tok: Any) -> str | None:
    """Our special token for the HF id `hf_id` (the end-of-text token), or None."""
    if isinstance(hf_id, list):
        hf_id = hf_id[0] if hf_id else None
    if hf_id is None or hf_id not in id_map:
        return None
    by_id = {i: name for name, i in tok.special_tokens.items()}
    return by_id.get(id_map[hf_id])
