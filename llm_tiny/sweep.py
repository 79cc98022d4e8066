"""Hyperparameter sweeps: `python -m llm_tiny sweep SPEC.yaml [--jobs N] [--retry-failed]`.

A sweep spec is a small YAML file (see `configs/sweep_tiny.yaml`)::

    base: configs/tiny.yaml        # the run config every trial starts from
    sweep_dir: out/sweep_tiny      # trials, results.csv, best.yaml and sweep.png go here
    method: grid                   # grid | random (random also takes `trials` and `seed`)
    space:                         # dotted config key -> values
      optim.lr: [1.0e-3, 3.0e-3]
      model.n_embd: [64, 128]
    budget: {iters: 200}           # or {seconds: 30}; the per-trial training budget
    metric: val_bpb                # val_bpb (default) | val_loss
    mode: min                      # min (default) | max
    overrides: {train.eval_interval: 100}   # applied to every trial

Each trial is an ordinary training run, `python -m llm_tiny train TRIAL/config.yaml`, in a
subprocess of its own so that a crash in one trial cannot take the sweep down. A trial's
identity is a hash of its resolved config (minus the output paths and thread count), so running
the same spec again skips the trials that already finished and re-runs only the missing ones
(and the failed ones with `--retry-failed`). `results.csv` is rewritten after every trial.

The pure parts — spec validation, grid expansion, seeded random sampling, the trial hash and
ranking — are plain functions; `run_sweep` only wires them to subprocesses and files.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from llm_tiny.config import (
    SECTIONS,
    ConfigError,
    RunConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    override,
    parse_override_value,
    read_yaml,
    split_overrides,
)
from llm_tiny.errors import ArgumentParser, UserError, run_cli

SPEC_KEYS = (
    "base",
    "sweep_dir",
    "method",
    "trials",
    "seed",
    "space",
    "budget",
    "metric",
    "mode",
    "overrides",
)
METHODS = ("grid", "random")
METRICS = ("val_bpb", "val_loss")
MODES = ("min", "max")
BUDGETS = ("iters", "seconds")
DISTRIBUTIONS = ("choice", "uniform", "log_uniform")

# With a time budget the real stop is `train.max_seconds`; `max_iters` only has to be out of
# reach. It also sets the length of the cosine schedule, see `trial_overrides`.
SECONDS_BUDGET_MAX_ITERS = 1_000_000

# Keys that locate a trial's files or pace its process; they do not change what is trained,
# so they are left out of a trial's identity.
NOT_IDENTITY = ("train.out_dir", "train.threads", "train.resume", "data.data_dir", "data.tokenizer")


class SpecError(UserError):
    """An invalid sweep spec."""


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec; paths are as written, `base` resolved to an existing file."""

    base: Path
    sweep_dir: Path
    method: str
    space: dict[str, Any]  # dotted key -> list of values, or {distribution: args}
    trials: int | None = None
    seed: int = 0
    budget_iters: int | None = None
    budget_seconds: float | None = None
    metric: str = "val_bpb"
    mode: str = "min"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "spec"


@dataclasses.dataclass
class Trial:
    """One point of the search space and what became of it."""

    id: str
    values: dict[str, Any]  # the varied keys only
    out_dir: Path
    config: RunConfig | None = None  # None when the values do not make a valid config
    status: str = "pending"  # pending | ok | failed | interrupted
    metric: float = math.nan
    val_loss: float = math.nan
    val_bpb: float = math.nan
    iters: int | None = None
    wall_s: float = math.nan
    tokens_per_s: float = math.nan
    error: str = ""


# ----------------------------------------------------------------------------- the spec


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean {match[0]}?)" if match else ""


def _field_types(section: str) -> dict[str, Any]:
    """Field name -> type of one config section, e.g. "optim" -> {"lr": float, ...}."""
    return typing.get_type_hints(SECTIONS[section])


