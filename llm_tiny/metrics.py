"""The metrics log of a run: `out_dir/metrics.csv`, and TensorBoard if asked for.

One row per step at which something was measured, with the columns in `COLUMNS`; a cell is
empty when its value was not measured at that step (validation only runs every
`eval_interval` steps). Floats are written with `repr`, so a value read back is bit-for-bit
the one logged (the resume test compares runs this way). Each row is flushed as it is written:
a crash loses no logged row.

On resume, rows past the resumed step (logged after the checkpoint the run restarts from) are
dropped first, so the file never holds two rows for one step.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from llm_tiny.errors import UserError

COLUMNS = (
    "step",
    "tokens",
    "train_loss",
    "val_loss",
    "val_ppl",
    "val_bpb",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "elapsed_s",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_metrics(path: str | Path) -> list[dict[str, float | None]]:
    """The rows of a metrics.csv as dicts of floats (None for an empty cell)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def _truncate_after(path: Path, step: int) -> None:
    """Keep the header and the rows with `step <= step` (rewritten atomically)."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = [r for r in reader if r and float(r[0]) <= step]
    if header != list(COLUMNS):
        raise UserError(f"{path}: unexpected columns {header}; move the file away to resume")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, path)


def tensorboard_available() -> bool:
    """Whether TensorBoard scalars can be written (the `tensorboard` package is installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class MetricsLog:
    """Append rows to `out_dir/metrics.csv` (and TensorBoard scalars under `out_dir/tb`).

    `resume_step=None` starts a new file; an int keeps the existing rows up to that step.
    """

    def __init__(
        self, out_dir: str | Path, resume_step: int | None = None, tensorboard: bool = False
    ) -> None:
        self.path = Path(out_dir) / "metrics.csv"
        if resume_step is not None and self.path.exists():
            _truncate_after(self.path, resume_step)
            self._file = self.path.open("a", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
        else:
            self._file = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(COLUMNS)
            self._file.flush()
        self._tb = None
        if tensorboard and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tb"))

    def write(self, step: int, **values: Any) -> None:
        """Write one row; unknown column names are a bug and raise KeyError."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown metrics columns: {sorted(unknown)}")
        row = {"step": step, **values}
        self._writer.writerow([_cell(row.get(c)) for c in COLUMNS])
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, float) and math.isfinite(value) and name != "elapsed_s":
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
