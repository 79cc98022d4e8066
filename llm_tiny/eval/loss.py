"""Evaluation: loss, perplexity and bits per byte over a whole split.

The loss is the mean cross-entropy (nats) over every scored target token; perplexity is its
exponential. Both depend on the tokenizer: a bigger vocabulary has fewer, harder tokens. Bits
per byte does not, so runs with different tokenizers compare on it:

    bpb = (sum of the token losses in nats) / (ln 2 x bytes of the text those tokens encode)

For a token stream the split is cut into windows of `block_size` (`data.eval_windows`):
without a stride they do not overlap and every token but the first of the split is scored
exactly once (the first has no context; the bytes count leaves it out too). With a stride
each window advances by `stride` tokens and scores only those, so every scored token sees at
least `block_size - stride` tokens of context: a lower, fairer loss for a fixed context, at
`block_size / stride` times the cost.

Evaluating only `eval_iters` batches (a cheaper estimate during training: a fixed subset spread
over the split, `data.batches.spread`) scales the byte count by the fraction of targets scored;
on the full split bits per byte are exact.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule

from llm_tiny.data import TokenArray, load_prepared, open_split
from llm_tiny.errors import ArgumentParser, UserError, add_ckpt_arg, add_device_arg, run_cli

LN2 = math.log(2.0)


def bits_per_byte(loss_sum: float, n_bytes: int) -> float:
    """Total loss in nats over the bytes it covers, in bits: `loss_sum / (n_bytes ln 2)`.

    >>> round(bits_per_byte(math.log(2) * 3.0, 3), 12)  # 1 bit per byte
    1.0
    """
    if n_bytes <= 0:
        return math.nan
    return loss_sum / (n_bytes * LN2)


def summarize(loss_sum: float, n_targets: int, n_bytes: float) -> dict[str, float]:
    """`{loss, ppl, bpb, tokens}` from a loss sum over `n_targets` tokens covering `n_bytes`."""
    if n_targets == 0:
        return {"loss": math.nan, "ppl": math.nan, "bpb": math.nan, "tokens": 0}
    loss = loss_sum / n_targets
    ppl = math.exp(loss) if loss < 700 else math.inf
    return {"loss": loss, "ppl": ppl, "bpb": bits_per_byte(loss_sum, n_bytes), "tokens": n_targets}


@torch.no_grad()
def loss_sum_over(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[float, int]:
    """(sum of the per-token losses in nats, number of scored targets) over `batches`.

    The model returns the mean over the batch's scored targets (target -1 is ignored);
    mean x count gives the sum, accumulated in float64 on the device, read once at the end.
    """
    total: torch.Tensor | None = None
    count: torch.Tensor | None = None
    for x, y in batches:
        with autocast():
            _, loss = model(x, y)
        n = (y != -1).sum()
        # A batch with nothing to score has a NaN mean; `where` drops it without a device sync.
        part = torch.where(n > 0, loss.double() * n, loss.new_zeros((), dtype=torch.float64))
        total = part if total is None else total + part
        count = n if count is None else count + n
    if total is None:
        return 0.0, 0
    return float(total), int(count)


def in_lockstep(batches: Iterable, spare: Any, device: torch.device) -> Iterator:
    """`batches`, then copies of `spare` with every target masked (-1: nothing scored) until
    no rank has a batch left: a sharded model's forward is a collective, so every rank runs as
    many as the rank with the most."""
    it = iter(batches)
    while True:
        batch = next(it, None)
        more = torch.tensor([float(batch is not None)], device=device)
        dist.all_reduce(more, op=dist.ReduceOp.MAX)
        if more.item() == 0 or spare is None:
            return
        yield batch if batch is not None else (spare[0], torch.full_like(spare[1], -1))


def evaluate_tokens(
    model: nn.Module,
    tokens: np.ndarray,
    n_bytes: int,
    block_size: int,
    batch_size: int,
    device: torch.device | str,
    stride: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, float]:
    """Loss, perplexity and bits per byte of `model` on a token stream.

    `n_bytes` is the number of bytes the scored tokens encode: the text's bytes minus those of
    its first token (`meta.json` stores this as `splits.val.scored_bytes`). Every token but the
    first is scored once; see the module docstring for `stride`.
    """
    source = TokenArray(tokens, block_size, device)
    return evaluate_split(
        model, source, n_bytes, batch_size=batch_size, stride=stride, autocast=autocast
    )


def evaluate_split(
    model: nn.Module,
    source,
    scored_bytes: int,
    *,
    batch_size: int,
    max_batches: int | None = None,
    stride: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    rank: int = 0,
    world_size: int = 1,
    full: bool = False,
) -> dict[str, float]:
    """Evaluate a batch source (`data.TokenWindows` / `data.ExampleBatches`) over its split,
    or over the `max_batches` batches spread over it (`stride`: text only, see the module
    docstring).

    `full=True` with `max_batches` also scores the batches outside the subset: the result then
    holds the subset's numbers and, as `full_loss`, `full_ppl`, `full_bpb`, `full_tokens`, the
    whole split's, from one pass over the split.

    With several processes each rank scores its share of the batches and the sums are added
    with `all_reduce`, so every rank returns the same numbers.
    """
    parts = [False, True] if full else [False]  # the subset, then the rest of the split
    sums = []
    was_training = model.training
    model.eval()
    try:
        for rest in parts:
            batches = source.iter_eval_batches(
                batch_size, max_batches, stride, rank, world_size, rest=rest
            )
            if world_size > 1 and isinstance(model, FSDPModule):
                spare = source.iter_eval_batches(batch_size, max_batches, stride, rest=rest)
                batches = in_lockstep(batches, next(iter(spare), None), source.device)
            sums.extend(loss_sum_over(model, batches, autocast))
    finally:
        model.train(was_training)
        if isinstance(model, FSDPModule):  # an FSDP root stays gathered after a forward alone
            model.reshard()
    if world_size > 1:
        both = torch.tensor(sums, dtype=torch.float64, device=source.device)
        dist.all_reduce(both)
        sums = both.tolist()
    total = source.eval_targets(batch_size, stride=stride)

    def scored(loss_sum: float, n: int) -> dict[str, float]:
        # Exact on the full split; for a subset, the bytes of the scored part are estimated.
        n_bytes = scored_bytes if n == total else scored_bytes * n / max(total, 1)
        return summarize(loss_sum, n, n_bytes)

    result = scored(sums[0], int(sums[1]))
    if max_batches is None:
        assert int(sums[1]) == total, f"scored {int(sums[1])} targets, expected {total}"
    if full:
        n = int(sums[1]) + int(sums[3])
        assert n == total, f"scored {n} targets, expected {total}"
        whole = scored(sums[0] + sums[2], n)
        result.update({f"full_{k}": v for k, v in whole.items()})
    return result


# ----------------------------------------------------------------------------- command line


def evaluate_checkpoint(
    ckpt: str | Path,
    input_path: str | Path | None = None,
    *,
    stride: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
) -> dict:
    """Loss, perplexity and bits per byte of a checkpoint on its run's validation split, or
    on any text file tokenized with the checkpoint's own tokenizer."""
    from llm_tiny.runtime import resolve_device
    from llm_tiny.train.checkpoint import load_model, run_data_dir

    dev = resolve_device(device)
    model, tokenizer, cfg, checkpoint = load_model(ckpt, dev)
    block = cfg.model.block_size
    batch_size = batch_size or cfg.train.eval_batch_size
    if stride is not None and not 1 <= stride <= block:
        raise UserError(f"--stride must be in [1, block_size = {block}], got {stride}")
    if input_path is not None:
        path = Path(input_path)
        try:
            n_bytes = path.stat().st_size
        except FileNotFoundError:
            raise UserError(f"{path}: input file not found") from None
        tokens = tokenizer.encode_file(path)
        if len(tokens) < 2:
            raise UserError(f"{path}: needs at least 2 tokens to score, has {len(tokens)}")
        # The first token has no context and is not scored; neither are its bytes.
        scored_bytes = n_bytes - len(tokenizer.decode_bytes([int(tokens[0])]))
        source = TokenArray(tokens, block, dev)
        name = str(path)
    else:
        data = load_prepared(run_data_dir(ckpt, cfg), tokenizer)
        trained_on = checkpoint.get("data_sha256")
        if trained_on is not None and data.meta.get("input_sha256") != trained_on:
            raise UserError(
                f"{data.data_dir} now holds data prepared from other text than {ckpt} was "
                "trained on; pass --input FILE to score a file, or train the run again"
            )
        if stride is not None and data.meta["kind"] != "text":
            raise UserError("--stride applies to text runs; this run's data are examples")
        source = open_split(data, "val", cfg, dev, batch_size=batch_size)
        scored_bytes = data.split("val")["scored_bytes"]
        name = f"{data.data_dir} (validation split)"
    result = evaluate_split(model, source, scored_bytes, batch_size=batch_size, stride=stride)
    return {"ckpt": str(ckpt), "data": name, "stride": stride or block, **result}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="llm_tiny eval",
        description="Cross-entropy per token, perplexity and bits per byte of a checkpoint.",
    )
    add_ckpt_arg(parser)
    parser.add_argument("--input", help="text file to score (default: the run's validation split)")
    parser.add_argument(
        "--stride",
        type=int,
        help="advance windows by this many tokens, scoring only those (default: block_size, "
        "i.e. non-overlapping windows)",
    )
    parser.add_argument("--batch-size", type=int, help="windows per batch")
    add_device_arg(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    def run() -> int:
        if args.batch_size is not None and args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        r = evaluate_checkpoint(
            args.ckpt,
            args.input,
            stride=args.stride,
            batch_size=args.batch_size,
            device=args.device,
        )
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['data']}: {r['tokens']:,} tokens scored, stride {r['stride']}")
            print(
                f"loss {r['loss']:.4f} nats/token | perplexity {r['ppl']:.2f} | "
                f"bits per byte {r['bpb']:.4f}"
            )
        return 0

    return run_cli(run, "llm_tiny eval")
