"""The logs of a run: `out_dir/metrics.csv`, TensorBoard if asked for, and `dynamics.csv`.

One row per step at which something was measured, with the columns in `COLUMNS`; a cell is
empty when its value was not measured at that step (validation only runs every
`eval_interval` steps). Floats are written with `repr`, so a value read back is bit-for-bit
the one logged (the resume test compares runs this way). Each row is flushed as it is written:
a crash loses no logged row.

On resume, rows past the resumed step (logged after the checkpoint the run restarts from) are
dropped first, so the file never holds two rows for one step.

`task_score` is the task suite's headline (mean centered accuracy, `train.eval_tasks`); each
task's own score is a row of `tasks.csv`, `TASK_COLUMNS` (`read_task_scores` reads it).

`dynamics.csv` (with `train.log_dynamics: true`) holds one row per weight matrix per logged
step, `DYNAMICS_COLUMNS`: its norm, the update-to-weight ratio of that step and the norm of
the step's gradient (`llm_tiny.train.dynamics`); `read_dynamics` is its one reader, for `viz training`.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Iterator
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
    "full_val_loss",  # the final evaluation's, over the whole split (`train.budget`)
    "full_val_bpb",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "elapsed_s",
    "task_score",
)
DYNAMICS_COLUMNS = ("step", "param", "weight_norm", "update_ratio", "grad_norm")
# tasks.csv (with `train.eval_tasks`): a row per task per scored step (`eval.monitor`).
TASK_COLUMNS = ("step", "task", "metric", "accuracy", "baseline", "centered")
# The files' names in a run directory (the other run files are named in `rundir`).
METRICS_FILE = "metrics.csv"
DYNAMICS_FILE = "dynamics.csv"
TASKS_FILE = "tasks.csv"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_metrics(path: str | Path) -> list[dict[str, float | None]]:
    """The rows of a metrics.csv as dicts of floats (None for an empty cell). The one reader of
    the file: `plots` and `sweep` go through it. A cell that is not a number is a ValueError."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def final_metrics(rows: list[dict[str, float | None]]) -> dict[str, float]:
    """What a run ended at: `val_loss` and `val_bpb` of the last evaluated row (training
    evaluates at the end; the whole split's when it was scored), the last step as `iters`, and the median `tokens_per_s`, which
    ignores the slow first interval and the pauses for evaluation; `nan` for what is missing."""
    last = next((r for r in reversed(rows) if r.get("val_loss") is not None), {})
    if last.get("full_val_loss") is not None:  # the whole split, scored at the end
        last = {**last, "val_loss": last["full_val_loss"], "val_bpb": last["full_val_bpb"]}
    steps = [r["step"] for r in rows if r.get("step") is not None]
    speeds = sorted(r["tokens_per_s"] for r in rows if r.get("tokens_per_s") is not None)
    return {
        "val_loss": last.get("val_loss", math.nan),
        "val_bpb": math.nan if last.get("val_bpb") is None else last["val_bpb"],
        "iters": max(steps, default=math.nan),
        "tokens_per_s": speeds[len(speeds) // 2] if speeds else math.nan,
    }


def read_dynamics(path: str | Path) -> dict[str, list[tuple[int, float, float, float]]]:
    """The rows of a dynamics.csv by parameter: name -> [(step, weight_norm, update_ratio,
    grad_norm)], in file order (the model's order, input to output); grad_norm is nan in a file
    written before it was logged."""
    out: dict[str, list[tuple[int, float, float, float]]] = {}
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            grad = float(row.get("grad_norm") or "nan")
            point = (int(row["step"]), float(row["weight_norm"]), float(row["update_ratio"]), grad)
            out.setdefault(row["param"], []).append(point)
    return out


def read_task_scores(path: str | Path) -> dict[str, list[tuple[int, float, float]]]:
    """The rows of a tasks.csv by task: name -> [(step, accuracy, baseline)], in file order."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            point = (int(row["step"]), float(row["accuracy"]), float(row["baseline"]))
            out.setdefault(row["task"], []).append(point)
    return out


def _truncate_after(path: Path, step: int, columns: tuple[str, ...]) -> None:
    """Keep the header and the rows with `step <= step` (rewritten atomically). A file whose
    columns are some of `columns` (written before a column was added) gets the new ones, empty."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = [r for r in reader if r.get("step") and float(r["step"]) <= step]
    if header[:1] != ["step"] or not set(header) <= set(columns):
        raise UserError(f"{path}: unexpected columns {header}; move the file away to resume")
    # A file of an earlier version (fewer columns) gets today's header, its cells kept.
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([r.get(c) or "" for c in columns] for r in rows)
    os.replace(tmp, path)


class CsvFile:
    """A CSV file of `columns` that rows are appended to, each flushed as it is written.
    `resume_step=None` starts a new file; an int keeps the existing rows up to that step."""

    def __init__(self, path: Path, columns: tuple[str, ...], resume_step: int | None) -> None:
        self.path, self.columns = path, columns
        resuming = resume_step is not None and path.exists()
        if resuming:
            _truncate_after(path, resume_step, columns)
        self._file = path.open("a" if resuming else "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if not resuming:
            self._writer.writerow(columns)
            self._file.flush()

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._writer.writerows([_cell(r.get(c)) for c in self.columns] for r in rows)
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


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
        self,
        out_dir: str | Path,
        resume_step: int | None = None,
        tensorboard: bool = False,
        columns: tuple[str, ...] = COLUMNS,
    ) -> None:
        self.path = Path(out_dir) / METRICS_FILE
        self.columns = columns  # another loop's own (`rl.loop.COLUMNS`); "step" first
        self._csv = CsvFile(self.path, columns, resume_step)
        self._tb = None
        if tensorboard and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tb"))

    def write(self, step: int, **values: Any) -> None:
        """Write one row; unknown column names are a bug and raise KeyError."""
        unknown = set(values) - set(self.columns)
        if unknown:
            raise KeyError(f"unknown metrics columns: {sorted(unknown)}")
        self._csv.write([{"step": step, **values}])
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, float) and math.isfinite(value) and name != "elapsed_s":
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        self._csv.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Throughput:
    """Tokens per second of training since the last logged step: each step adds its own
    tokens and time, so the pauses for evaluation and checkpoints do not count."""

    def __init__(self) -> None:
        self.tokens, self.seconds = 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def rate(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


class RunLog:
    """Where a run reports: lines to the console (through the progress bar while there is one),
    rows to `metrics.csv` (and TensorBoard). Built with `enabled=False` on every rank but 0,
    where each method does nothing, so the training loop never asks which rank it is on.

    `log(message)` prints a line; `log.row(step, **values)` writes a metrics row once
    `open_metrics` has opened the file; `with log.running(total, initial):` shows a tqdm bar
    when interactive and closes the bar and the metrics file at the end.
    """

    def __init__(self, *, enabled: bool = True, interactive: bool = False, print_fn=print) -> None:
        self.enabled = enabled
        self.interactive = enabled and interactive
        self._print = print_fn
        self._bar: Any = None
        self._metrics: MetricsLog | None = None
        self._dynamics: CsvFile | None = None
        self._tasks: CsvFile | None = None

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            self._print(message)

    def unless_bar(self, message: str) -> None:
        """A line that the progress bar already shows when there is one."""
        if self._bar is None:
            self(message)

    def advance(self, postfix: str) -> None:
        """One step done: move the progress bar on (when there is one)."""
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(postfix, refresh=False)

    def open_metrics(
        self,
        out_dir: str | Path,
        resume_step: int | None,
        tensorboard: bool,
        dynamics: bool = False,
        tasks: bool = False,
        columns: tuple[str, ...] = COLUMNS,
    ) -> None:
        if self.enabled:
            self._metrics = MetricsLog(out_dir, resume_step, tensorboard, columns)
            if dynamics:
                path = Path(out_dir) / DYNAMICS_FILE
                self._dynamics = CsvFile(path, DYNAMICS_COLUMNS, resume_step)
            if tasks:
                self._tasks = CsvFile(Path(out_dir) / TASKS_FILE, TASK_COLUMNS, resume_step)

    def task_scores(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Rows of `TASK_COLUMNS` (without the step) for `step`, when tasks.csv is open."""
        if self._tasks is not None:
            self._tasks.write([{"step": step, **r} for r in rows])

    def dynamics(self, step: int, rows: list[tuple[str, float, float, float]]) -> None:
        """Rows of (param, weight_norm, update_ratio, grad_norm) for `step`, when dynamics.csv
        is open."""
        if self._dynamics is not None:
            self._dynamics.write(
                [dict(zip(DYNAMICS_COLUMNS, (step, *r), strict=True)) for r in rows]
            )

    def row(self, step: int, **values: Any) -> None:
        if self._metrics is not None:
            self._metrics.write(step, **values)

    @contextlib.contextmanager
    def running(self, total: int, initial: int = 0) -> Iterator[None]:
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        try:
            yield
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if self._metrics is not None:
                self._metrics.close()
            for extra in (self._dynamics, self._tasks):
                if extra is not None:
                    extra.close()
