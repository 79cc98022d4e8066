"""Run configuration: frozen dataclasses loaded from YAML and validated once.

A run config has five sections, each its own dataclass: `model`, `data`, `optim`, `train` and
`sample`. `load_config(path, overrides)` reads a YAML file with `yaml.safe_load`, applies
command-line overrides written `--section.key=value`, converts every value to its field's
type and validates the result. Every problem is a `ConfigError` whose message is one line
naming where the value came from (the file or the flag) and what is wrong, e.g.

    configs/tiny.yaml: unknown key model.n_emb (did you mean model.n_embd?)

The resolved config serialises back to YAML (`dump_config`) and reloads to an equal object.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_tiny.errors import UserError


class ConfigError(UserError):
    """An invalid config file, key, value or override."""


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ModelConfig:
    """The TinyGPT architecture. Defaults give a GPT-2-style model."""

    vocab_size: int | None = None  # None: take it from the tokenizer at train time
    block_size: int = 256  # context length in tokens
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention; None means n_head
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    pos_emb: str = "learned"  # learned | rope
    rope_theta: float = 10000.0
    tie_weights: bool = True
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu | swiglu
    attn_impl: str = "sdpa"  # sdpa | manual
    grad_checkpointing: bool = False

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equals `n_head` unless grouped-query attention)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it becomes token ids on disk."""

    input: tuple[str, ...] = ("data/tiny.txt",)  # text file(s), concatenated in order
    tokenizer: str = "out/tiny/tok/bpe.json"  # trained from `input` if it does not exist
    vocab_size: int = 512  # tokenizer vocabulary when it has to be trained
    pattern: str = "gpt4"  # pre-tokenizer split pattern: gpt2 | gpt4 | a regex
    special_tokens: tuple[str, ...] = ()
    data_dir: str = "out/tiny/data"  # train.bin / val.bin / meta.json
    val_fraction: float = 0.1  # the last fraction of the text is validation
    kind: str = "text"  # text: one token stream | examples: one example per line, masked loss
    answer_sep: str = "="  # examples: loss only on the tokens after this separator


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # floor of the cosine / wsd decay
    schedule: str = "cosine"  # cosine | constant | wsd
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: decay until train.max_iters
    decay_fraction: float = 0.2  # wsd: fraction of the steps spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: budget, batches, evaluation, checkpoints and runtime."""

    out_dir: str = "out/tiny"
    max_iters: int = 1000
    max_seconds: float | None = None  # stop early after this much wall time
    batch_size: int = 16  # sequences per micro-batch (per process)
    grad_accum_steps: int = 1
    eval_interval: int = 250
    eval_at_start: bool = True  # also evaluate before the first step (the untrained baseline)
    eval_iters: int | None = None  # None: the full validation split
    eval_batch_size: int = 32
    log_interval: int = 10
    ckpt_interval: int = 250
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    compile: bool = False
    seed: int = 1337
    threads: int | None = None  # torch intra-op threads; None: the torch default
    resume: str = "never"  # never | auto | always
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row
    tensorboard: bool = False
    sample_at_end: bool = True  # print a short sample when training ends
    peak_flops: float | None = None  # accelerator peak FLOP/s for MFU; None: look up by name


@dataclass(frozen=True)
class SampleConfig:
    """Defaults for generation."""

    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = 0.95
    num_samples: int = 1
    seed: int = 1337


