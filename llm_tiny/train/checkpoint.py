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
    data_sha256            sha256 of the text the run was prepared from (`meta.json`), so that
                           `eval` notices when the run's data directory now holds other text
    base                   LoRA runs only (`lora.rank > 0`): {"init_from": the base checkpoint,
                           "sha256": `lora.state_sha256` of its weights}; `model` then holds the
                           adapters alone, and every reader merges them into that base

A sharded checkpoint (`runtime.parallel: fsdp`) is a directory, `last.dcp`, of the same
dict with its weights and optimizer state in shards (`train.dcp`); it loads like a file.

Writes are atomic: the dict goes to `NAME.tmp`, is flushed and fsync'ed, then renamed over
`NAME` (a rename within a directory is atomic on POSIX and Windows). A process killed at any
instant leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from llm_tiny.config import (
    ConfigError,
    RunConfig,
    architecture_fields,
    config_from_dict,
    config_to_dict,
)
from llm_tiny.distributed import strip_wrapper_prefixes, unwrap
from llm_tiny.errors import UserError
from llm_tiny.model import TinyGPT, build_model, lora
from llm_tiny.runtime import Runtime, resolve_device, restore_rng
from llm_tiny.train import dcp
from llm_tiny.train.rundir import BEST, LAST, is_sharded, newest, replace_durably
from llm_tiny.train.vocab import chat_init_rows, grow_vocab
from tok.chat import missing_tokens, with_chat_tokens
from tok.errors import first_line

FORMAT = "llm_tiny.checkpoint"  # NOTE: the format name, kept from before the module moved
VERSION = 1

REQUIRED_KEYS = ("config", "model", "step", "tokenizer")

# ----------------------------------------------------------------------------- wrapped models


def unwrap_model(model: nn.Module) -> TinyGPT:
    """The TinyGPT inside `torch.compile` and the parallel wrappers (`distributed.unwrap`)."""
    inner = unwrap(model)
    if not isinstance(inner, TinyGPT):
        raise TypeError(f"expected a TinyGPT (possibly wrapped), got {type(inner).__name__}")
    return inner


