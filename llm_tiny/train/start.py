"""What a run starts from, settled before any file of the run is written: the checkpoint it
continues (`train.resume`), or the weights it starts from (`train.init_from`), and the prepared
data, whose tokenizer fixes the vocabulary size of the model.

Everything that can fail on bad input (a run directory that cannot be written, a missing or
incompatible checkpoint, bad data) fails here, so a mistake never leaves half a run behind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llm_tiny.config import RunConfig
from llm_tiny.config.sections import architecture_fields
from llm_tiny.data import PreparedData, prepare_data
from llm_tiny.errors import UserError
from llm_tiny.runtime import Runtime
from llm_tiny.train.checkpoint import (
    check_resume_compatible,
    checkpoint_config,
    load_checkpoint,
    start_from,
)
from llm_tiny.train.metrics import RunLog
from llm_tiny.train.rundir import resume_path


@dataclasses.dataclass
class RunStart:
    """The inputs of a `Trainer`: `cfg` with its vocabulary size filled in, the data, and the
    checkpoint to continue from (`ckpt`, read from `resume_from`) or the weights to start from
    with a fresh optimizer (`weights`), or neither."""

    cfg: RunConfig
    data: PreparedData
    ckpt: dict[str, Any] | None = None
    resume_from: Path | None = None
    weights: dict[str, Any] | None = None

    def describe(self, step: int) -> str | None:
        """The log line that says what the run continues, or None for a fresh start."""
        if self.resume_from is not None:
            return f"resuming from {self.resume_from} at step {step}"
        if self.weights is not None:
            return (
                f"starting from the weights of {self.cfg.train.init_from} (new optimizer, step 0)"
            )
        return None


def taken_from(cfg: RunConfig, stored: RunConfig) -> RunConfig:
    """A resumed run that began with `train.init_from` goes on with what it took from those
    weights (`start_from`): the model fields the config leaves at their defaults, and the
    vocabulary size (grown by the chat tokens for a chat run)."""
    default = type(cfg.model)()
    taken = {
        name: getattr(stored.model, name)
        for name in architecture_fields()
        if getattr(cfg.model, name) == getattr(default, name)
    }
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, **taken),
        data=dataclasses.replace(cfg.data, vocab_size=stored.data.vocab_size),
    )


def start_run(cfg: RunConfig, rt: Runtime, out: RunLog) -> RunStart:
    """Check the run directory, read what the run continues or starts from, and prepare the
    data (rank 0 first; the other ranks find it ready)."""
    resume_from = resume_path(cfg, out)
    ckpt = load_checkpoint(resume_from, weights=False) if resume_from else None
    weights = None
    # A LoRA run's checkpoints hold only its adapters: a resume reloads the base weights too.
    if cfg.train.init_from and (ckpt is None or cfg.lora.rank):
        cfg, weights = start_from(cfg)
    elif ckpt is not None and cfg.train.init_from:
        cfg = taken_from(cfg, checkpoint_config(ckpt, resume_from))

    def refuse(data_dir: Path) -> None:  # a resumed run goes on with the data it began with
        raise UserError(
            f"{data_dir} holds the data {resume_from} was trained on, prepared from other input "
            "than this config's; resuming would replace it: resume with the run's own "
            "data.input, or start a new run (another train.out_dir, or train.init_from to "
            "fine-tune on the new text)"
        )

    guard = refuse if ckpt is not None else None
    data = rt.main_first(
        lambda: prepare_data(
            cfg.run_data, progress=out.interactive, log=out, before_replacing=guard
        )
    )
    # The vocabulary size is known now; it flows into the model config (the config check
    # `model.vocab_size >= data.vocab_size` and data's tokenizer check cover a given one).
    vocab = cfg.model.vocab_size or data.tokenizer.vocab_size
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    if ckpt is not None:
        check_resume_compatible(ckpt, cfg, data.tokenizer.fingerprint, resume_from)
    return RunStart(cfg, data, ckpt, resume_from, weights)