@dataclass(frozen=True)
class RunConfig:
    """One training run: the five sections together."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    @property
    def tokens_per_iter(self) -> int:
        """Tokens in one optimizer step of one process."""
        return self.train.batch_size * self.train.grad_accum_steps * self.model.block_size

    @property
    def lr_decay_iters(self) -> int:
        """Step at which the decay reaches `min_lr` (defaults to `max_iters`)."""
        d = self.optim.lr_decay_iters
        return self.train.max_iters if d is None else d


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "model.pos_emb": ("learned", "rope"),
    "model.norm": ("layernorm", "rmsnorm"),
    "model.mlp": ("gelu", "swiglu"),
    "model.attn_impl": ("sdpa", "manual"),
    "data.kind": ("text", "examples"),
    "optim.schedule": ("cosine", "constant", "wsd"),
    "train.device": ("auto", "cpu", "cuda", "mps"),
    "train.dtype": ("float32", "bfloat16", "float16", "auto"),
    "train.resume": ("never", "auto", "always"),
}


# ----------------------------------------------------------------------------- types


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + " or null"
    if typing.get_origin(tp) is tuple:
        return "list of " + _type_name(args[0])
    return {int: "integer", float: "number", bool: "true/false", str: "string"}[tp]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the field type `tp`, or raise ConfigError.

    >>> _coerce(3, float, "x"), _coerce("3e-4", float, "x")
    (3.0, 0.0003)
    """
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return None
        try:
            return _coerce(value, next(a for a in args if a is not type(None)), where)
        except ConfigError:
            raise bad from None
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_coerce(v, args[0], where) for v in value)
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


def _closest(name: str, options: list[str]) -> str:
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
    ftypes = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{name}.{key}"
        src = sources.get(dotted, where)
        if key not in ftypes:
            options = [f"{name}.{k}" for k in ftypes]
            raise ConfigError(f"{src}: unknown key {dotted}{_closest(dotted, options)}")
        kwargs[key] = _coerce(value, ftypes[key], f"{src}: {dotted}")
        if dotted in CHOICES and kwargs[key] not in CHOICES[dotted]:
            allowed = " | ".join(CHOICES[dotted])
            hint = _closest(kwargs[key], list(CHOICES[dotted]))
            raise ConfigError(
                f"{src}: {dotted} must be one of {allowed}, got {kwargs[key]!r}{hint}"
            )
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
                f"{where}: unknown section {name}{_closest(str(name), list(SECTIONS))}"
            )
        sources.setdefault(name, source)
    sections = {name: _build_section(name, raw.get(name), sources) for name in SECTIONS}
    cfg = RunConfig(**sections)
    validate(cfg, source)
    return cfg


