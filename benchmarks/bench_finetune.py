"""LoRA against full fine-tuning on the same job: the share of trainable parameters, peak
memory, step time and the final validation loss, for an llm_tiny base and an imported Hugging
Face model, in the same run.

    python benchmarks/bench_finetune.py                       # trains a base, builds an HF Llama
    python benchmarks/bench_finetune.py --base out/tiny --hf ~/models/SmolLM2-135M --iters 100

The job: `llm_tiny train` with `train.init_from` the base, on the second half of `--input`
(the llm_tiny base, unless `--base` is given, is trained first on the first half, so the
fine-tuning text is new to it), `--iters` steps, evaluation at the start and the end. The
context is the base's (`--block-size` for the two built here). Each
variant runs in a fresh Python process (the real training loop, `train.loop.train`), so its
peak memory is its own: the process's peak RSS on CPU, `torch.cuda.max_memory_allocated` on
CUDA; beside it the counted training state (weights + gradients + AdamW's two moments of the
trainable weights). The step time is the median of the logged steps' (tokens / tokens_per_s).

Without `--hf` a random Llama-shaped model (`--hf-width`, `--hf-layers`) is written with
`transformers` and the base's tokenizer, then imported with `llm_tiny import` like any local
folder: its loss says little, its memory and time a lot. Output: a table, then one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parent)):  # bench_train and llm_tiny, however it is started
    if _p not in sys.path:
        sys.path.insert(0, _p)

import bench_train  # noqa: E402

from llm_tiny.errors import ArgumentParser, UserError, run_cli  # noqa: E402

VARIANTS = ("full", "lora")


# ----------------------------------------------------------------------------- one variant


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Run one fine-tuning job in this process and measure it."""
    import torch

    from llm_tiny.config import load_config
    from llm_tiny.model import add_lora
    from llm_tiny.train.checkpoint import load_model
    from llm_tiny.train.loop import train
    from llm_tiny.train.metrics import read_metrics

    cfg = load_config(job["config"])
    if cfg.train.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = train(cfg, progress=False, log=lambda _: None)
    if cfg.train.device == "cuda":
        peak, memory = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    else:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
        memory = "peak_rss"
    model = load_model(cfg.train.init_from)[0]  # the base, adapted as the run adapted it
    add_lora(model, cfg.lora)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = read_metrics(Path(cfg.train.out_dir) / "metrics.csv")
    tokens = rows[-1]["tokens"] / rows[-1]["step"]  # the base's block_size, not the YAML's
    steps = [1000 * tokens / r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    vals = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    return {
        "status": "ok",
        "params": total,
        "trainable": trainable,
        "trainable_share": trainable / total,
        "state_mib": (total + 3 * trainable) * 4 / 2**20,
        "peak_mem_mib": peak,
        "memory": memory,
        "ms_per_step": statistics.median(steps[1:] or steps),
        "val_loss_start": vals[0],
        "val_loss_end": result.val_loss,
        "ckpt_mib": (Path(cfg.train.out_dir) / "last.pt").stat().st_size / 2**20,
    }


def child_main(job_json: str) -> int:
    try:
        result = measure(json.loads(job_json))
    except Exception as e:  # a failed variant is a result, not a crash of the benchmark
        result = {"status": f"failed: {' '.join(f'{type(e).__name__}: {e}'.split())[:300]}"}
    print(json.dumps(result), flush=True)
    return 0


def run_child(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One variant in a fresh process (`bench_train.run_job` with this script's child)."""
    return bench_train.run_job(job, timeout, script=Path(__file__).resolve())


# ----------------------------------------------------------------------------- the bases


def train_base(work: Path, text: Path, args: Any) -> Path:
    """A small llm_tiny base trained on `text` (byte-level vocabulary: no tokenizer training)."""
    from llm_tiny.config import config_from_dict
    from llm_tiny.train.loop import train

    raw = run_config(work / "base", text, args, iters=args.base_iters)
    raw["model"] = {"n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_embd // 64,
                    "block_size": args.block_size}  # fmt: skip
    raw["optim"] = {"lr": 3e-3, "min_lr": 3e-4, "warmup_iters": min(20, args.base_iters)}
    train(config_from_dict(raw), progress=False, log=lambda _: None)
    return work / "base"


def hf_llama(work: Path, base: Path, args: Any) -> Path:
    """A random Llama-shaped HF folder with the base's tokenizer, written by `transformers`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from llm_tiny.export.hf_tokenizer import tokenizer_json
    from llm_tiny.train.checkpoint import load_model

    _, tok, _, _ = load_model(base)
    folder = work / "hf"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=args.hf_width, num_hidden_layers=args.hf_layers,
        intermediate_size=args.hf_width * 8 // 3, num_attention_heads=args.hf_width // 64,
        num_key_value_heads=max(1, args.hf_width // 128), max_position_embeddings=args.block_size,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(tok)), encoding="utf-8")
    PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")).save_pretrained(folder)
    return folder


def run_config(out: Path, text: Path, args: Any, iters: int) -> dict[str, Any]:
    return {
        "data": {"input": [str(text)], "vocab_size": 256, "data_dir": str(out / "data"),
                 "val_fraction": 0.1},
        "optim": {"lr": args.lr, "min_lr": args.lr / 10, "warmup_iters": min(10, iters)},
        "train": {"out_dir": str(out), "max_iters": iters, "batch_size": args.batch_size,
                  "eval_interval": iters, "eval_iters": 8, "eval_batch_size": args.batch_size,
                  "ckpt_interval": iters, "log_interval": 1, "device": args.device,
                  "threads": args.threads, "sample_at_end": False, "seed": 1337},
    }  # fmt: skip


# ----------------------------------------------------------------------------- the driver


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child_main(sys.argv[2])
    p = ArgumentParser(prog="bench_finetune.py", description=__doc__.splitlines()[0])
    p.add_argument("--input", default="data/tiny.txt", help="text: base on half 1, tuning on 2")
    p.add_argument("--base", help="an llm_tiny run to fine-tune (default: train one)")
    p.add_argument("--hf", help="a local HF Llama/GPT-2 folder (default: a random Llama)")
    p.add_argument("--no-hf", action="store_true", help="only the llm_tiny base")
    p.add_argument("--iters", type=int, default=60, help="fine-tuning steps of each variant")
    p.add_argument("--base-iters", type=int, default=200, help="steps of the trained base")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--hf-width", type=int, default=384)
    p.add_argument("--hf-layers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4, help="full fine-tuning's learning rate")
    p.add_argument("--lora-lr", type=float, default=2e-3, help="LoRA's learning rate")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--targets", default="q,k,v,o", help="comma-separated lora.targets")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", help="folder for the runs (default: a temporary one)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per variant")
    args = p.parse_args(argv)
    return run_cli(lambda: bench(args), "bench_finetune.py")


def bench(args: Any) -> int:
    import yaml

    text = Path(args.input)
    if not text.is_file():
        raise UserError(f"--input {text}: no such file")
    if args.iters < 1 or args.base_iters < 1:
        raise UserError("--iters and --base-iters must be >= 1")
    if args.n_embd % 64:
        raise UserError(f"--n-embd must be a multiple of 64 (heads of 64), got {args.n_embd}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        body = text.read_text(encoding="utf-8")
        first, second = work / "pretrain.txt", work / "finetune.txt"
        first.write_text(body[: len(body) // 2], encoding="utf-8")
        second.write_text(body[len(body) // 2 :], encoding="utf-8")
        bases = {"llm_tiny": Path(args.base) if args.base else train_base(work, first, args)}
        if not args.no_hf:
            from llm_tiny.export.importer import main as import_main

            hf = Path(args.hf) if args.hf else hf_llama(work, bases["llm_tiny"], args)
            if import_main(["--hf", str(hf), "--out", str(work / "imported")]) != 0:
                raise UserError(f"--hf {hf}: the import failed (see above)")
            bases["imported HF"] = work / "imported"
        results = []
        for name, base in bases.items():
            for variant in VARIANTS:
                out = work / f"{name.replace(' ', '_')}_{variant}"
                raw = run_config(out, second, args, args.iters)
                raw["train"]["init_from"] = str(base)
                raw["data"]["eot"] = None  # one stream of text, whatever the base's tokenizer
                if variant == "lora":
                    targets = args.targets.split(",")
                    raw["lora"] = {"rank": args.rank, "alpha": args.alpha, "targets": targets}
                    raw["optim"] |= {"lr": args.lora_lr, "min_lr": args.lora_lr / 10}
                config = work / f"{out.name}.yaml"
                config.write_text(yaml.safe_dump(raw), encoding="utf-8")
                r = run_child({"config": str(config)}, args.timeout)
                results.append({"base": name, "variant": variant, **r})
                print(f"  {name} {variant}: {r.get('status')}", flush=True)
    print()
    print(table(results))
    print(json.dumps({"bench": "finetune", "iters": args.iters, "rank": args.rank,
                      "targets": args.targets, "results": results}))  # fmt: skip
    return 0 if all(r["status"] == "ok" for r in results) else 1


def table(results: list[dict[str, Any]]) -> str:
    """The measurements side by side, each LoRA row with its ratios to full fine-tuning."""
    head = (f"{'base':<12} {'variant':<8} {'trainable':>10} {'share':>7} {'state MiB':>10} "
            f"{'peak MiB':>9} {'ms/step':>8} {'val start':>9} {'val end':>8} {'ckpt MiB':>9}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"{r['base']:<12} {r['variant']:<8} {r['status']}")
            continue
        lines.append(
            f"{r['base']:<12} {r['variant']:<8} {r['trainable']:>10,} {r['trainable_share']:>7.2%} "
            f"{r['state_mib']:>10.1f} {r['peak_mem_mib']:>9.0f} {r['ms_per_step']:>8.1f} "
            f"{r['val_loss_start']:>9.4f} {r['val_loss_end']:>8.4f} {r['ckpt_mib']:>9.2f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