def _config_key(key: Any, where: str) -> str:
    """Check that `key` names a config field as `section.name`; return it."""
    if not isinstance(key, str) or key.count(".") != 1:
        raise SpecError(f"{where}: {key!r} is not a dotted config key such as optim.lr")
    section, name = key.split(".")
    if section not in SECTIONS:
        hint = _closest(section, list(SECTIONS))
        raise SpecError(f"{where}: {key}: unknown config section {section}{hint}")
    fields = _field_types(section)
    if name not in fields:
        hint = _closest(key, [f"{section}.{f}" for f in fields])
        raise SpecError(f"{where}: unknown config key {key}{hint}")
    return key


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SpecError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)  # PyYAML reads `3e-4` (no dot) as a string
    except ValueError:
        raise SpecError(f"{where}: expected a number, got {value!r}") from None


def _space_entry(key: str, value: Any, method: str, where: str) -> Any:
    """Validate one search-space entry: a non-empty list, or (random only) a distribution."""
    where = f"{where}: space.{key}"
    if isinstance(value, list):
        if not value:
            raise SpecError(f"{where}: the list of values is empty")
        return list(value)
    if isinstance(value, dict):
        if method == "grid":
            raise SpecError(
                f"{where}: grid search needs a list of values; "
                "distributions ({uniform: [lo, hi]}, ...) are for method: random"
            )
        if len(value) != 1:
            raise SpecError(f"{where}: expected one of {' | '.join(DISTRIBUTIONS)}, got {value!r}")
        ((kind, args),) = value.items()
        if kind not in DISTRIBUTIONS:
            hint = _closest(str(kind), list(DISTRIBUTIONS))
            raise SpecError(
                f"{where}: unknown distribution {kind}{hint}; use {' | '.join(DISTRIBUTIONS)}"
            )
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise SpecError(f"{where}: choice needs a non-empty list of values")
            return {"choice": list(args)}
        if not isinstance(args, list) or len(args) != 2:
            raise SpecError(f"{where}: {kind} needs [low, high], got {args!r}")
        lo, hi = (_number(a, f"{where}.{kind}") for a in args)
        if not lo < hi:
            raise SpecError(f"{where}: {kind} needs low < high, got [{lo}, {hi}]")
        if kind == "log_uniform" and lo <= 0:
            raise SpecError(f"{where}: log_uniform needs low > 0, got {lo}")
        return {kind: [lo, hi]}
    raise SpecError(f"{where}: expected a list of values, got {value!r}")


def _resolve_base(base: Any, spec_path: Path, where: str) -> Path:
    """`base` relative to the spec's folder if a file is there, else relative to the cwd."""
    if not isinstance(base, str) or not base:
        raise SpecError(f"{where}: base must be the path of a run config, got {base!r}")
    candidates = [Path(base)] if Path(base).is_absolute() else [spec_path.parent / base, Path(base)]
    for path in candidates:
        if path.is_file():
            return path
    tried = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise SpecError(f"{where}: base config not found (tried {tried})")


