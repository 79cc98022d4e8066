"""The export command: `python -m llm_tiny export --ckpt RUN --format hf|gguf --out PATH`.

`--format hf` writes a folder that `transformers` loads with `AutoModelForCausalLM` and
`AutoTokenizer` (`config.json`, `model.safetensors`, `generation_config.json`,
`tokenizer.json`, `tokenizer_config.json`); `--format gguf` writes one `.gguf` file for
llama.cpp and Ollama (`--dtype f32|f16|q8_0`; `bf16` for hf). Nothing is written unless all of it is: the
folder is assembled beside PATH and renamed into place.

A LoRA run (`lora.rank > 0`) exports as its adapters merged into its base (`--merge` says so;
it is what hf and gguf always write), or with `--format peft` as the adapters alone, in PEFT's
format, for the hf export of the base (`--base-hf` fills in `base_model_name_or_path`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from llm_tiny.errors import ArgumentParser, UserError, add_ckpt_arg, run_cli
from llm_tiny.export.files import check_out, need, staged_dir

FORMATS = ("hf", "gguf", "peft")


def build_parser() -> ArgumentParser:
    from llm_tiny.export.gguf import DTYPES

    p = ArgumentParser(
        prog="llm_tiny export",
        description="Export a checkpoint to Hugging Face transformers or GGUF (llama.cpp).",
    )
    add_ckpt_arg(p)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="hf",
        help="hf (folder), gguf (file) or peft (a LoRA run's adapters, a folder)",
    )
    p.add_argument("--out", required=True, help="output folder (hf) or .gguf file (gguf)")
    p.add_argument(
        "--dtype",
        choices=(*DTYPES, "bf16"),
        default="f32",
        help="weights' type: f32 | f16 | bf16 (hf) | q8_0 (gguf)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--merge",
        action="store_true",
        help="a LoRA run: write its adapters merged into the base (what hf and gguf write)",
    )
    p.add_argument("--base-hf", help="peft: the base model's hf export, named in the config")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: export(args), "llm_tiny export")


def export(args: Any) -> int:
    from llm_tiny.export.gguf import check_gguf_exportable
    from llm_tiny.export.hf import ARCHITECTURES, hf_shape
    from llm_tiny.model import MODELS
    from llm_tiny.train.checkpoint import load_model

    t0 = time.perf_counter()
    out = Path(args.out)
    check_out(out, args.force)
    if args.format == "hf" and args.dtype == "q8_0":
        raise UserError("--dtype q8_0 is for --format gguf; hf takes f32, f16 or bf16")
    if args.format == "gguf" and args.dtype == "bf16":
        raise UserError("--dtype bf16 is for --format hf; gguf takes f32, f16 or q8_0")
    if args.format == "peft":
        if args.merge:
            raise UserError("--merge writes a whole model: use it with --format hf or gguf")
        return write_peft(args, out, t0)
    # Every arch loads, so that `hf_shape` refuses an encoder by name. LoRA adapters come merged.
    model, tokenizer, cfg, ckpt = load_model(args.ckpt, "cpu", archs=tuple(MODELS))
    shape = hf_shape(cfg.model)  # refuses flags with no counterpart before any work
    if args.format == "gguf":
        check_gguf_exportable(cfg.model)
    eot = _eot(tokenizer, cfg)
    state = model.state_dict()
    if args.format == "hf":
        write_hf(out, cfg, state, tokenizer, eot=eot, dtype=args.dtype)
        what = f"{ARCHITECTURES[shape]} folder"
    else:
        need("gguf")
        from llm_tiny.export.gguf import write_gguf

        out.parent.mkdir(parents=True, exist_ok=True)
        name = Path(args.ckpt).resolve().name if Path(args.ckpt).is_dir() else out.stem
        write_gguf(out, cfg.model, state, tokenizer, eot=eot, dtype=args.dtype, name=name)
        what = f"GGUF file (llama, {args.dtype})"
    merged = ", LoRA adapters merged into their base" if "base" in ckpt else ""
    print(f"wrote {out}: {what}{merged} in {time.perf_counter() - t0:.1f} s")
    return 0


def write_peft(args: Any, out: Path, t0: float) -> int:
    """`--format peft`: a LoRA run's adapters as a PEFT folder, atomically."""
    from llm_tiny.export.peft import peft_adapter
    from llm_tiny.model.lora import split_state
    from llm_tiny.train.checkpoint import (
        checkpoint_config,
        load_checkpoint,
        model_weights,
        resolve_checkpoint_path,
    )

    path = resolve_checkpoint_path(args.ckpt)
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    if "base" not in ckpt:
        raise UserError(f"{path}: not a LoRA run (lora.rank 0): export it with --format hf")
    if cfg.lora.tokens:  # PEFT adapters load over the base export, which lacks those rows
        raise UserError(
            f"{path}: also trains the rows of tokens {list(cfg.lora.tokens)} (lora.tokens, the "
            "chat tokens of a chat run), which a PEFT adapter over the base's export cannot "
            "carry: export the merged model instead (--merge --format hf)"
        )
    model_weights(ckpt, path)  # the base must be there and be the adapters' own
    config, tensors = peft_adapter(split_state(ckpt["model"])[1], cfg.model, cfg.lora, args.base_hf)
    save_file = need("safetensors.torch").save_file
    with staged_dir(out) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        text = json.dumps(config, indent=2) + "\n"
        (tmp / "adapter_config.json").write_text(text, encoding="utf-8")
    n = sum(t.numel() for t in tensors.values())
    print(f"wrote {out}: PEFT LoRA adapters ({n:,} weights) in {time.perf_counter() - t0:.1f} s")
    return 0


TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def _eot(tokenizer: Any, cfg: Any) -> int | None:
    from llm_tiny.infer.prompt import eot_ids

    ids = eot_ids(tokenizer, cfg)
    return ids[0] if ids else None


def write_hf(
    out: Path,
    cfg: Any,
    state: dict[str, torch.Tensor],
    tokenizer: Any,
    *,
    eot: int | None,
    dtype: str = "f32",
) -> None:
    """The Hugging Face folder for a model (`cfg`: the run config) at `out`, atomically."""
    from llm_tiny.export.hf import hf_config, to_hf
    from llm_tiny.export.hf_tokenizer import STAND_IN_BYTE, tokenizer_config, tokenizer_json
    from llm_tiny.infer.prompt import chat_stop_tokens
    from tok.chat import JINJA_TEMPLATE

    save_file = need("safetensors.torch").save_file
    stand_in = None
    if eot is None and not any(STAND_IN_BYTE[0] in pair for pair in tokenizer.merges):
        # NOTE: a run trained on plain text has no end-of-text token, yet lm-eval (its
        # loglikelihood prefix, its stop string) and HF padding need a BOS/EOS id. Byte 0xFF
        # never occurs in UTF-8 text: its token is never trained on nor produced by encoding
        # text, so naming it `<|endoftext|>` changes no probability of any text, and the
        # vocabulary keeps its size (`hf_tokenizer.tokenizer_json`). A merge list that uses
        # the byte (a tokenizer trained on other than UTF-8 text) keeps the export without one.
        eot, stand_in = STAND_IN_BYTE[0], cfg.data.eot or "<|endoftext|>"
    config = hf_config(cfg.model, eot, eot) | {"torch_dtype": DTYPE_NAMES[dtype]}
    tensors = {k: v.to(TORCH_DTYPES[dtype]) for k, v in to_hf(state, cfg.model).items()}
    eot_name = stand_in or tokenizer.decode([eot])
    # A chat run's reply ends at its end-of-turn token: generation stops at either.
    turn = chat_stop_tokens(tokenizer)
    eos = [e for e in (eot, *turn) if e is not None]
    eos_ids = eos if turn else eot
    generation = {"bos_token_id": eot, "eos_token_id": eos_ids, "pad_token_id": eot}
    template = JINJA_TEMPLATE if turn else None
    with staged_dir(out) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        files = {
            "config.json": config,
            "generation_config.json": generation,
            "tokenizer.json": tokenizer_json(tokenizer, stand_in),
            "tokenizer_config.json": tokenizer_config(
                eot_name, eot_name, cfg.model.block_size, template
            ),
        }
        for name, data in files.items():
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
            (tmp / name).write_text(text, encoding="utf-8")
