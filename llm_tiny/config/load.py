"""Loading a run config: YAML and `--section.key=value` flags into the dataclasses of
`llm_tiny.config.sections`, typed and validated once.

A run config has eight sections, each its own dataclass: `model`, `data`, `optim`, `train`,
`sample`, `lora`, `runtime` and `rl`. `load_config(path, overrides)` reads a YAML file with
`yaml.safe_load`, applies command-line overrides written `--section.key=value`, converts every
value to its field's type and validates the result. Every problem is a `ConfigError` whose message is one line
naming where the value came from (the file or the flag) and what is wrong, e.g.

    configs/tiny.yaml: unknown key model.n_emb (did you mean model.n_embd?)

The resolved config serialises back to YAML (`dump_config`) and reloads to an equal object.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from llm_tiny.config.rules import validate
from llm_tiny.config.sections import SECTIONS, ConfigError, RunConfig

# ----------------------------------------------------------------------------- types


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> type of a config section, e.g. OptimConfig -> {"lr": float, ...}."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Literal:
        return " | ".join(args)
    if type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + " or null"
    if typing.get_origin(tp) is tuple:
        return "list of " + _type_name(args[0])
    return {int: "integer", float: "number", bool: "true/false", str: "string"}[tp]


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the field type `tp`, or raise ConfigError.

    >>> coerce(3, float, "x"), coerce("3e-4", float, "x")
    (3.0, 0.0003)
    """
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Literal:
        text = coerce(value, str, where)
        if text not in args:
            hint = closest(text, list(args))
            raise ConfigError(f"{where} must be one of {_type_name(tp)}, got {text!r}{hint}")
        return text
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return None
        try:
            return coerce(value, next(a for a in args if a is not type(None)), where)
        except ConfigError:
            raise bad from None
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(coerce(v, args[0], where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 1e4 in YAML is a float; as an int field it means 10000
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in this file


def parse_override_value(text: str) -> Any:
    """Parse the text of `--section.key=TEXT` the way YAML would (`3e-4`, `true`, `null`)."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


# The names other frameworks give to a setting, and llm_tiny's key for it: a key that is not
# ours is matched here first, by its last part, before spelling distance (which would take
# `optim.learning_rate` for `optim.min_lr`).
ALIASES = {
    "learning_rate": "optim.lr", "lr_max": "optim.lr", "max_lr": "optim.lr",
    "warmup": "optim.warmup_iters", "warmup_steps": "optim.warmup_iters",
    "decay_iters": "optim.lr_decay_iters", "optimizer": "optim.name", "clip": "optim.grad_clip",
    "batch": "train.batch_size", "bs": "train.batch_size", "micro_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps", "accum": "train.grad_accum_steps",
    "epochs": "train.max_iters", "steps": "train.max_iters", "max_steps": "train.max_iters",
    "iters": "train.max_iters", "time": "train.max_seconds", "out": "train.out_dir",
    "output_dir": "train.out_dir", "n_layers": "model.n_layer", "layers": "model.n_layer",
    "num_layers": "model.n_layer", "n_heads": "model.n_head", "heads": "model.n_head",
    "num_heads": "model.n_head", "d_model": "model.n_embd", "hidden_size": "model.n_embd",
    "dim": "model.n_embd", "context": "model.block_size", "context_length": "model.block_size",
    "seq_len": "model.block_size", "max_seq_len": "model.block_size", "vocab": "data.vocab_size",
    "data": "data.input", "files": "data.input", "temp": "sample.temperature",
}  # fmt: skip


def closest(name: str, options: list[str]) -> str:
    """The hint ' (did you mean X?)' naming the option meant by a misspelt or foreign `name`
    (`ALIASES` first, then the nearest spelling), or ''.

    closest("optim.learning_rate", keys) -> " (did you mean optim.lr?)".
    """
    alias = ALIASES.get(name.rpartition(".")[2])
    if alias in options:
        return f" (did you mean {alias}?)"
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean {match[0]}?)" if match else ""


# ----------------------------------------------------------------------------- building


def _build_section(name: str, values: Any, sources: dict[str, str]) -> Any:
    cls = SECTIONS[name]
    where = sources.get(name, "config")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: section {name} must be a mapping of key: value")
    ftypes = field_types(cls)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{name}.{key}"
        src = sources.get(dotted, where)
        check_key(dotted, src)
        kwargs[key] = coerce(value, ftypes[key], f"{src}: {dotted}")
    return cls(**kwargs)


def config_from_dict(raw: Any, source: str = "config", sources: dict | None = None) -> RunConfig:
    """Build and validate a RunConfig from a nested dict such as `yaml.safe_load` returns."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {raw!r}")
    sources = dict(sources or {})
    for name in raw:
        if name not in SECTIONS:
            where = sources.get(str(name), source)
            raise ConfigError(
                f"{where}: unknown section {name}{closest(str(name), list(SECTIONS))}"
            )
        sources.setdefault(name, source)
    sections = {name: _build_section(name, raw.get(name), sources) for name in SECTIONS}
    cfg = RunConfig(**sections)
    validate(cfg, source)
    return cfg


# ----------------------------------------------------------------------------- files and flags


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file with `yaml.safe_load`; a missing or malformed file is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file ({e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None


def check_key(dotted: str, where: str) -> tuple[str, str]:
    """Check that `dotted` names a config field as `section.key`; return (section, key)."""
    section, _, name = dotted.partition(".")
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section {section}{closest(section, list(SECTIONS))}")
    fields = [f"{section}.{f.name}" for f in dataclasses.fields(SECTIONS[section])]
    if dotted not in fields:
        raise ConfigError(f"{where}: unknown key {dotted}{closest(dotted, fields)}")
    return section, name


def parse_overrides(overrides: list[str]) -> tuple[dict, dict]:
    """Turn `["--model.n_embd=64", ...]` into a nested dict and a key -> flag map. The one
    parser of `--section.key=value` flags (train, config, sweep); values are parsed as YAML."""
    nested: dict[str, dict] = {}
    sources: dict[str, str] = {}
    for flag in overrides:
        body = flag[2:] if flag.startswith("--") else flag
        key, eq, text = body.partition("=")
        if not eq or "." not in key:
            raise ConfigError(
                f"override {flag!r}: expected --section.key=value (write {flag}=VALUE)"
            )
        section, name = check_key(key, f"override {flag}")
        nested.setdefault(section, {})[name] = parse_override_value(text)
        sources[key] = f"override {flag}"
    return nested, sources


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when `path` is None) and apply overrides."""
    raw = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        source += " with overrides"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {raw!r}")
    extra, sources = parse_overrides(list(overrides or []))
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section, values in extra.items():
        base = merged.get(section) or {}
        if not isinstance(base, dict):
            raise ConfigError(f"{source}: section {section} must be a mapping of key: value")
        merged[section] = {**base, **values}
    merged = fit_warmup(merged, sources)
    return config_from_dict(merged, source, sources)


def fit_warmup(raw: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    """A short run asked for on the command line keeps its warmup within it: when
    `train.max_iters` comes from an override and `optim.warmup_iters` does not, a warmup longer
    than the run is lowered to the run's length, with a note on stderr. A warmup set by an
    override, or both set in the file, is left for `validate` to refuse.

    --train.max_iters=5 on a config with warmup 50 -> warmup 5 (the whole run warms up).
    """
    import sys

    if "train.max_iters" not in sources or "optim.warmup_iters" in sources:
        return raw
    train, optim = raw.get("train") or {}, raw.get("optim") or {}
    max_iters = train.get("max_iters")
    warmup = optim.get("warmup_iters", SECTIONS["optim"]().warmup_iters)
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (max_iters, warmup))
    if not numbers or max_iters < 1 or warmup <= max_iters:
        return raw
    print(
        f"note: optim.warmup_iters lowered from {warmup} to {max_iters} to fit "
        f"train.max_iters={max_iters} (set --optim.warmup_iters to choose)",
        file=sys.stderr,
    )
    return {**raw, "optim": {**optim, "warmup_iters": max_iters}}


def with_dotted(raw: dict[str, Any], dotted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A copy of a nested config dict with `{"section.key": value}` set (sections are created
    as needed; the input is not modified)."""
    out = {section: dict(values or {}) for section, values in raw.items()}
    for key, value in dotted.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def override(cfg: RunConfig, **dotted: Any) -> RunConfig:
    """A copy of `cfg` with values replaced and re-validated: `override(cfg, **{"train.max_iters": 5})`."""
    return config_from_dict(with_dotted(config_to_dict(cfg), dotted), "override")


def config_to_dict(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Plain nested dict (tuples become lists) suitable for YAML or JSON."""
    out = {}
    for name in SECTIONS:
        section = dataclasses.asdict(getattr(cfg, name))
        out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    return out


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML text; `config_from_dict(yaml.safe_load(text)) == cfg`."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_config(cfg), encoding="utf-8")
    tmp.replace(path)


# ----------------------------------------------------------------------------- CLI


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--section.key=value` overrides from the other arguments of a command. The
    space form `--section.key value` is accepted too, as argparse accepts it for flags.

    ["cfg.yaml", "--optim.lr", "1e-3", "--resume"] -> (["--optim.lr=1e-3"], ["cfg.yaml", "--resume"])
    """
    overrides, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        value = argv[i + 1] if i + 1 < len(argv) else None
        if "." not in name:
            rest.append(arg)
        elif "=" in arg or value is None or value.startswith("--"):
            overrides.append(arg)  # without a value it is refused where it is parsed
        else:
            overrides.append(f"{arg}={value}")
            i += 1
        i += 1
    return overrides, rest


def main(argv: list[str] | None = None) -> int:
    """`python -m llm_tiny config CONFIG.yaml [--section.key=value ...]`: print the resolved config."""
    import sys

    from llm_tiny.errors import ArgumentParser, run_cli

    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = ArgumentParser(
        prog="llm_tiny config", description="Validate a config and print it fully resolved."
    )
    parser.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
    args = parser.parse_args(rest)

    def run() -> int:
        print(dump_config(load_config(args.config, overrides)), end="")
        return 0

    return run_cli(run, "llm_tiny config")