def parse_spec(raw: Any, spec_path: str | Path = "spec") -> SweepSpec:
    """Validate a spec as `yaml.safe_load` returns it; every problem is a one-line SpecError."""
    spec_path = Path(spec_path)
    where = str(spec_path)
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a sweep spec must be a mapping of key: value, got {raw!r}")
    for key in raw:
        if key not in SPEC_KEYS:
            raise SpecError(f"{where}: unknown key {key}{_closest(str(key), list(SPEC_KEYS))}")
    for key in ("base", "space", "budget"):
        if key not in raw:
            raise SpecError(f"{where}: missing key {key}")

    method = raw.get("method", "grid")
    if method not in METHODS:
        hint = _closest(str(method), list(METHODS))
        raise SpecError(
            f"{where}: method must be one of {' | '.join(METHODS)}, got {method!r}{hint}"
        )
    trials, seed = raw.get("trials"), raw.get("seed", 0)
    if method == "random":
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise SpecError(f"{where}: method random needs trials: N (an integer >= 1)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise SpecError(f"{where}: seed must be an integer, got {seed!r}")
    elif "trials" in raw or "seed" in raw:
        raise SpecError(f"{where}: trials and seed apply to method: random only (grid runs all)")

    space = raw["space"]
    if not isinstance(space, dict) or not space:
        raise SpecError(
            f"{where}: space must map config keys to values, e.g. optim.lr: [1e-3, 3e-3]"
        )
    space = {
        _config_key(k, f"{where}: space"): _space_entry(k, v, method, where)
        for k, v in space.items()
    }

    budget = raw["budget"]
    if not isinstance(budget, dict) or not budget:
        raise SpecError(f"{where}: budget must be {{iters: N}} or {{seconds: S}}, got {budget!r}")
    for key in budget:
        if key not in BUDGETS:
            raise SpecError(f"{where}: unknown budget key {key}{_closest(str(key), list(BUDGETS))}")
    if len(budget) != 1:
        raise SpecError(f"{where}: budget takes one of iters or seconds, not both")
    iters, seconds = budget.get("iters"), budget.get("seconds")
    if iters is not None and (isinstance(iters, bool) or not isinstance(iters, int) or iters < 1):
        raise SpecError(f"{where}: budget.iters must be an integer >= 1, got {iters!r}")
    if "seconds" in budget:
        seconds = _number(seconds, f"{where}: budget.seconds")
        if not seconds > 0:
            raise SpecError(f"{where}: budget.seconds must be > 0, got {seconds}")

    metric, mode = raw.get("metric", "val_bpb"), raw.get("mode", "min")
    if metric not in METRICS:
        hint = _closest(str(metric), list(METRICS))
        raise SpecError(
            f"{where}: metric must be one of {' | '.join(METRICS)}, got {metric!r}{hint}"
        )
    if mode not in MODES:
        raise SpecError(f"{where}: mode must be min or max, got {mode!r}")

    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SpecError(f"{where}: overrides must map dotted config keys to values")
    overrides = {_config_key(k, f"{where}: overrides"): v for k, v in overrides.items()}
    clash = sorted(set(overrides) & set(space))
    if clash:
        raise SpecError(f"{where}: {clash[0]} is both in space and in overrides; keep one")

    sweep_dir = raw.get("sweep_dir", f"out/sweep_{spec_path.stem}")
    if not isinstance(sweep_dir, str) or not sweep_dir:
        raise SpecError(f"{where}: sweep_dir must be a path, got {sweep_dir!r}")

    return SweepSpec(
        base=_resolve_base(raw["base"], spec_path, where),
        sweep_dir=Path(sweep_dir),
        method=method,
        space=space,
        trials=trials if method == "random" else None,
        seed=seed if method == "random" else 0,
        budget_iters=iters,
        budget_seconds=seconds,
        metric=metric,
        mode=mode,
        overrides=overrides,
        source=where,
    )


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec file."""
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise SpecError(str(e).replace("config file", "sweep spec")) from None
    return parse_spec(raw, path)


# ----------------------------------------------------------------------------- the search space


def grid_points(space: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the listed values, the last key varying fastest.

    >>> grid_points({"optim.lr": [1, 2], "model.n_layer": [3, 4]})
    [{'optim.lr': 1, 'model.n_layer': 3}, {'optim.lr': 1, 'model.n_layer': 4}, {'optim.lr': 2, 'model.n_layer': 3}, {'optim.lr': 2, 'model.n_layer': 4}]
    """
    keys = list(space)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]


def _is_int_field(key: str) -> bool:
    section, name = key.split(".")
    tp = _field_types(section)[name]
    return tp is int or int in typing.get_args(tp)


def sample_points(space: dict[str, Any], trials: int, seed: int) -> list[dict[str, Any]]:
    """`trials` random points: a list is a uniform choice, `{uniform: [lo, hi]}` and
    `{log_uniform: [lo, hi]}` are continuous (rounded for integer fields).

    The same (space, trials, seed) always gives the same points, and the first k points do not
    depend on `trials`, so asking for more trials extends a sweep instead of replacing it.
    """
    rng = random.Random(seed)
    points = []
    for _ in range(trials):
        point = {}
        for key, entry in space.items():
            if isinstance(entry, list):
                value = rng.choice(entry)
            elif "choice" in entry:
                value = rng.choice(entry["choice"])
            elif "uniform" in entry:
                value = rng.uniform(*entry["uniform"])
            else:
                lo, hi = entry["log_uniform"]
                value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            if isinstance(value, float) and _is_int_field(key):
                value = round(value)
            elif isinstance(value, float) and not isinstance(entry, list):
                value = float(f"{value:.4g}")  # 4 significant digits read well in tables
            point[key] = value
        points.append(point)
    return points


