"""A run directory (`train.out_dir`): checked before anything is written, then given its
`config.yaml` and metrics log; `last.pt` in it is what a resumed run continues from."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from llm_tiny.config import RunConfig, save_config
from llm_tiny.errors import UserError
from llm_tiny.train.metrics import COLUMNS, METRICS_FILE, RunLog, tensorboard_available

# The files of a run directory, named here once: the checkpoint of the best validation loss,
# the latest one (what a resumed run continues from), the loss curves and the resolved config.
# `metrics.csv` is named beside its writer and reader (`metrics.METRICS_FILE`).
BEST, LAST, LOSS_PLOT, CONFIG_FILE = "best.pt", "last.pt", "loss.png", "config.yaml"
# What a finished run leaves, in the order the end-of-run line lists them.
RUN_FILES = (BEST, LAST, METRICS_FILE, LOSS_PLOT, CONFIG_FILE)
# A sharded checkpoint (`runtime.parallel: fsdp`, `train.dcp`) is a directory named like the
# file it stands for, `last.dcp` for `last.pt`; its LATEST file names its complete save.
SHARDED_SUFFIX, LATEST_FILE = ".dcp", "LATEST"


def sharded_name(name: str) -> str:
    """`last.pt` -> `last.dcp`: the name of the sharded form of a checkpoint file."""
    return Path(name).with_suffix(SHARDED_SUFFIX).name


def is_sharded(path: str | Path) -> bool:
    """Whether `path` is a sharded checkpoint directory."""
    return (Path(path) / LATEST_FILE).is_file()


def newest(out_dir: str | Path, name: str) -> Path | None:
    """`out_dir/name` or its sharded form, whichever was written last (a run saves one form
    and then deletes the other, so both exist only after a crash between the two); None if
    neither exists."""
    found = [p for p in (Path(out_dir) / name, Path(out_dir) / sharded_name(name)) if p.exists()]
    stamp = {p: (p / LATEST_FILE if p.is_dir() else p).stat().st_mtime_ns for p in found}
    return max(found, key=stamp.get, default=None)


def check_out_dir(path: str | Path) -> None:
    """Fail early if `train.out_dir` cannot be a writable directory (creating nothing)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"train.out_dir: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"train.out_dir: cannot write to {existing} (permission denied)")


def prepare_out_dir(path: str | Path) -> Path:
    """Create `train.out_dir` if needed and check that files can be written in it."""
    path = Path(path)
    check_out_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"train.out_dir: cannot write to {path} ({e.strerror or e})") from None
    return path


def resume_path(cfg: RunConfig, out: RunLog) -> Path | None:
    """Check the run directory before anything is written, and say what cannot be logged;
    return the checkpoint to continue from according to `train.resume`, or None."""
    check_out_dir(cfg.train.out_dir)
    if cfg.train.tensorboard and not tensorboard_available():
        # The CSV is the source of truth; TensorBoard is a convenience.
        out(
            "note: train.tensorboard is on but tensorboard is not installed "
            "(pip install tensorboard); writing metrics.csv only"
        )
    out_dir = Path(cfg.train.out_dir)
    last = newest(out_dir, LAST) or out_dir / LAST
    if cfg.train.resume == "never" or (cfg.train.resume == "auto" and not last.exists()):
        names = (BEST, LAST, sharded_name(BEST), sharded_name(LAST))
        old = [n for n in names if (out_dir / n).exists()]
        if old and not cfg.train.overwrite:
            raise UserError(
                f"{out_dir} already holds a run ({', '.join(old)}); pass --resume to continue "
                "it, --overwrite to replace it, or choose another train.out_dir (with make: "
                "ARGS=--resume, ARGS=--overwrite or ARGS=--train.out_dir=out/NAME)"
            )
        return None
    if not last.exists():
        raise UserError(f"cannot resume: {last} does not exist (train.resume is 'always')")
    return last


def start_files(
    cfg: RunConfig, out: RunLog, resumed_at: int | None, columns: tuple[str, ...] = COLUMNS
) -> None:
    """Rank 0, before the first step: the out dir, `config.yaml` and the metrics log (of
    `columns`: training's, or another loop's own)."""
    out_dir = prepare_out_dir(cfg.train.out_dir)
    save_config(cfg, out_dir / CONFIG_FILE)
    if resumed_at is None:
        stale = [n for n in (LAST, BEST) if newest(out_dir, n)]
        if stale:  # train.overwrite is on (`resume_path` refused otherwise)
            out(f"note: starting a new run in {out_dir}; its old {' and '.join(stale)} go")
            (out_dir / BEST).unlink(missing_ok=True)
            shutil.rmtree(out_dir / sharded_name(BEST), ignore_errors=True)
    out.open_metrics(
        out_dir,
        resume_step=resumed_at,
        tensorboard=cfg.train.tensorboard,
        dynamics=cfg.train.log_dynamics,
        tasks=bool(cfg.train.eval_tasks),
        columns=columns,
    )


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename the written, fsync'ed `tmp` over `path`, then make the rename durable too."""
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # POSIX: directories cannot be opened on Windows
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def run_files(out_dir: str | Path) -> list[Path]:
    """The files of `RUN_FILES` that exist in `out_dir` (a checkpoint in either form)."""
    found = [newest(out_dir, n) if n in (BEST, LAST) else Path(out_dir) / n for n in RUN_FILES]
    return [p for p in found if p is not None and p.exists()]
