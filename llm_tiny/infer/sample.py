"""The sampler CLI: `python -m llm_tiny sample --ckpt RUN_OR_FILE [options]`.

Loads a checkpoint (a run directory means its `best.pt`), encodes the prompt with the
checkpoint's own tokenizer, and generates with temperature, top-k and nucleus sampling through
the one decoding engine (`llm_tiny.infer.engine`), or deterministically with beam search.
Defaults for every option come from the run's `sample` config section
(`SamplingParams.from_config`). Same seed, same text; `--stream` prints
tokens as they are produced and never half a UTF-8 character.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from llm_tiny.config import sampling_problem
from llm_tiny.errors import ArgumentParser, UserError, add_ckpt_arg, add_device_arg, run_cli
from llm_tiny.infer.params import SamplingParams, add_sampling_args
from llm_tiny.infer.prompt import eot_ids, prompt_ids, text_of


def read_prompt(prompt: str | None, prompt_file: str | None) -> str | None:
    """The prompt given by --prompt or --prompt-file; None when neither was given."""
    if prompt_file is not None:
        try:
            return Path(prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{prompt_file}: prompt file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{prompt_file}: cannot read prompt file ({e})") from None
    return prompt


def run_prompt(tokenizer: Any, cfg: Any, prompt: str | None = None, note=print) -> list[int]:
    """The ids to continue: `prompt`, else the run's `sample.prompt`, else (null, the default
    and what `make train DATA=...` asks for) the start of the run's own text:
    - the end-of-text token alone when the tokenizer has one (a run on documents): the model
      begins a document of its own;
    - otherwise the first whole line of the validation text (at most 80 characters and half the
      context), read from the run's prepared data, or a newline when those are gone."""
    prompt = cfg.sample.prompt if prompt is None else prompt
    if prompt is not None:
        return prompt_ids(tokenizer, prompt, cfg.model.block_size, note)
    if eot := eot_ids(tokenizer, cfg):
        return eot
    line = _first_val_line(tokenizer, cfg) or "\n"
    return tokenizer.encode(line)[: max(1, cfg.model.block_size // 2)]  # room to go on


def _first_val_line(tokenizer: Any, cfg: Any) -> str | None:
    from llm_tiny.data import load_prepared

    try:
        data_dir = cfg.data.resolved(cfg.train.out_dir).data_dir
        stream = load_prepared(data_dir, tokenizer).tokens("val")
        text = tokenizer.decode(stream[0 : min(len(stream), 512)].tolist())
    except (UserError, OSError):
        return None
    lines = [line.strip() for line in text.split("\n")[1:-1]]  # whole lines only
    return next((line[:80] for line in lines if line), None)


def sample_text(model: Any, tokenizer: Any, cfg: Any, device: torch.device, note=print) -> str:
    """One sample with the run config's `sample` settings (the end-of-training sample)."""
    from llm_tiny.infer.sampling import generate

    ids = run_prompt(tokenizer, cfg, note=note)
    stops = eot_ids(tokenizer, cfg)
    params = SamplingParams.from_config(cfg.sample, stop_tokens=stops)
    generator = torch.Generator(device=device).manual_seed(params.seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate(model, idx, params=params, generator=generator)
    return text_of(tokenizer, out[0].tolist(), stops)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="llm_tiny sample", description="Generate text from a checkpoint.")
    add_ckpt_arg(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--prompt",
        help="text to continue (default: the run's sample.prompt; if null, a new document for "
        "a run of documents, else the first line of its validation text)",
    )
    group.add_argument("--prompt-file", help="read the prompt from this file")
    add_sampling_args(p)
    p.add_argument("--num-samples", type=int, help="how many independent samples")
    p.add_argument("--beam-width", type=int, default=0, help="beam search with this width")
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
    from llm_tiny.infer.beam import beam_search
    from llm_tiny.infer.sampling import generate, generate_stream
    from llm_tiny.runtime import resolve_device
    from llm_tiny.train.checkpoint import load_model
    from tok.bpe import StreamDecoder

    device = resolve_device(args.device)
    model, tokenizer, cfg, _ = load_model(args.ckpt, device)
    stops = eot_ids(tokenizer, cfg, args.stop_at_eot)
    params = SamplingParams.from_args(cfg.sample, args, stop_tokens=stops)
    num_samples = cfg.sample.num_samples if args.num_samples is None else args.num_samples
    problem = sampling_problem(lambda k: "--num-samples", num_samples=num_samples)
    if problem is not None:
        raise UserError(problem)
    if args.beam_width < 0:
        raise UserError(
            f"--beam-width must be >= 1 (0 disables beam search), got {args.beam_width}"
        )
    if args.beam_width and num_samples != 1:
        raise UserError("beam search is deterministic: use --num-samples 1 with --beam-width")

    given = read_prompt(args.prompt, args.prompt_file)
    ids = run_prompt(tokenizer, cfg, given, note=lambda m: print(m, file=sys.stderr))
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    # NOTE: one generator for every sample, so sample i + 1 goes on where sample i stopped.
    generator = torch.Generator(device=device).manual_seed(params.seed)

    out = sys.stdout
    for i in range(num_samples):
        if num_samples > 1:
            print(f"---------- sample {i + 1} ----------", file=out)
        if args.beam_width:
            tokens = beam_search(
                model, idx, params.max_new_tokens, beam_width=args.beam_width, stop_tokens=stops,
                repetition_penalty=params.repetition_penalty,
                no_repeat_ngram=params.no_repeat_ngram,
            )  # fmt: skip
            out.write(text_of(tokenizer, tokens[0].tolist(), stops))
        elif args.stream:
            decoder = StreamDecoder(tokenizer)
            out.write(text_of(tokenizer, ids, stops))
            out.flush()
            for token in generate_stream(model, idx, params=params, generator=generator):
                if token in stops:
                    break
                out.write(decoder.push(token))
                out.flush()
            out.write(decoder.flush())
        else:
            tokens = generate(model, idx, params=params, generator=generator)
            out.write(text_of(tokenizer, tokens[0].tolist(), stops))
        out.write("\n")
        out.flush()
    return 0