def clean_state_dict(model: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict of the unwrapped model, with no `_orig_mod.` / `module.` prefixes.

    Also accepts a state dict (one gathered by `Parallel.full_state_dict`, or one saved with
    those prefixes) and strips them, so old checkpoints of wrapped models load into a bare
    TinyGPT.
    """
    if isinstance(model, nn.Module):
        return dict(unwrap(model).state_dict())  # any `model.arch`, not only a TinyGPT
    return strip_wrapper_prefixes(model)


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write `ckpt` to `path` atomically (temp file, fsync, rename); returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, path)
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", weights: bool = True
) -> dict[str, Any]:
    """Read and validate a checkpoint; every problem is a one-line `UserError`. A sharded one
    (`train.dcp`) is its `meta.pt`, `shards` (its save) and, with `weights`, its whole weights."""
    path = Path(path)
    if is_sharded(path):
        save = dcp.current_save(path)
        ckpt = {**load_checkpoint(save / dcp.META_FILE, map_location), "shards": str(save)}
        return ckpt | ({"model": dcp.read_tensors(save, "model")} if weights else {})
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a checkpoint file (.pt)")
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    with path.open("rb") as f:  # every checkpoint llm_tiny writes is in torch's zip format
        if f.read(4) != b"PK\x03\x04":
            raise UserError(f"{path} is not an llm_tiny checkpoint (not a PyTorch .pt file)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        # NOTE: torch's own text for a file holding pickled objects suggests weights_only=False,
        # which would run the file's code; llm_tiny never does, so it is not repeated here.
        if "Weights only load failed" in str(e):
            raise UserError(
                f"{path} is not an llm_tiny checkpoint (it holds Python objects, not only "
                "tensors, and llm_tiny never unpickles them)"
            ) from None
        raise UserError(
            f"{path}: not a readable checkpoint (corrupt or truncated?): {first_line(e)}"
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


def resolve_checkpoint_path(path_or_run_dir: str | Path, name: str = BEST) -> Path:
    """A checkpoint file, or a run directory's `name` (falling back to `last.pt`)."""
    p = Path(path_or_run_dir)
    if p.is_dir() and not is_sharded(p):
        for candidate in (newest(p, name), newest(p, LAST)):
            if candidate is not None:
                return candidate
        raise UserError(f"{p}: no checkpoint in this directory (looked for {name} and {LAST})")
    if not p.exists():
        # A misspelt file name in a run directory: say what is there instead.
        there = sorted(c.name for c in p.parent.glob("*.pt")) if p.suffix == ".pt" else []
        if there:
            raise UserError(f"{p}: not found; the checkpoints in {p.parent} are {', '.join(there)}")
        raise UserError(f"{p}: not found (no checkpoint here; train a model first: make train)")
    return p


def run_data_dir(path_or_run_dir: str | Path, cfg: RunConfig) -> Path:
    """The prepared data of the run a checkpoint belongs to: `data.data_dir` if its config sets
    one, else `data/` beside the checkpoint (so a moved run directory keeps its data)."""
    return Path(cfg.data.resolved(resolve_checkpoint_path(path_or_run_dir).parent).data_dir)


def check_resume_compatible(
    ckpt: dict[str, Any], cfg: RunConfig, tokenizer_fingerprint: str, path: str | Path
) -> None:
    """Raise a one-line `UserError` naming the first difference that makes resuming unsound."""
    stored = checkpoint_config(ckpt, path)
    for name in architecture_fields():
        old, new = getattr(stored.model, name), getattr(cfg.model, name)
        if old != new:
            raise UserError(
                f"cannot resume from {path}: model.{name} is {old!r} in the checkpoint "
                f"but {new!r} in the config"
            )
    old_lora, new_lora = stored.lora, cfg.lora
    for name in ("rank", "alpha", "targets", "tokens"):
        if getattr(old_lora, name) != getattr(new_lora, name):
            raise UserError(
                f"cannot resume from {path}: lora.{name} is {getattr(old_lora, name)!r} in the "
                f"checkpoint but {getattr(new_lora, name)!r} in the config"
            )
    if "base" in ckpt:  # a LoRA run resumes over train.init_from's weights: its base?
        base = str(resolve_checkpoint_path(cfg.train.init_from))
        check_base(ckpt, base, f"cannot resume from {path}", base)
    if stored.data.kind != cfg.data.kind:
        raise UserError(
            f"cannot resume from {path}: data.kind is {stored.data.kind!r} in the checkpoint "
            f"but {cfg.data.kind!r} in the config"
        )
    old_fp = ckpt.get("tokenizer_fingerprint")
    if old_fp != tokenizer_fingerprint:
        raise UserError(
            f"cannot resume from {path}: the tokenizer differs (checkpoint "
            f"{str(old_fp)[:12]}, config's {cfg.run_data.tokenizer} {tokenizer_fingerprint[:12]})"
        )


def check_end_of_text(cfg: RunConfig, tok: Any, path: Path) -> None:
    """A run started from `path` trains with its tokenizer, which cannot be retrained: when the
    input is read as documents and that tokenizer lacks their end-of-text token, say what works
    (deleting the copied tokenizer would only copy it again)."""
    from llm_tiny.data.prepare import as_documents, check_inputs

    eot = cfg.data.eot
    if not eot or eot in tok.special_tokens:
        return
    if as_documents(cfg.data, check_inputs(cfg.data.input)):
        raise UserError(
            f"train.init_from {path}: its tokenizer has no special token {eot}, which ends each "
            "document of data.input; set data.eot: null to fine-tune on the documents without it "
            "(they then follow each other in one token stream)"
        )


def start_from(cfg: RunConfig) -> tuple[RunConfig, dict[str, Tensor]]:
    """`train.init_from`: the weights of another run's checkpoint (or an imported model) to
    start a new run from, with a fresh optimizer at step 0.

    Returns `cfg` with its model section filled from the checkpoint's (a model field the config
    sets to another value than the default and the checkpoint's is an error), and the weights.
    The run trains with the checkpoint's tokenizer: it is written to `data.tokenizer` when that
    file does not exist yet, and must be the same tokenizer when it does. For conversations
    (data.kind `chat`) a tokenizer without the chat template's tokens gets them
    (`tok.chat.with_chat_tokens`) and the weights grow to match (`grow_vocab`).
    """
    import dataclasses

    from tok.bpe import Tokenizer

    path = resolve_checkpoint_path(cfg.train.init_from)
    ckpt = load_checkpoint(path)
    stored = checkpoint_config(ckpt, path).model
    default = type(cfg.model)()
    filled = {}
    for name in architecture_fields():
        mine, theirs = getattr(cfg.model, name), getattr(stored, name)
        if mine not in (theirs, getattr(default, name)):
            raise UserError(
                f"train.init_from {path}: model.{name} is {theirs!r} in the checkpoint but "
                f"{mine!r} in the config (leave it out to take the checkpoint's)"
            )
        filled[name] = theirs
    tok = Tokenizer.from_json(ckpt["tokenizer"], source=str(path))
    check_end_of_text(cfg, tok, path)  # before anything is written: a refusal leaves nothing
    weights = model_weights(ckpt, path)  # a LoRA run's: merged into its own base
    if cfg.data.kind == "chat" and missing_tokens(tok):
        base = tok.vocab_size
        tok = with_chat_tokens(tok)
        filled["vocab_size"] = max(stored.vocab_size or 0, tok.vocab_size)
        like = chat_init_rows(cfg.data.chat_init, tok, base, path)
        weights = grow_vocab(weights, filled["vocab_size"], range(base, tok.vocab_size), like)
        if cfg.lora.rank:  # a frozen embedding cannot learn them: their rows train whole
            grown = set(range(base, tok.vocab_size))
            tokens = tuple(sorted(set(cfg.lora.tokens) | grown))
            cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, tokens=tokens))
    if cfg.lora.rank:  # LoRA targets the model lacks (gate without SwiGLU), likewise
        lora.check_targets(dataclasses.replace(cfg.model, **filled), cfg.lora)
        lora.check_tokens(dataclasses.replace(cfg.model, **filled), cfg.lora)
    tok_path = Path(cfg.run_data.tokenizer)
    if not tok_path.exists():
        tok.save(tok_path)
    elif Tokenizer.load(tok_path).fingerprint != tok.fingerprint:
        raise UserError(
            f"train.init_from {path}: its tokenizer differs from {tok_path}; delete that file "
            "(or set data.tokenizer elsewhere) to train with the checkpoint's"
        )
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, **filled),
        data=dataclasses.replace(cfg.data, vocab_size=tok.vocab_size),
    )
    return cfg, weights


