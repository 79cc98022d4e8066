"""The sampler CLI: `python -m llm_tiny sample --ckpt RUN_OR_FILE [options]`.

Loads a checkpoint (a run directory means its `best.pt`), encodes the prompt with the
checkpoint's own tokenizer, and generates with temperature, top-k and nucleus sampling through
the KV cache (`llm_tiny.infer.sampling`), or deterministically with beam search. Defaults for every
option come from the run's `sample` config section. Same seed, same text; `--stream` prints
tokens as they are produced and never half a UTF-8 character.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llm_tiny.config import SAMPLING_RULES, sampling_problem
from llm_tiny.errors import ArgumentParser, UserError, add_ckpt_arg, add_device_arg, run_cli


def read_prompt(prompt: str | None, prompt_file: str | None, default: str) -> str:
    if prompt_file is not None:
        try:
            return Path(prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{prompt_file}: prompt file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{prompt_file}: cannot read prompt file ({e})") from None
    return default if prompt is None else prompt


def prompt_ids(
    tokenizer: Any,
    prompt: str,
    block_size: int,
    note: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> list[int]:
    """The prompt's token ids; a prompt longer than the context keeps its last `block_size`
    tokens (with a `note`), an empty one is a UserError."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UserError("the prompt is empty; give --prompt with at least one character")
    if len(ids) > block_size:
        note(
            f"note: prompt is {len(ids)} tokens, longer than the context ({block_size}); "
            f"keeping its last {block_size} tokens"
        )
        ids = ids[-block_size:]
    return ids


def eot_ids(tokenizer: Any, cfg: Any, stop: bool | None = None) -> list[int]:
    """The end-of-text token to stop at: the run's `data.eot` (default `<|endoftext|>`) when
    the tokenizer has it and `stop` is not False; [] otherwise."""
    name = cfg.data.eot or "<|endoftext|>"
    return (
        [tokenizer.special_tokens[name]]
        if stop is not False and name in tokenizer.special_tokens
        else []
    )


def text_of(tokenizer: Any, ids: list[int], stops: list[int]) -> str:
    """The text of `ids` up to (not including) the first stop token."""
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return tokenizer.decode(ids[:cut])


def sample_text(model: Any, tokenizer: Any, cfg: Any, device: torch.device, note=print) -> str:
    """One sample with the run config's `sample` settings (the end-of-training sample)."""
    from llm_tiny.infer.sampling import generate

    s = cfg.sample
    ids = prompt_ids(tokenizer, s.prompt, cfg.model.block_size, note)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(s.seed)
    stops = eot_ids(tokenizer, cfg)
    out = generate(
        model, idx, s.max_new_tokens, s.temperature, s.top_k, s.top_p, stops, generator,
        repetition_penalty=s.repetition_penalty, no_repeat_ngram=s.no_repeat_ngram,
    )  # fmt: skip
    return text_of(tokenizer, out[0].tolist(), stops)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="llm_tiny sample", description="Generate text from a checkpoint.")
    add_ckpt_arg(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", help="text to continue (default: the run's sample.prompt)")
    group.add_argument("--prompt-file", help="read the prompt from this file")
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate")
    p.add_argument("--temperature", type=float, help="0 = greedy; higher = more random")
    p.add_argument("--top-k", type=int, help="keep only the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus: smallest set with probability >= p")
    p.add_argument("--num-samples", type=int, help="how many independent samples")
    p.add_argument("--seed", type=int, help="random seed (same seed, same text)")
    p.add_argument("--beam-width", type=int, default=0, help="beam search with this width")
    p.add_argument(
        "--repetition-penalty", type=float, help="> 1 makes tokens already in the text less likely"
    )
    p.add_argument("--no-repeat-ngram", type=int, help="never repeat an n-gram of N tokens")
    p.add_argument(
        "--stop-at-eot",
        action=argparse.BooleanOptionalAction,
        help="stop at the end-of-text token (default: on when the tokenizer has one)",
    )
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    add_device_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _sample(args), "llm_tiny sample")


def _sample(args) -> int:
    from llm_tiny.infer.sampling import beam_search, generate, generate_stream
    from llm_tiny.runtime import resolve_device
    from llm_tiny.train.checkpoint import load_model
    from tok.bpe import StreamDecoder

    device = resolve_device(args.device)
    model, tokenizer, cfg, _ = load_model(args.ckpt, device)
    s = cfg.sample
    # Each flag left out takes the run's `sample` value (the flags are named after its fields).
    v = {
        k: getattr(s, k) if getattr(args, k) is None else getattr(args, k)
        for k in (*SAMPLING_RULES, "seed")
    }
    num_samples, max_new = v["num_samples"], v["max_new_tokens"]
    problem = sampling_problem(
        lambda k: "--" + k.replace("_", "-"), **{k: v[k] for k in SAMPLING_RULES}
    )
    if problem is not None:
        raise UserError(problem)
    if args.beam_width < 0:
        raise UserError(
            f"--beam-width must be >= 1 (0 disables beam search), got {args.beam_width}"
        )
    if args.beam_width and num_samples != 1:
        raise UserError("beam search is deterministic: use --num-samples 1 with --beam-width")

    prompt = read_prompt(args.prompt, args.prompt_file, s.prompt)
    ids = prompt_ids(tokenizer, prompt, cfg.model.block_size)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(v["seed"])
    stops = eot_ids(tokenizer, cfg, args.stop_at_eot)
    repeats = {k: v[k] for k in ("repetition_penalty", "no_repeat_ngram")} | {"stop_tokens": stops}
    options = {k: v[k] for k in ("temperature", "top_k", "top_p")} | {"generator": generator}
    options.update(repeats)

    out = sys.stdout
    for i in range(num_samples):
        if num_samples > 1:
            print(f"---------- sample {i + 1} ----------", file=out)
        if args.beam_width:
            tokens = beam_search(model, idx, max_new, beam_width=args.beam_width, **repeats)
            out.write(text_of(tokenizer, tokens[0].tolist(), stops))
        elif args.stream:
            decoder = StreamDecoder(tokenizer)
            out.write(tokenizer.decode(ids))
            out.flush()
            for token in generate_stream(model, idx, max_new, **options):
                if token in stops:
                    break
                out.write(decoder.push(token))
                out.flush()
            out.write(decoder.flush())
        else:
            tokens = generate(model, idx, max_new, **options)
            out.write(text_of(tokenizer, tokens[0].tolist(), stops))
        out.write("\n")
        out.flush()
    return 0
