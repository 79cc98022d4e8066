"""A user's nanoGPT checkout as the reference of the CPU speedrun and of bench_train.

`benchmarks/speedrun.py --nanogpt DIR` and `benchmarks/bench_train.py --nanogpt DIR` use it.
DIR is a checkout of https://github.com/karpathy/nanoGPT: `train.py`, `model.py`,
`config/train_shakespeare_char.py` and `data/shakespeare_char/prepare.py`. Nothing of it is
copied here; this module runs its scripts and imports its `model.py`, as the user would.

- The run: nanoGPT's documented CPU command (`NANOGPT_FLAGS`, from its README), with
  `--out_dir` pointed at our output folder so that the checkout is not written to. Its
  `prepare.py` runs first and is not timed (ours is not either); the wall time of the
  `train.py` process is the figure, Python start-up included: the user waits for it.
- The score: both final models on the same text, nanoGPT's own validation split (the last
  10% of the characters of `data/shakespeare_char/input.txt`), cut into non-overlapping windows
  of the context length, every character of a window predicted from the ones before it in
  that window (`window_loss`). nanoGPT's ids are its sorted character set (`char_ids`, as its
  `prepare.py` builds it); ours are bytes, the same characters for this ASCII text.

NOTE: nanoGPT writes `ckpt.pt` only when its 20-batch validation estimate improves (its
`always_save_checkpoint = False`); with the loss still falling at step 2,000 that is the
final model. It is a pickle of plain containers and tensors, read with
`torch.load(weights_only=True)`: nothing in it is executed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llm_tiny.errors import UserError

# nanoGPT README, "I only have a macbook": the CPU command for Shakespeare-char.
NANOGPT_CONFIG = "config/train_shakespeare_char.py"
NANOGPT_FLAGS = (
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
)
BLOCK_SIZE = 64  # the command's context length: the scoring windows
DATA = Path("data") / "shakespeare_char"
NEEDED = ("train.py", "model.py", NANOGPT_CONFIG, str(DATA / "prepare.py"))


def check_checkout(path: str | Path, for_training: bool = True) -> Path:
    """The nanoGPT checkout at `path`, or a UserError naming the file it lacks (only its
    `model.py` unless `for_training`)."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"--nanogpt {path}: not a directory (a checkout of karpathy/nanoGPT)")
    for name in NEEDED if for_training else ("model.py",):
        if not (root / name).is_file():
            raise UserError(f"--nanogpt {path}: {name} is missing; is it a nanoGPT checkout?")
    return root


def train_command(
    root: Path, out_dir: Path, iters_scale: float = 1.0, python: str = sys.executable
) -> list[str]:
    """nanoGPT's documented CPU command, writing into `out_dir`. `iters_scale` < 1 (smoke
    tests) shrinks the steps, the warmup and the decay, and evaluates at the start and end.

    >>> cmd = train_command(Path("/n"), Path("/o"), iters_scale=0.004, python="py")
    >>> cmd[:2], cmd[-4:]
    (['py', 'train.py'], ['--max_iters=8', '--lr_decay_iters=8', '--warmup_iters=1', '--eval_interval=8'])
    """
    cmd = [python, "train.py", NANOGPT_CONFIG, *NANOGPT_FLAGS, f"--out_dir={out_dir}"]
    if iters_scale != 1.0:
        n = max(1, round(2000 * iters_scale))
        warmup = min(n, max(1, round(100 * iters_scale)))
        cmd += [f"--max_iters={n}", f"--lr_decay_iters={n}", f"--warmup_iters={warmup}"]
        cmd.append(f"--eval_interval={n}")
    return cmd


def prepare(root: Path, text: Path, log: Callable[[str], None]) -> str:
    """nanoGPT's data, made by its own `prepare.py` unless already there (not timed); returns
    the text. Its `prepare.py` downloads `input.txt` when it is missing: we put `text` there
    instead. A checkout whose `input.txt` is another text is an error (the scores would not be
    comparable)."""
    data = root / DATA
    ours = text.read_text(encoding="utf-8")
    theirs = data / "input.txt"
    if not theirs.exists():
        log(f"nanogpt: copying {text} to {theirs} (what its prepare.py would download)")
        theirs.write_text(ours, encoding="utf-8")
    elif theirs.read_text(encoding="utf-8") != ours:
        raise UserError(f"{theirs} is not the same text as --input {text}")
    if not ((data / "train.bin").exists() and (data / "val.bin").exists()):
        log(f"nanogpt: python {DATA / 'prepare.py'} (not timed)")
        proc = subprocess.run(
            [sys.executable, "prepare.py"], cwd=data, stdout=subprocess.DEVNULL, text=True
        )
        if proc.returncode != 0:
            raise UserError(f"nanoGPT's {DATA / 'prepare.py'} failed (exit {proc.returncode})")
    return ours


def run_train(root: Path, out_dir: Path, iters_scale: float = 1.0) -> dict[str, Any]:
    """Run nanoGPT's `train.py` once; its log goes to `out_dir/train.log`. Returns the
    whole-process wall time and where the checkpoint is."""
    # NOTE: absolute, because train.py runs in the checkout: a relative --out_dir would land
    # there (writing into the user's checkout) and not where we look for ckpt.pt.
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = train_command(root, out_dir, iters_scale)
    with (out_dir / "train.log").open("w", encoding="utf-8") as logf:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, stdout=logf, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise UserError(
            f"nanoGPT's train.py failed (exit {proc.returncode}); see {out_dir / 'train.log'}"
        )
    ckpt = out_dir / "ckpt.pt"
    if not ckpt.is_file():
        raise UserError(f"nanoGPT's train.py wrote no {ckpt}; see {out_dir / 'train.log'}")
    return {"wall_s": wall, "ckpt": str(ckpt), "command": " ".join(cmd[1:])}


