"""The search space: the points a spec asks for (each maps the varied dotted keys to values,
from a grid or seeded random draws), and the `Trial`s planned from them: the base config with a
point, the spec's overrides and the budget applied, validated, and named by a hash of what it
trains, so that the same spec run again finds its finished trials."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

from llm_tiny.config import (
    SECTIONS,
    ConfigError,
    RunConfig,
    config_from_dict,
    config_to_dict,
    field_types,
    load_config,
    override,
    with_dotted,
)
from llm_tiny.sweep.spec import SweepSpec

# With a time budget `max_iters` only has to be out of reach (see `trial_overrides`).
SECONDS_BUDGET_MAX_ITERS = 1_000_000

# Keys that locate a trial's files or pace its process; they do not change what is trained,
# so they are left out of a trial's identity.
NOT_IDENTITY = (
    "train.out_dir", "train.threads", "train.resume", "train.overwrite", "data.data_dir",
    "data.tokenizer",
)  # fmt: skip


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


# ----------------------------------------------------------------------------- points


def grid_points(space: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the listed values, the last key varying fastest.

    >>> grid_points({"optim.lr": [1, 2], "model.n_layer": [3, 4]})
    [{'optim.lr': 1, 'model.n_layer': 3}, {'optim.lr': 1, 'model.n_layer': 4}, {'optim.lr': 2, 'model.n_layer': 3}, {'optim.lr': 2, 'model.n_layer': 4}]
    """
    keys = list(space)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]


def _is_int_field(key: str) -> bool:
    section, name = key.split(".")
    tp = field_types(SECTIONS[section])[name]
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
    """The points a spec asks for (random choice may draw one twice: see `plan_trials`)."""
    if spec.method == "grid":
        return grid_points(spec.space)
    return sample_points(spec.space, spec.trials or 0, spec.seed)


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
    out: dict[str, Any] = {
        "train.threads": threads, "train.resume": "never", "train.overwrite": True
    }  # fmt: skip
    if spec.budget_iters is not None:
        out["train.max_iters"] = spec.budget_iters
    else:
        out["train.max_seconds"] = spec.budget_seconds
        out["train.max_iters"] = SECONDS_BUDGET_MAX_ITERS
        if "optim.schedule" not in spec.overrides and "optim.schedule" not in spec.space:
            out["optim.schedule"] = "constant"
    return out


def plan_trials(
    spec: SweepSpec, threads: int, cli_overrides: dict[str, Any] | None = None
) -> list[Trial]:
    """Turn each point of the space into a Trial with a validated config (or an error).

    Trials start from the spec's base config; `cli_overrides` maps dotted keys to values, like
    the spec's `overrides`. Trials share the base config's tokenizer and prepared data so that
    data is prepared once, unless the space varies a `data.*` key; then each trial prepares its
    own under its folder.
    """
    base_raw = config_to_dict(load_config(spec.base))
    fixed = {**spec.overrides, **(cli_overrides or {}), **trial_overrides(spec, threads)}
    asked = spec.overrides.get("train.threads")
    if isinstance(asked, int) and not isinstance(asked, bool) and asked >= 1:
        fixed["train.threads"] = min(asked, threads)  # fewer threads than the share: keep
    own_data = any(k.startswith("data.") for k in spec.space)
    trials = []
    for point in space_points(spec):
        raw = with_dotted(base_raw, {**fixed, **point})
        try:
            cfg = config_from_dict(raw, "trial")
        except ConfigError as e:
            cfg = None
            error = one_line(str(e).removeprefix("trial: "))
        # NOTE: hashed after validation, so that `1e-3` (a string to PyYAML) and 0.001 are one
        # trial; the varied values are recorded as the config holds them, for the same reason.
        resolved = raw if cfg is None else config_to_dict(cfg)
        tid = trial_id(resolved, point)
        if any(t.id == tid for t in trials):
            continue  # the same trial written two ways, or drawn twice at random
        out_dir = spec.sweep_dir / f"trial_{tid}"
        values = {}
        for key, value in point.items():
            section, name = key.split(".")
            held = resolved[section][name]
            values[key] = held if isinstance(held, (int, float, str, bool)) else value
        if cfg is None:
            trials.append(Trial(tid, values, out_dir, status="failed", error=error))
            continue
        # Trials that vary the data prepare their own below their out_dir (unless the point
        # names the paths); the others share the base run's tokenizer and prepared data.
        paths = {"train.out_dir": str(out_dir)}
        own = dataclasses.replace(cfg.data, data_dir=None, tokenizer=None).resolved(out_dir)
        own = own if own_data else cfg.run_data
        for key in ("data.data_dir", "data.tokenizer"):
            if key not in point:
                paths[key] = getattr(own, key.split(".")[1])
        trials.append(Trial(tid, values, out_dir, config=override(cfg, **paths)))
    return trials


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line, cut to `limit` characters (for a CSV cell and a log line)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
