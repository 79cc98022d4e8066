"""The sweep spec: a small YAML file (see `configs/sweep_tiny.yaml`) read into a `SweepSpec`.

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

Values go through the run config's own checks (`check_key`, `coerce`, `closest`), so a bad
spec fails like a bad config: one line naming the file, the key, and the nearest valid name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from llm_tiny.config import ConfigError, check_key, choices, closest, coerce, read_yaml

Method = Literal["grid", "random"]
Metric = Literal["val_bpb", "val_loss"]
Mode = Literal["min", "max"]
Distribution = Literal["choice", "uniform", "log_uniform"]

REQUIRED = ("base", "space", "budget")
SPEC_KEYS = (*REQUIRED, "sweep_dir", "method", "trials", "seed", "metric", "mode", "overrides")
DISTRIBUTIONS = choices(Distribution)
BUDGETS = ("iters", "seconds")
SpecError = ConfigError  # a bad spec fails like a bad config (see above)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec; paths are as written, `base` resolved to an existing file."""

    base: Path
    sweep_dir: Path
    method: Method
    space: dict[str, Any]  # dotted key -> list of values, or {distribution: args}
    trials: int | None = None
    seed: int = 0
    budget_iters: int | None = None
    budget_seconds: float | None = None
    metric: Metric = "val_bpb"
    mode: Mode = "min"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "spec"


def _positive(value: Any, tp: type, where: str) -> Any:
    """`value` converted to `tp` (int or float) as the config converts it; it must be > 0."""
    value = coerce(value, tp, where)
    if not value > 0:  # NOTE: not `<= 0`, which would let a nan through
        raise SpecError(f"{where} must be {'>= 1' if tp is int else '> 0'}, got {value}")
    return value


def _config_key(key: Any, where: str) -> str:
    """Check that `key` names a config field as `section.name`; return it."""
    if not isinstance(key, str) or key.count(".") != 1:
        raise SpecError(f"{where}: {key!r} is not a dotted config key such as optim.lr")
    try:
        check_key(key, where)
    except ConfigError as e:  # "config key": the spec has keys of its own ("unknown key spaces")
        raise SpecError(str(e).replace(": unknown ", ": unknown config ", 1)) from None
    return key


def _space_entry(key: str, value: Any, method: str, where: str) -> Any:
    """Validate one search-space entry: a non-empty list, or (random only) a distribution."""
    where = f"{where}: space.{key}"
    if isinstance(value, list):
        if not value:
            raise SpecError(f"{where}: the list of values is empty")
        return list(value)
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a list of values, got {value!r}")
    if method == "grid":
        raise SpecError(
            f"{where}: grid search needs a list of values; "
            "distributions ({uniform: [lo, hi]}, ...) are for method: random"
        )
    if len(value) != 1:
        raise SpecError(f"{where}: expected one of {' | '.join(DISTRIBUTIONS)}, got {value!r}")
    ((kind, args),) = value.items()
    kind = coerce(kind, Distribution, f"{where}: distribution")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpecError(f"{where}: choice needs a non-empty list of values")
        return {"choice": list(args)}
    if not isinstance(args, list) or len(args) != 2:
        raise SpecError(f"{where}: {kind} needs [low, high], got {args!r}")
    lo, hi = (coerce(a, float, f"{where}.{kind}") for a in args)
    if not lo < hi:
        raise SpecError(f"{where}: {kind} needs low < high, got [{lo}, {hi}]")
    if kind == "log_uniform" and lo <= 0:
        raise SpecError(f"{where}: log_uniform needs low > 0, got {lo}")
    return {kind: [lo, hi]}


def _resolve_base(base: Any, spec_path: Path, where: str) -> Path:
    """`base` relative to the spec's folder if a file is there, else relative to the cwd."""
    if not isinstance(base, str) or not base:
        raise SpecError(f"{where}: base must be the path of a run config, got {base!r}")
    candidates = [spec_path.parent / base, Path(base)]  # the same path twice if `base` is absolute
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
            raise SpecError(f"{where}: unknown key {key}{closest(str(key), list(SPEC_KEYS))}")
    for key in REQUIRED:
        if key not in raw:
            raise SpecError(f"{where}: missing key {key}")

    method = coerce(raw.get("method", "grid"), Method, f"{where}: method")
    trials, seed = None, 0
    if method == "random":
        if raw.get("trials") is None:
            raise SpecError(f"{where}: method random needs trials: N (an integer >= 1)")
        trials = _positive(raw["trials"], int, f"{where}: trials")
        seed = coerce(raw.get("seed", 0), int, f"{where}: seed")
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
            raise SpecError(f"{where}: unknown budget key {key}{closest(str(key), list(BUDGETS))}")
    if len(budget) != 1:
        raise SpecError(f"{where}: budget takes one of iters or seconds, not both")
    iters = seconds = None
    if "iters" in budget:
        iters = _positive(budget["iters"], int, f"{where}: budget.iters")
    else:
        seconds = _positive(budget["seconds"], float, f"{where}: budget.seconds")
    metric = coerce(raw.get("metric", "val_bpb"), Metric, f"{where}: metric")
    mode = coerce(raw.get("mode", "min"), Mode, f"{where}: mode")

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
        trials=trials,
        seed=seed,
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