def space_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The points a spec asks for, duplicates (possible with random choice) dropped."""
    if spec.method == "grid":
        points = grid_points(spec.space)
    else:
        points = sample_points(spec.space, spec.trials or 0, spec.seed)
    unique: dict[str, dict[str, Any]] = {}
    for p in points:
        unique.setdefault(json.dumps(p, sort_keys=True, default=str), p)
    return list(unique.values())


# ----------------------------------------------------------------------------- trials


def trial_id(cfg_dict: dict[str, dict[str, Any]], varied: Collection[str] = ()) -> str:
    """8 hex digits identifying what a trial trains: a hash of its resolved config without
    the paths and thread count (`NOT_IDENTITY`), unless the sweep varies them."""
    ident = {s: dict(v) for s, v in cfg_dict.items()}
    for key in set(NOT_IDENTITY) - set(varied):
        section, name = key.split(".")
        ident[section].pop(name, None)
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def trial_overrides(spec: SweepSpec, threads: int) -> dict[str, Any]:
    """What the sweep itself sets in every trial: the budget and the thread count.

    With `budget: {seconds: S}` a trial stops on `train.max_seconds = S`. `train.max_iters`
    is then set out of reach, and because the cosine / wsd schedule decays over
    `optim.lr_decay_iters` (default: max_iters), a time-budgeted trial would otherwise train
    at almost the peak rate to the end. NOTE: so the schedule is switched to `constant` (after
    warm-up) unless the spec's overrides choose one — every trial then sees the same schedule
    whatever its speed, which is what comparing runs at equal wall time needs.
    """
    # Every trial starts from scratch: an interrupted trial is trained again, not resumed.
    out: dict[str, Any] = {"train.threads": threads, "train.resume": "never"}
    if spec.budget_iters is not None:
        out["train.max_iters"] = spec.budget_iters
    else:
        out["train.max_seconds"] = spec.budget_seconds
        out["train.max_iters"] = SECONDS_BUDGET_MAX_ITERS
        if "optim.schedule" not in spec.overrides and "optim.schedule" not in spec.space:
            out["optim.schedule"] = "constant"
    return out


def _nested(raw: dict[str, dict[str, Any]], dotted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {s: dict(v) for s, v in raw.items()}
    for key, value in dotted.items():
        section, name = key.split(".")
        out[section][name] = value
    return out


def plan_trials(
    spec: SweepSpec,
    base: RunConfig,
    threads: int,
    cli_overrides: dict[str, Any] | None = None,
) -> list[Trial]:
    """Turn each point of the space into a Trial with a validated config (or an error).

    Trials share the base config's tokenizer and prepared data so that data is prepared once,
    unless the space varies a `data.*` key; then each trial prepares its own under its folder.
    """
    base_raw = config_to_dict(base)
    fixed = {**spec.overrides, **(cli_overrides or {}), **trial_overrides(spec, threads)}
    asked = spec.overrides.get("train.threads")
    if isinstance(asked, int) and not isinstance(asked, bool) and asked >= 1:
        fixed["train.threads"] = min(asked, threads)  # fewer threads than the share: keep
    own_data = any(k.startswith("data.") for k in spec.space)
    trials = []
    for point in space_points(spec):
        raw = _nested(base_raw, {**fixed, **point})
        try:
            cfg = config_from_dict(raw, "trial")
        except ConfigError as e:
            tid = trial_id(raw, point)
            error = _one_line(str(e).removeprefix("trial: "))
            out_dir = spec.sweep_dir / f"trial_{tid}"
            trials.append(Trial(tid, point, out_dir, status="failed", error=error))
            continue
        # NOTE: hashed after validation, so that `1e-3` (a string to PyYAML) and 0.001 are one
        # trial; the varied values are recorded as the config holds them, for the same reason.
        resolved = config_to_dict(cfg)
        tid = trial_id(resolved, point)
        if any(t.id == tid for t in trials):
            continue  # the same trial written two ways
        out_dir = spec.sweep_dir / f"trial_{tid}"
        paths = {"train.out_dir": str(out_dir)}
        if own_data:
            if "data.data_dir" not in point:
                paths["data.data_dir"] = str(out_dir / "data")
            if "data.tokenizer" not in point:
                paths["data.tokenizer"] = str(out_dir / "tok" / "bpe.json")
        values = {}
        for key, value in point.items():
            section, name = key.split(".")
            held = resolved[section][name]
            values[key] = held if isinstance(held, (int, float, str, bool)) else value
        trials.append(Trial(tid, values, out_dir, config=override(cfg, **paths)))
    return trials


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_final_metrics(out_dir: Path) -> dict[str, float]:
    """Final validation loss / bpb, last step and median tokens/s from a run's metrics.csv.

    The validation numbers come from the last row that has them (training evaluates at the
    end); throughput is the median of the logged `tokens_per_s`, which ignores the slow first
    interval and the pauses for evaluation.
    """
    path = out_dir / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} was not written")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    def col(name: str) -> list[float]:
        return [float(r[name]) for r in rows if r.get(name) not in (None, "")]

    out = {"val_loss": math.nan, "val_bpb": math.nan, "iters": math.nan, "tokens_per_s": math.nan}
    evaluated = [r for r in rows if r.get("val_loss") not in (None, "")]
    if evaluated:
        last = evaluated[-1]
        out["val_loss"] = float(last["val_loss"])
        out["val_bpb"] = (
            float(last["val_bpb"]) if last.get("val_bpb") not in (None, "") else math.nan
        )
    steps = col("step")
    if steps:
        out["iters"] = max(steps)
    speeds = sorted(col("tokens_per_s"))
    if speeds:
        out["tokens_per_s"] = speeds[len(speeds) // 2]
    return out


class Processes:
    """The training subprocesses in flight, so that Ctrl-C can stop every one of them.

    Trials start in a session of their own, so the terminal's Ctrl-C reaches only the sweep;
    the sweep then stops them itself (`stop_all`) and marks them interrupted rather than
    failed, which is what lets the next run of the same spec re-run them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen] = {}
        self.stopped = False

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen | None:
        """Start `cmd`, or return None once the sweep is stopping."""
        with self._lock:
            if self.stopped:
                return None
            proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
            self._running[proc.pid] = proc
            return proc

    def finished(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.pop(proc.pid, None)

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Refuse new trials, ask the running ones to stop, kill those that do not."""
        with self._lock:
            self.stopped = True
            procs = list(self._running.values())
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def run_trial(
    trial: Trial, metric: str, processes: Processes | None = None, python: str = sys.executable
) -> Trial:
    """Train one trial in a subprocess; fill in its status, metric and timings."""
    assert trial.config is not None
    processes = processes or Processes()
    if processes.stopped:
        trial.status = "interrupted"
        return trial
    trial.out_dir.mkdir(parents=True, exist_ok=True)
    config_path = trial.out_dir / "config.yaml"
    config_path.write_text(dump_config(trial.config), encoding="utf-8")
    (trial.out_dir / "trial.json").write_text(
        json.dumps({"id": trial.id, "values": trial.values}, indent=2, default=str) + "\n",
        encoding="utf-8",
    )
    # A stale metrics.csv from an interrupted attempt must not be read as this one's result.
    (trial.out_dir / "metrics.csv").unlink(missing_ok=True)
    env = dict(os.environ)
    threads = str(trial.config.train.threads or 1)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    cmd = [python, "-m", "llm_tiny", "train", str(config_path)]
    t0 = time.perf_counter()
    with (trial.out_dir / "train.log").open("w", encoding="utf-8") as log:
        proc = processes.start(cmd, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
        if proc is None:
            trial.status = "interrupted"
            return trial
        try:
            _, stderr = proc.communicate()
        finally:
            processes.finished(proc)
        log.write(stderr)
    trial.wall_s = time.perf_counter() - t0
    if processes.stopped:
        trial.status = "interrupted"
        return trial
    if proc.returncode != 0:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"train exited with status {proc.returncode}"
        trial.status, trial.error = "failed", _one_line(last)
        return trial
    try:
        final = read_final_metrics(trial.out_dir)
    except (OSError, ValueError, KeyError) as e:
        trial.status, trial.error = "failed", _one_line(f"cannot read metrics: {e}")
        return trial
    trial.val_loss, trial.val_bpb = final["val_loss"], final["val_bpb"]
    trial.tokens_per_s = final["tokens_per_s"]
    trial.iters = None if math.isnan(final["iters"]) else int(final["iters"])
    trial.metric = final[metric]
    if math.isfinite(trial.metric):
        trial.status = "ok"
    else:
        trial.status = "failed"
        trial.error = f"final {metric} is {trial.metric} (diverged or never evaluated)"
    return trial


# ----------------------------------------------------------------------------- results


def result_columns(keys: list[str]) -> list[str]:
    return [
        "trial",
        "status",
        "metric",
        *keys,
        "val_loss",
        "val_bpb",
        "iters",
        "wall_s",
        "tokens_per_s",
        "out_dir",
        "error",
    ]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.8g}"
    return str(value)


def write_results(path: Path, trials: list[Trial], keys: list[str]) -> None:
    """Write every finished trial as one CSV row (atomically: temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(result_columns(keys))
        for t in trials:
            if t.status not in ("ok", "failed"):
                continue
            writer.writerow(
                [
                    t.id,
                    t.status,
                    _fmt(t.metric),
                    *(_fmt(t.values.get(k)) for k in keys),
                    _fmt(t.val_loss),
                    _fmt(t.val_bpb),
                    _fmt(t.iters),
                    _fmt(t.wall_s),
                    _fmt(t.tokens_per_s),
                    str(t.out_dir) if t.config is not None else "",  # never-run trials have none
                    t.error,
                ]
            )
    tmp.replace(path)


def read_results(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing results.csv by trial id ({} when there is none)."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["trial"]: row for row in csv.DictReader(f) if row.get("trial")}


def _float(text: str | None) -> float:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.nan


def restore(trial: Trial, row: dict[str, str], metric: str) -> None:
    """Fill a planned trial from its row in a previous results.csv."""
    trial.status, trial.error = row.get("status", "failed"), row.get("error", "")
    trial.val_loss, trial.val_bpb = _float(row.get("val_loss")), _float(row.get("val_bpb"))
    trial.metric = trial.val_bpb if metric == "val_bpb" else trial.val_loss
    trial.wall_s, trial.tokens_per_s = _float(row.get("wall_s")), _float(row.get("tokens_per_s"))
    iters = _float(row.get("iters"))
    trial.iters = None if math.isnan(iters) else int(iters)


def rank(trials: list[Trial], mode: str = "min") -> list[Trial]:
    """Successful trials best first (ties keep plan order), then the failed ones."""
    ok = [t for t in trials if t.status == "ok" and math.isfinite(t.metric)]
    ok.sort(key=lambda t: t.metric if mode == "min" else -t.metric)
    ranked = {t.id for t in ok}
    return ok + [t for t in trials if t.id not in ranked]


def format_table(trials: list[Trial], keys: list[str], metric: str) -> str:
    """The ranked table printed at the end of a sweep."""
    header = ["rank", "trial", metric, *keys, "wall_s", "tok/s", "status"]
    rows = []
    for i, t in enumerate(trials, 1):
        ok = t.status == "ok"
        rows.append(
            [
                str(i) if ok else "-",
                t.id,
                f"{t.metric:.4f}" if ok else "",
                *(_fmt(t.values.get(k)) for k in keys),
                f"{t.wall_s:.1f}" if math.isfinite(t.wall_s) else "",
                f"{t.tokens_per_s:,.0f}" if math.isfinite(t.tokens_per_s) else "",
                t.status if ok else f"failed: {t.error}",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:-1])]
    lines = []
    for r in [header, *rows]:
        cells = [c.rjust(w) if c[:1].isdigit() else c.ljust(w) for c, w in zip(r, widths)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines)


def write_best(path: Path, best: Trial, spec: SweepSpec) -> None:
    """The best trial's full config, ready to train again (into sweep_dir/best)."""
    assert best.config is not None
    raw = config_to_dict(best.config)
    raw["train"]["out_dir"] = str(spec.sweep_dir / "best")
    raw["train"]["threads"] = None
    values = ", ".join(f"{k}={_fmt(v)}" for k, v in best.values.items())
    header = (
        f"# Best trial of {spec.source}: {best.id} ({values}), {spec.metric} = {best.metric:.4f}\n"
        f"# trained in {best.out_dir}; retrain with: python -m llm_tiny train {path}\n"
    )
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), "utf-8")