def validate(cfg: RunConfig, source: str = "config") -> None:
    """Check values that are impossible on their own or together; raise ConfigError."""
    m, d, o, t, s = cfg.model, cfg.data, cfg.optim, cfg.train, cfg.sample

    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {message}")

    check(m.vocab_size is None or m.vocab_size >= 1, "model.vocab_size must be >= 1")
    check(m.block_size >= 1, f"model.block_size must be >= 1, got {m.block_size}")
    check(m.n_layer >= 1, f"model.n_layer must be >= 1, got {m.n_layer}")
    check(m.n_head >= 1, f"model.n_head must be >= 1, got {m.n_head}")
    check(m.n_embd >= 1, f"model.n_embd must be >= 1, got {m.n_embd}")
    check(
        m.n_embd % m.n_head == 0,
        f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})",
    )
    check(m.kv_heads >= 1, f"model.n_kv_head must be >= 1, got {m.n_kv_head}")
    check(
        m.n_head % m.kv_heads == 0,
        f"model.n_head ({m.n_head}) must be divisible by model.n_kv_head ({m.kv_heads})",
    )
    check(
        m.pos_emb != "rope" or m.head_dim % 2 == 0,
        f"rope needs an even head size, got n_embd/n_head = {m.head_dim}",
    )
    check(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
    check(m.rope_theta > 0, f"model.rope_theta must be > 0, got {m.rope_theta}")

    check(len(d.input) >= 1, "data.input must name at least one text file")
    check(d.vocab_size >= 256, f"data.vocab_size must be >= 256 (the bytes), got {d.vocab_size}")
    check(
        m.vocab_size is None or m.vocab_size >= d.vocab_size,
        f"model.vocab_size ({m.vocab_size}) is smaller than data.vocab_size ({d.vocab_size})",
    )
    check(0.0 < d.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")

    check(o.lr > 0 and math.isfinite(o.lr), f"optim.lr must be > 0, got {o.lr}")
    check(0 <= o.min_lr <= o.lr, f"optim.min_lr must be in [0, optim.lr], got {o.min_lr}")
    check(o.warmup_iters >= 0, f"optim.warmup_iters must be >= 0, got {o.warmup_iters}")
    check(
        o.lr_decay_iters is None or o.lr_decay_iters >= o.warmup_iters,
        f"optim.lr_decay_iters ({o.lr_decay_iters}) must be >= optim.warmup_iters ({o.warmup_iters})",
    )
    check(
        0 < o.decay_fraction <= 1, f"optim.decay_fraction must be in (0, 1], got {o.decay_fraction}"
    )
    check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
    check(o.eps > 0, f"optim.eps must be > 0, got {o.eps}")
    check(o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 disables), got {o.grad_clip}")

    check(t.max_iters >= 1, f"train.max_iters must be >= 1, got {t.max_iters}")
    check(
        o.warmup_iters <= t.max_iters,
        f"optim.warmup_iters ({o.warmup_iters}) must be <= train.max_iters ({t.max_iters})",
    )
    check(t.max_seconds is None or t.max_seconds > 0, "train.max_seconds must be > 0")
    check(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    check(t.grad_accum_steps >= 1, f"train.grad_accum_steps must be >= 1, got {t.grad_accum_steps}")
    check(t.eval_interval >= 1, f"train.eval_interval must be >= 1, got {t.eval_interval}")
    check(t.eval_iters is None or t.eval_iters >= 1, "train.eval_iters must be >= 1 or null")
    check(t.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    check(t.log_interval >= 1, f"train.log_interval must be >= 1, got {t.log_interval}")
    check(t.ckpt_interval >= 1, f"train.ckpt_interval must be >= 1, got {t.ckpt_interval}")
    check(t.threads is None or t.threads >= 1, f"train.threads must be >= 1, got {t.threads}")
    check(t.peak_flops is None or t.peak_flops > 0, "train.peak_flops must be > 0 or null")
    check(t.max_bad_steps >= 1, f"train.max_bad_steps must be >= 1, got {t.max_bad_steps}")

    check(s.max_new_tokens >= 0, f"sample.max_new_tokens must be >= 0, got {s.max_new_tokens}")
    check(s.temperature >= 0, f"sample.temperature must be >= 0, got {s.temperature}")
    check(s.top_k is None or s.top_k >= 1, f"sample.top_k must be >= 1 or null, got {s.top_k}")
    check(
        s.top_p is None or 0 < s.top_p <= 1,
        f"sample.top_p must be in (0, 1] or null, got {s.top_p}",
    )
    check(s.num_samples >= 1, f"sample.num_samples must be >= 1, got {s.num_samples}")


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


def parse_overrides(overrides: list[str]) -> tuple[dict, dict]:
    """Turn `["--model.n_embd=64", ...]` into a nested dict and a key -> flag map."""
    nested: dict[str, dict] = {}
    sources: dict[str, str] = {}
    for flag in overrides:
        body = flag[2:] if flag.startswith("--") else flag
        if "=" not in body or "." not in body.split("=", 1)[0]:
            raise ConfigError(f"override {flag!r}: expected --section.key=value")
        key, text = body.split("=", 1)
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(
                f"override {flag}: unknown section {section}{_closest(section, list(SECTIONS))}"
            )
        if not name or "." in name:
            raise ConfigError(f"override {flag}: expected --section.key=value")
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
    return config_from_dict(merged, source, sources)


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
    """Separate `--section.key=value` overrides from the other arguments of a command."""
    overrides, rest = [], []
    for arg in argv:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        (overrides if "." in name else rest).append(arg)
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