# ----------------------------------------------------------------------------- scoring


def val_text(text: str) -> str:
    """nanoGPT's validation split: the last 10% of the characters (`int(n * 0.9)` onwards).

    >>> val_text("abcdefghij" * 2)
    'ij'
    """
    return text[int(len(text) * 0.9) :]


def char_ids(text: str) -> dict[str, int]:
    """nanoGPT's character vocabulary: the sorted set of the text's characters, numbered.

    >>> char_ids("hello")
    {'e': 0, 'h': 1, 'l': 2, 'o': 3}
    """
    return {ch: i for i, ch in enumerate(sorted(set(text)))}


def window_loss(
    model: Callable[..., Any], ids: Sequence[int], block: int = BLOCK_SIZE, batch: int = 64
) -> float:
    """Mean cross-entropy of `model` (called as `model(x, y) -> (logits, mean loss)`, both
    nanoGPT's and llm_tiny's convention) over the non-overlapping windows of `ids`: window k
    predicts ids[k*block + 1 : (k+1)*block + 1] from ids[k*block : (k+1)*block]."""
    import torch

    t = torch.as_tensor(list(ids), dtype=torch.long)
    n = (len(t) - 1) // block
    if n < 1:
        raise UserError(f"the validation text is shorter than one window of {block}")
    x = t[: n * block].view(n, block)
    y = t[1 : n * block + 1].view(n, block)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, batch):
            _, loss = model(x[i : i + batch], y[i : i + batch])
            total += float(loss) * x[i : i + batch].numel()
    return total / x.numel()


def nanogpt_module(root: Path) -> Any:
    """The checkout's `model.py` (its `GPT` and `GPTConfig`), imported under another name."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", root / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_nanogpt(root: Path, ckpt_path: str | Path) -> Any:
    """nanoGPT's model from its own `model.py`, with the weights of `ckpt_path`, in eval mode."""
    import torch

    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to read it is for the user to see, in one line
        raise UserError(f"{ckpt_path}: cannot read it as plain tensors ({e})") from None
    module = nanogpt_module(root)
    with contextlib.redirect_stdout(sys.stderr):  # it prints its parameter count
        model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    # A compiled nanoGPT saves its weights under `_orig_mod.` (its train.py strips it too).
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    return model.eval(), ckpt


def score_nanogpt(root: Path, ckpt_path: str | Path, text: str) -> dict[str, Any]:
    """nanoGPT's final model's loss on its validation split (`window_loss`)."""
    model, ckpt = load_nanogpt(root, ckpt_path)
    stoi = char_ids(text)
    if model.config.vocab_size != len(stoi):
        raise UserError(
            f"{ckpt_path}: vocabulary of {model.config.vocab_size}, but the text has "
            f"{len(stoi)} characters: was it trained on another text?"
        )
    ids = [stoi[ch] for ch in val_text(text)]
    return {"val_loss": window_loss(model, ids), "iter": int(ckpt.get("iter_num", -1))}


def score_ours(run_dir: str | Path, text: str, name: str = "last.pt") -> dict[str, Any]:
    """An llm_tiny run's final model's loss on the same windows: byte-level ids, which are
    the characters themselves for an ASCII text."""
    from llm_tiny.train.checkpoint import load_model

    model, tok, _, ckpt = load_model(run_dir, "cpu", name=name)
    val = val_text(text)
    ids = tok.encode_ordinary(val)
    if len(ids) != len(val):
        raise UserError(
            "scoring against nanoGPT needs one token per character: an ASCII text and a "
            "byte-level tokenizer (data.vocab_size: 256)"
        )
    return {"val_loss": window_loss(model, ids), "iter": int(ckpt["step"])}


def ratio_line(ours: float, theirs: float, loss_ours: float, loss_theirs: float) -> str:
    """One line saying how the two compare.

    >>> ratio_line(40.0, 170.0, 1.84, 1.90)
    'llm_tiny: 40.0 s to 1.8400; nanoGPT: 170.0 s to 1.9000: 4.25x faster to a loss no higher'
    """
    head = (
        f"llm_tiny: {ours:.1f} s to {loss_ours:.4f}; nanoGPT: {theirs:.1f} s to {loss_theirs:.4f}"
    )
    if not math.isfinite(loss_ours) or loss_ours > loss_theirs:
        return head + ": llm_tiny's loss is higher, no speedup to claim"
    return head + f": {theirs / ours:.2f}x faster to a loss no higher"


# ----------------------------------------------------------------------------- our side


def run_ours(raw: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Our side as the user runs it: `python -m llm_tiny train CONFIG` in a fresh process,
    whole-process wall time, after `python -m llm_tiny prepare CONFIG` (not timed). `raw` is
    the run's config as a dict (its paths already below `out_dir`)."""
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / "config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    for command in ("prepare", "train"):
        cmd = [sys.executable, "-m", "llm_tiny", command, str(config)]
        with (out_dir / f"{command}.log").open("w", encoding="utf-8") as logf:
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=root, stdout=logf, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise UserError(f"llm_tiny {command} failed (exit {proc.returncode}); see {logf.name}")
    return {"wall_s": wall, "run_dir": raw["train"]["out_dir"]}
