"""How a sequence is sampled: one frozen `SamplingParams`, checked once when it is built.

Every caller builds it the same way, `SamplingParams.from_config(cfg.sample, spell, **values)`:
the run's `sample` section, each value replaced by the caller's own when that is not None (a
CLI flag, a request field). That merge is written here and nowhere else. The rules are
`config.SAMPLING_RULES` (the config checks its own `sample` section with them at load); a
broken one raises `SamplingError`, whose message spells the value as the caller does
(`--top-p` for the CLI, `top_p` for HTTP) and which is both a `UserError` (one line, exit 2)
and a `ValueError` (for library callers). Decoding then trusts the values: the logits
processors check nothing, once per token or otherwise.

One default per value: a field left out takes `SampleConfig`'s default (temperature 0.8,
top-p 0.95, ...), so a bare `generate(model, idx, n)`, the server and an empty config agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llm_tiny.config import SAMPLING_RULES, SampleConfig, sampling_problem
from llm_tiny.errors import UserError

_DEFAULT = SampleConfig()


class SamplingError(UserError, ValueError):
    """An impossible sampling value; `key` is the field's name (`top_p`), whatever the
    message's spelling of it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class SamplingParams:
    """How to continue one prompt. Frozen and valid: build it (or `replace` a field) and the
    values are checked once; the decoding loop never checks them again."""

    max_new_tokens: int = _DEFAULT.max_new_tokens
    temperature: float = _DEFAULT.temperature  # 0: greedy (argmax, no randomness)
    top_k: int | None = _DEFAULT.top_k  # keep the k most likely tokens; None: all
    top_p: float | None = _DEFAULT.top_p  # nucleus: smallest set with probability >= p
    repetition_penalty: float = _DEFAULT.repetition_penalty  # > 1 discourages seen tokens
    no_repeat_ngram: int = _DEFAULT.no_repeat_ngram  # never repeat an n-gram of n tokens
    seed: int = _DEFAULT.seed  # a row's own torch.Generator starts from it
    stop_tokens: tuple[int, ...] = ()  # a row ends after producing one of these
    logprobs: int | None = None  # alternatives to report per token; None: no log-probabilities

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_tokens", tuple(sorted({int(t) for t in self.stop_tokens})))
        _check(self.values(), str)

    @classmethod
    def from_config(
        cls,
        sample: SampleConfig | None = None,
        spell: Callable[[str], str] = str,
        **values: Any,
    ) -> SamplingParams:
        """The run's `sample` values (the defaults when None), each replaced by one of
        `values` that is not None: "the flag or request field if given, else the run's".

        `spell` names a value in an error message: `lambda k: "--" + k.replace("_", "-")`
        for flags. Fields `SampleConfig` lacks (stop_tokens, logprobs) come from `values` only.
        """
        sample = sample or _DEFAULT
        merged = {
            f.name: getattr(sample, f.name)
            for f in dataclasses.fields(cls)
            if hasattr(sample, f.name)
        }
        merged |= {k: v for k, v in values.items() if v is not None}
        unknown = set(merged) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown sampling values: {sorted(unknown)}")
        _check(merged, spell)
        return cls(**merged)

    @classmethod
    def from_args(cls, sample: SampleConfig, args: Any, **values: Any) -> SamplingParams:
        """A command's: the run's `sample` values, each replaced by its flag when given
        (`add_sampling_args`; flags are named after the fields, errors spell them as flags)."""
        flags = {k: getattr(args, k) for k in cls().values() if hasattr(args, k)}
        return cls.from_config(sample, flag_name, **flags, **values)

    def replace(self, **values: Any) -> SamplingParams:
        """A copy with some fields changed (and checked)."""
        return dataclasses.replace(self, **values)

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def discourages_repeats(self) -> bool:
        return self.repetition_penalty != 1 or self.no_repeat_ngram != 0


def flag_name(key: str) -> str:
    """A sampling value's command-line flag: `top_p` -> `--top-p`."""
    return "--" + key.replace("_", "-")


# The sampling flags every generating command shares (`sample`, `chat`), one wording; each
# left out takes the run's `sample` value.
SAMPLING_FLAGS = {
    "max_new_tokens": (int, "most tokens to generate (in one reply, for chat)"),
    "temperature": (float, "0 = greedy; higher = more random"),
    "top_k": (int, "keep only the k most likely tokens"),
    "top_p": (float, "nucleus: smallest set with probability >= p"),
    "seed": (int, "random seed (same seed, same text)"),
    "repetition_penalty": (float, "> 1 makes tokens already in the text less likely"),
    "no_repeat_ngram": (int, "never repeat an n-gram of N tokens"),
}


def add_sampling_args(parser: Any) -> None:
    """The sampling flags (`SAMPLING_FLAGS`) on a command's parser; read them back with
    `SamplingParams.from_args`."""
    for key, (kind, text) in SAMPLING_FLAGS.items():
        parser.add_argument(flag_name(key), type=kind, help=text + " (default: the run's)")


def _check(values: dict[str, Any], spell: Callable[[str], str]) -> None:
    """Raise SamplingError for the first value that breaks its rule."""
    for key in [k for k in SAMPLING_RULES if k in values]:
        problem = sampling_problem(spell, **{key: values[key]})
        if problem is not None:
            raise SamplingError(key, problem)
    logprobs = values.get("logprobs")
    if logprobs is not None and not (type(logprobs) is int and logprobs >= 0):
        raise SamplingError("logprobs", f"{spell('logprobs')} must be >= 0, got {logprobs}")
