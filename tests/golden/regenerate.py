"""Regenerate tests/golden/losses.json, the golden losses (tests/e2e/test_golden.py).

The file holds the training loss of every step of a small deterministic run: one process on
the CPU, float32, one thread, the config below with two accumulation steps of 4 sequences.
The tests hold single-process training to it exactly, DDP over 2 processes (one micro-batch
each: the same windows) to it within float rounding, and FSDP over 2 processes within a
stated tolerance. A change of the numbers is a change of what training computes: regenerate
only for a change meant to do that, and say in the commit which change and why.

    PYTHONPATH=. python tests/golden/regenerate.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for torchrun_helpers

import torch
from torchrun_helpers import column, small_config

GOLDEN = Path(__file__).with_name("losses.json")
STEPS = 20
# One process: 2 micro-batches a step. Two processes: 1 each (`golden_config(..., ranks=2)`).
TRAIN = {"max_iters": STEPS, "eval_interval": STEPS, "ckpt_interval": STEPS}
TRAIN |= {"eval_at_start": False, "eval_iters": 2, "log_interval": 1}


def golden_config(tmp_path: Path, ranks: int = 1, **sections: dict) -> Path:
    """The golden run's config, for `ranks` processes (the global batch stays 8 sequences)."""
    train = {**TRAIN, "grad_accum_steps": 2 // ranks, **sections.pop("train", {})}
    return small_config(tmp_path, train=train, **sections)


def single_process_losses(tmp_path: Path) -> list[float]:
    """The per-step training losses of the golden run in this process."""
    from llm_tiny.config import load_config
    from llm_tiny.train.loop import train

    train(load_config(golden_config(tmp_path)), progress=False, log=lambda _: None)
    return column(tmp_path / "run", "train_loss")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        losses = single_process_losses(Path(tmp))
    GOLDEN.write_text(
        json.dumps(
            {
                "about": "per-step training losses; regenerate with tests/golden/regenerate.py",
                "torch": torch.__version__.split("+")[0],
                "train_loss": losses,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {GOLDEN}: {len(losses)} steps, last loss {losses[-1]:.6f}")


if __name__ == "__main__":
    main()