def plot_sweep(path: Path, trials: list[Trial], keys: list[str], metric: str, mode: str) -> None:
    """One panel per varied key: the metric of every successful trial against that key's value.

    Numeric keys get a numeric axis (logarithmic for learning rates and for values spanning more
    than a decade); other values (strings, booleans) are placed as categories.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ok = [t for t in trials if t.status == "ok" and math.isfinite(t.metric)]
    best = rank(ok, mode)[0] if ok else None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [t.values[key] for t in ok]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            xs = [float(v) for v in values]
            positive = bool(xs) and min(xs) > 0
            # Learning rates are searched on a log scale; so is anything spanning a decade.
            if positive and (key.endswith("lr") or max(xs) / min(xs) > 10):
                ax.set_xscale("log")
            tried = sorted(set(xs))
            if len(tried) <= 8:  # label exactly the values that were tried
                ax.set_xticks(tried, [_fmt(v) for v in tried])
                ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            labels = sorted({str(v) for v in values})
            xs = [float(labels.index(str(v))) for v in values]
            ax.set_xticks(range(len(labels)), labels)
        ax.scatter(xs, [t.metric for t in ok], color="tab:blue", zorder=2)
        if best is not None:
            i = ok.index(best)
            ax.scatter([xs[i]], [best.metric], color="tab:red", zorder=3, label="best")
            ax.legend(loc="best", fontsize=8)
        ax.margins(x=0.15)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(ok)} trials, {metric} ({mode}imised)")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


# ----------------------------------------------------------------------------- the sweep


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads per trial so that jobs × threads never exceeds the cores.

    >>> threads_per_job(2, cores=8), threads_per_job(3, cores=8), threads_per_job(4, cores=2)
    (4, 2, 1)
    """
    cores = cores or os.cpu_count() or 1
    return max(1, cores // jobs)


def run_sweep(
    spec: SweepSpec,
    jobs: int = 1,
    retry_failed: bool = False,
    cli_overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Trial]:
    """Run (or resume) a sweep; return its trials ranked best first.

    `log` receives the progress lines (default: print, flushed, so `| tee` shows them live).
    """
    log = log or functools.partial(print, flush=True)
    cores = os.cpu_count() or 1
    if jobs > cores:
        log(f"sweep: --jobs {jobs} is more than the {cores} cores; running {cores} at a time")
        jobs = cores
    threads = threads_per_job(jobs, cores)
    base = load_config(spec.base)
    keys = list(spec.space)
    trials = plan_trials(spec, base, threads, cli_overrides)
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    results_path = spec.sweep_dir / "results.csv"
    previous = read_results(results_path)

    todo = []
    for t in trials:
        row = previous.get(t.id)
        if t.config is None:
            log(f"sweep: trial {t.id} {_values(t)}: invalid config: {t.error}")
        elif row is not None and row.get("status") == "ok":
            restore(t, row, spec.metric)
            t.out_dir = Path(row.get("out_dir") or t.out_dir)
            log(f"sweep: trial {t.id} already finished ({spec.metric} {t.metric:.4f}), skipped")
        elif row is not None and row.get("status") == "failed" and not retry_failed:
            restore(t, row, spec.metric)
            log(f"sweep: trial {t.id} failed before, skipped (--retry-failed re-runs it)")
        else:
            todo.append(t)
    lock = threading.Lock()
    write_results(results_path, trials, keys)
    log(
        f"sweep: {len(trials)} trials ({spec.method}), {len(todo)} to run, "
        f"{jobs} at a time with {threads} thread(s) each; results in {results_path}"
    )
    processes = Processes()

    def one(t: Trial) -> None:
        with lock:
            if processes.stopped:
                return
            log(f"sweep: trial {t.id} {_values(t)}: training in {t.out_dir}")
        run_trial(t, spec.metric, processes)
        with lock:
            if t.status == "interrupted":
                return
            done = f"{spec.metric} {t.metric:.4f}" if t.status == "ok" else f"failed: {t.error}"
            log(f"sweep: trial {t.id} {done} ({t.wall_s:.1f} s)")
            write_results(results_path, trials, keys)

    if todo and not any(k.startswith("data.") for k in spec.space):
        # NOTE: trials that share the base's tokenizer and token files would race to prepare
        # them; preparing once here (a no-op when they are up to date) leaves nothing to race on.
        from llm_tiny.data import prepare_data

        prepare_data(todo[0].config.data, log=lambda m: log(f"sweep: {m}"))
    # Threads only wait on the subprocesses; the trials themselves run in parallel processes.
    with ThreadPoolExecutor(max_workers=jobs) as pool, _terminate_as_interrupt():
        try:
            for future in [pool.submit(one, t) for t in todo]:
                future.result()
        except KeyboardInterrupt:
            processes.stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            write_results(results_path, trials, keys)
            log("sweep: interrupted; run the same command again to resume")
            raise

    ranked = rank(trials, spec.mode)
    write_results(results_path, ranked, keys)
    log("")
    log(format_table(ranked, keys, spec.metric))
    n_ok = sum(t.status == "ok" for t in trials)
    if n_ok:
        best = ranked[0]
        write_best(spec.sweep_dir / "best.yaml", best, spec)
        plot_sweep(spec.sweep_dir / "sweep.png", trials, keys, spec.metric, spec.mode)
        log(
            f"\nsweep: best {best.id} {_values(best)} {spec.metric} {best.metric:.4f}; "
            f"wrote {spec.sweep_dir / 'best.yaml'} and {spec.sweep_dir / 'sweep.png'}"
        )
    else:
        log("\nsweep: no trial succeeded; see the error column and each trial's train.log")
    return ranked


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while trials run: the trials live in sessions of their own,
    so a sweep killed outright would leave them running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _values(t: Trial) -> str:
    return "(" + ", ".join(f"{k}={_fmt(v)}" for k, v in t.values.items()) + ")"


def main(argv: list[str] | None = None) -> int:
    """`python -m llm_tiny sweep SPEC.yaml [--jobs N] [--retry-failed] [--section.key=value]`."""
    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = ArgumentParser(
        prog="llm_tiny sweep",
        description="Search hyperparameters: train one run per point of a spec's space, "
        "rank them by the validation metric. Extra --section.key=value flags apply to every trial.",
    )
    parser.add_argument("spec", help="sweep spec YAML (see configs/sweep_tiny.yaml)")
    parser.add_argument("--jobs", type=int, default=1, help="trials run in parallel (default 1)")
    parser.add_argument(
        "--retry-failed", action="store_true", help="re-run trials that failed in an earlier run"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the planned trials and exit")
    args = parser.parse_args(rest)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")

    def run() -> int:
        spec = load_spec(args.spec)
        extra = {}
        for flag in overrides:
            key, eq, text = flag[2:].partition("=")
            if not eq:
                raise UserError(f"override {flag!r}: expected --section.key=value")
            extra[_config_key(key, f"override {flag}")] = parse_override_value(text)
        if args.dry_run:
            base = load_config(spec.base)
            for t in plan_trials(spec, base, threads_per_job(args.jobs), extra):
                state = "valid" if t.config is not None else f"invalid: {t.error}"
                print(f"{t.id}  {_values(t)}  {state}")
            return 0
        ranked = run_sweep(spec, args.jobs, args.retry_failed, extra)
        return 0 if any(t.status == "ok" for t in ranked) else 1

    return run_cli(run, "llm_tiny sweep")