def model_weights(ckpt: dict[str, Any], path: str | Path) -> dict[str, Tensor]:
    """A checkpoint's full weights: its `model`, or for a LoRA run its adapters merged into the
    base weights it names, which must be the ones it was trained over (else a UserError)."""
    if "base" not in ckpt:
        return ckpt["model"]
    cfg = checkpoint_config(ckpt, path)
    base_path = Path(ckpt["base"]["init_from"])
    if not base_path.exists():  # moved with the project? the run's own train.init_from, then
        with contextlib.suppress(UserError):
            base_path = resolve_checkpoint_path(cfg.train.init_from or base_path)
    if not base_path.exists():
        raise UserError(
            f"{path}: holds LoRA adapters over {ckpt['base']['init_from']}, which is not there "
            "any more (the adapters need the base weights they were trained over; put them "
            "back, or run from where its train.init_from "
            f"{cfg.train.init_from!r} names them)"
        )
    base = model_weights(load_checkpoint(base_path), base_path)
    check_base(ckpt, base, path, base_path)
    return lora.merge_state(base, ckpt["model"], cfg.model, cfg.lora)


def base_sha256(path: str | Path) -> str:
    """`lora.state_sha256` of the full weights in the checkpoint at `path` (before a chat run
    grows them), computed once per process while the file stays the same."""
    st = os.stat(path)
    return _weights_sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _weights_sha256(path: str, mtime_ns: int, size: int) -> str:
    return lora.state_sha256(model_weights(load_checkpoint(path), path))


def check_base(
    ckpt: dict[str, Any], base: Mapping[str, Tensor] | str, path: str | Path, base_path: Any
) -> None:
    """One line, exit 2, when `base` (weights, or the checkpoint file holding them) is not the
    base model the adapters of `ckpt` were trained over (its weights' sha256 differ)."""
    theirs = base_sha256(base) if isinstance(base, str) else lora.state_sha256(base)
    expected = ckpt["base"]["sha256"]
    if theirs != expected:
        raise UserError(
            f"{path}: its LoRA adapters were trained over other base weights than {base_path} "
            f"holds (sha256 {expected[:12]} expected, {theirs[:12]} found)"
        )


# ----------------------------------------------------------------------------- training state


@dataclass
class TrainState:
    """What a run counts besides its weights and optimizer, saved with them and restored."""

    step: int = 0  # optimizer updates done
    tokens_seen: int = 0  # tokens consumed by all ranks
    best_val_loss: float = math.inf
    elapsed_s: float = 0.0  # training wall time of the earlier runs of a resumed run


