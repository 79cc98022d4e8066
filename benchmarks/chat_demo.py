"""The chat demonstration over several seeds (docs/chat.md): base model against SFT model on
held-out conversations.

    python benchmarks/chat_demo.py --seeds 1,2,3,4,5 --json out/chat_demo/result.json

For each seed S, in fresh processes as a user would run them: `chatdemo data --seed S` writes
the conversations, `train configs/chat_base.yaml` pretrains the base model on the plain
examples, `train configs/chat_sft.yaml` (or `--sft-config`) fine-tunes it on the conversations (both with
`train.seed` S), and `chatdemo eval` scores the base run (`--base`: the chat tokens added as
`train.init_from` adds them, the recipe's `data.chat_init` included) and the SFT run on the held-out conversations. Each stage is timed
whole (start-up, data, training, evaluation). Prints one line per run, then one JSON line (also
written to `--json`) with every score and time, and the minimum of each score over the seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from llm_tiny.errors import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
SFT = "configs/chat_sft.yaml"
SCORES = ("exact", "ends_turn", "follows_system", "assistant_loss", "all_token_loss")


def llm(args: list[str]) -> tuple[str, float]:
    """`python -m llm_tiny ARGS`: its stdout and seconds, or a UserError with its stderr's tail."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "llm_tiny", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        raise UserError(f"llm_tiny {' '.join(args[:2])} failed: {result.stderr.strip()[-400:]}")
    return result.stdout, time.perf_counter() - t0


def one_seed(seed: int, out: Path, sft_config: str = SFT, reuse: bool = False) -> dict:
    data = out / f"seed{seed}" / "data"
    name = "sft" if sft_config == SFT else Path(sft_config).stem
    base, sft = out / f"seed{seed}" / "base", out / f"seed{seed}" / name
    times = {}
    common = [f"--train.seed={seed}", "--train.overwrite=true"]
    if not (reuse and (base / "best.pt").exists()):
        _, times["data"] = llm(["chatdemo", "data", "--out", str(data), "--seed", str(seed)])
        _, times["base"] = llm(["train", "configs/chat_base.yaml", f"--data.input=[{data}/base.txt]",
                                f"--train.out_dir={base}", *common])  # fmt: skip
    _, times["sft"] = llm(["train", sft_config, f"--data.input=[{data}/train.jsonl]",
                           f"--train.init_from={base}", f"--train.out_dir={sft}", *common])  # fmt: skip
    sft_cfg = yaml.safe_load((ROOT / sft_config).read_text(encoding="utf-8"))
    init = [f"--chat-init={e}" for e in sft_cfg["data"].get("chat_init", [])]
    scores = {}
    for name, run, extra in (("base", base, ["--base", *init]), ("sft", sft, [])):
        text, times[f"eval_{name}"] = llm(["chatdemo", "eval", "--ckpt", str(run), "--data",
                                           str(data / "test.jsonl"), *extra])  # fmt: skip
        scores[name] = json.loads(text.strip().splitlines()[-1])
    return {"seed": seed, "scores": scores, "seconds": times}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="chat_demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--out", default="out/chat_demo", help="where the runs go")
    parser.add_argument("--json", help="also write the JSON line here")
    parser.add_argument("--sft-config", default=SFT, help="the SFT recipe (its run goes in "
                        "OUT/seedS/<its name>); e.g. configs/chat_sft_lora.yaml")  # fmt: skip
    parser.add_argument("--reuse", action="store_true", help="keep a seed's data and base run "
                        "when OUT has them (compare SFT recipes on the same bases)")  # fmt: skip
    args = parser.parse_args(argv)

    def go() -> int:
        seeds = [int(s) for s in args.seeds.split(",")]
        results = []
        for seed in seeds:
            r = one_seed(seed, Path(args.out), args.sft_config, args.reuse)
            results.append(r)
            for name, s in r["scores"].items():
                print(f"seed {seed} {name:<4} exact {100 * s['exact']:5.1f}%  ends turn "
                      f"{100 * s['ends_turn']:5.1f}%  follows system {100 * s['follows_system']:5.1f}%  "
                      f"assistant loss {s['assistant_loss']:.3f}  all-token loss "
                      f"{s['all_token_loss']:.3f}", flush=True)  # fmt: skip
            print(
                f"seed {seed} seconds: "
                + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items())
            )
        summary = {
            "seeds": results,
            "min_sft": {k: min(r["scores"]["sft"][k] for r in results) for k in SCORES[:3]},
            "max_total_seconds": max(sum(r["seconds"].values()) for r in results),
        }
        line = json.dumps(summary)
        print(line)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(line + "\n", encoding="utf-8")
        return 0

    return run_cli(go, "chat_demo.py")


if __name__ == "__main__":
    sys.exit(main())
