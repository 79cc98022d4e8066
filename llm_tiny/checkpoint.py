"""Checkpoints: one versioned `.pt` file holds everything needed to resume or sample.

A checkpoint is a plain dict saved with `torch.save` and read back with
`torch.load(..., weights_only=True)`, so it may only contain tensors, numbers, strings, lists,
tuples and dicts (no pickled classes: loading a downloaded checkpoint runs no code):

    format, version        "llm_tiny.checkpoint", 1
    config                 the resolved run config (`config_to_dict`)
    model                  state dict of the plain module (no `_orig_mod.` / `module.` prefixes)
    optimizer, scaler      AdamW and GradScaler state (scaler: {} when not used)
    step, tokens_seen      optimizer updates done, tokens consumed (all ranks)
    best_val_loss          lowest validation loss so far (inf before the first evaluation)
    elapsed_s              training wall time so far, summed over resumed runs
    rng                    one `runtime.capture_rng()` dict per rank
    sampler                the batch sampler's `state_dict()`
    tokenizer              the tokenizer as JSON text: a checkpoint is self-contained
    tokenizer_fingerprint  sha256 of the tokenizer, to refuse resuming with another one

Writes are atomic: the dict goes to `NAME.tmp`, is flushed and fsync'ed, then renamed over
`NAME` (a rename within a directory is atomic on POSIX and Windows). A process killed at any
instant leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from llm_tiny.config import ConfigError, RunConfig, config_from_dict
from llm_tiny.errors import UserError

FORMAT = "llm_tiny.checkpoint"
VERSION = 1

REQUIRED_KEYS = ("config", "model", "step", "tokenizer")

# Model fields that change the parameters' shapes or meaning: resuming across a change is an
# error. The others (dropout, attn_impl, grad_checkpointing) only change how the same weights
# are used, so a resumed run may change them.
ARCHITECTURE_FIELDS = (
    "vocab_size",
    "block_size",
    "n_layer",
    "n_head",
    "n_kv_head",
    "n_embd",
    "bias",
    "pos_emb",
    "rope_theta",
    "tie_weights",
    "norm",
    "mlp",
)


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write `ckpt` to `path` atomically (temp file, fsync, rename); returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # Make the rename itself durable (POSIX; directories cannot be opened on Windows).
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; every problem is a one-line `UserError`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a checkpoint file (.pt)")
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise UserError(
            f"{path}: not a readable checkpoint (corrupt or truncated?): {_first_line(e)}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an llm_tiny checkpoint (no format {FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise UserError(
            f"{path}: checkpoint version {ckpt.get('version')!r} is not supported "
            f"(this llm_tiny reads version {VERSION})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path}: checkpoint is missing {', '.join(missing)}")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> RunConfig:
    """The run config stored in a checkpoint, validated."""
    try:
        return config_from_dict(ckpt["config"], source=f"{path} (stored config)")
    except ConfigError as e:
        raise UserError(str(e)) from None


def resolve_checkpoint_path(path_or_run_dir: str | Path, name: str = "best.pt") -> Path:
    """A checkpoint file, or a run directory's `name` (falling back to `last.pt`)."""
    p = Path(path_or_run_dir)
    if p.is_dir():
        for candidate in (p / name, p / "last.pt"):
            if candidate.is_file():
                return candidate
        raise UserError(f"{p}: no checkpoint in this directory (looked for {name} and last.pt)")
    if not p.exists():
        raise UserError(f"{p}: checkpoint or run directory not found")
    return p


def check_resume_compatible(
    ckpt: dict[str, Any], cfg: RunConfig, tokenizer_fingerprint: str, path: str | Path
) -> None:
    """Raise a one-line `UserError` naming the first difference that makes resuming unsound."""
    stored = checkpoint_config(ckpt, path)
    for name in ARCHITECTURE_FIELDS:
        old, new = getattr(stored.model, name), getattr(cfg.model, name)
        if old != new:
            raise UserError(
                f"cannot resume from {path}: model.{name} is {old!r} in the checkpoint "
                f"but {new!r} in the config"
            )
    if stored.data.kind != cfg.data.kind:
        raise UserError(
            f"cannot resume from {path}: data.kind is {stored.data.kind!r} in the checkpoint "
            f"but {cfg.data.kind!r} in the config"
        )
    old_fp = ckpt.get("tokenizer_fingerprint")
    if old_fp != tokenizer_fingerprint:
        raise UserError(
            f"cannot resume from {path}: the tokenizer differs (checkpoint "
            f"{str(old_fp)[:12]}, config's {cfg.data.tokenizer} {tokenizer_fingerprint[:12]})"
        )


def load_model(
    path_or_dir: str | Path, device: str | torch.device = "cpu", name: str = "best.pt"
) -> tuple[Any, Any, RunConfig, dict[str, Any]]:
    """Load a trained model for inference: `(model, tokenizer, cfg, ckpt)`.

    `path_or_dir` is a `.pt` file or a run directory (then `name`, else `last.pt`). The model is
    in eval mode on `device` (`auto` allowed); the tokenizer comes from the checkpoint itself.
    """
    from llm_tiny.model import TinyGPT
    from llm_tiny.runtime import resolve_device
    from tok.bpe import Tokenizer

    path = resolve_checkpoint_path(path_or_dir, name)
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    if isinstance(device, str):
        device = resolve_device(device)
    tokenizer = Tokenizer.from_json(ckpt["tokenizer"], source=str(path))
    model = TinyGPT(cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(
            f"{path}: model weights do not match the stored config: {_first_line(e)}"
        ) from None
    model.to(device)
    model.eval()
    return model, tokenizer, cfg, ckpt