def training_checkpoint(
    cfg: RunConfig,
    model: nn.Module | Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    *,
    rng: list[dict[str, Any]],
    sampler: dict[str, Any],
    tokenizer: Any,
    data_sha256: str,
) -> dict[str, Any]:
    """The checkpoint dict of a training run (the format in the module docstring). `model` is
    the model or its full state dict (`Parallel.full_state_dict`); `rng` holds one
    `runtime.capture_rng()` per rank; `state.elapsed_s` is the wall time so far."""
    weights = clean_state_dict(model)
    if cfg.lora.rank:  # the frozen base is the init_from run's: name it, keep the adapters
        weights = lora.split_state(weights)[1]
        source = str(resolve_checkpoint_path(cfg.train.init_from).resolve())
        extra = {"base": {"init_from": source, "sha256": base_sha256(source)}}
    return {
        **(extra if cfg.lora.rank else {}),
        "format": FORMAT,
        "version": VERSION,
        "config": config_to_dict(cfg),
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "best_val_loss": state.best_val_loss,
        "elapsed_s": state.elapsed_s,
        "rng": rng,
        "sampler": sampler,
        "tokenizer": tokenizer.to_json(),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "data_sha256": data_sha256,
    }


def restore_training(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    sampler: Any,
    *,
    rt: Runtime,
    log: Callable[[str], None],
    load: Callable[[], None] | None = None,
) -> TrainState:
    """Load a `training_checkpoint` into fresh training objects and this rank's RNG states;
    returns its counters. `load` loads the weights and optimizer state instead (`sharded`)."""
    # The config is authoritative for hyperparameters: keep the fresh groups' values.
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    if load is not None:
        load()
    elif "base" in ckpt:  # adapters only, over the base weights `model` holds already (their
        # hash was checked by `check_resume_compatible`)
        got = model.load_state_dict(ckpt["model"], strict=False)
        if got.unexpected_keys or any(lora.is_adapter_key(k) for k in got.missing_keys):
            raise UserError("cannot resume: the checkpoint's adapters are not this run's")
    else:
        model.load_state_dict(ckpt["model"])
    if load is None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError) as e:  # another optim.name, or other parameter groups
            raise UserError(
                f"the checkpoint's optimizer state does not fit this optimizer "
                f"({first_line(e)}); resume with the optim.name it was trained with"
            ) from e
    sampler.load_state_dict(ckpt["sampler"])
    states = ckpt.get("rng") or []
    if rt.rank < len(states):
        restore_rng(states[rt.rank], rt.device)
    else:
        log("note: the checkpoint has no RNG state for every rank; others reseeded")
    for group, values in zip(optimizer.param_groups, fresh):
        group.update(values)
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    return TrainState(
        step=int(ckpt["step"]),
        tokens_seen=int(ckpt.get("tokens_seen", 0)),
        best_val_loss=float(ckpt.get("best_val_loss", math.inf)),
        elapsed_s=float(ckpt.get("elapsed_s", 0.0)),
    )


# ----------------------------------------------------------------------------- inference


def load_model(
    path_or_dir: str | Path, device: str | torch.device = "cpu", name: str = BEST,
    archs: Sequence[str] = ("decoder",),
) -> tuple[Any, Any, RunConfig, dict[str, Any]]:  # fmt: skip
    """Load a trained model for inference: `(model, tokenizer, cfg, ckpt)`.

    `path_or_dir` is a `.pt` file or a run directory (then `name`, else `last.pt`). The model is
    in eval mode on `device` (`auto` allowed); the tokenizer comes from the checkpoint itself.
    A `model.arch` not in `archs` is refused in one line (only `tasks eval` takes every arch).
    """
    from tok.bpe import Tokenizer

    path = resolve_checkpoint_path(path_or_dir, name)
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    if isinstance(device, str):
        device = resolve_device(device)
    if cfg.model.arch not in archs:
        raise UserError(
            f"{path}: model.arch is {cfg.model.arch}; this command takes {' or '.join(archs)} "
            "models only (score an encoder or encoder_decoder with `llm_tiny tasks eval`)"
        )
    tokenizer = Tokenizer.from_json(ckpt["tokenizer"], source=str(path))
    model = build_model(cfg.model)
    try:
        model.load_state_dict(model_weights(ckpt, path))  # LoRA adapters come merged
    except RuntimeError as e:
        raise UserError(
            f"{path}: model weights do not match the stored config: {first_line(e)}"
        ) from None
    model.to(device)
    model.eval()
    return model, tokenizer, cfg, ckpt
