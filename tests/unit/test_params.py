"""SamplingParams: one default per value (the run config's), checked once at construction,
the "given value, else the run's" merge, and messages spelled the caller's way."""

from __future__ import annotations

import dataclasses

import pytest

from llm_tiny.config import SampleConfig
from llm_tiny.errors import UserError
from llm_tiny.infer.params import SamplingError, SamplingParams


def test_defaults_are_the_run_configs():
    params, sample = SamplingParams(), SampleConfig()
    for f in dataclasses.fields(SamplingParams):
        if hasattr(sample, f.name):
            assert getattr(params, f.name) == getattr(sample, f.name), f.name
    assert params.temperature == 0.8 and params.top_p == 0.95


def test_from_config_takes_each_given_value_else_the_runs():
    sample = SampleConfig(temperature=0.5, top_k=7, seed=3)
    params = SamplingParams.from_config(sample, temperature=None, top_k=2, stop_tokens=[9, 4, 9])
    assert (params.temperature, params.top_k, params.seed) == (0.5, 2, 3)
    assert params.stop_tokens == (4, 9)
    assert SamplingParams.from_config(None) == SamplingParams()
    with pytest.raises(TypeError, match="unknown sampling values"):
        SamplingParams.from_config(sample, tempreature=1.0)


def test_frozen_and_checked_on_replace():
    params = SamplingParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.temperature = 1.0  # type: ignore[misc]
    assert params.replace(temperature=0).greedy
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        params.replace(repetition_penalty=0.0)


@pytest.mark.parametrize(
    ("values", "key", "message"),
    [
        ({"temperature": -1.0}, "temperature", "--temperature must be >= 0 (0 means greedy)"),
        ({"top_p": 1.5}, "top_p", "--top-p must be in (0, 1], got 1.5"),
        ({"top_k": 0}, "top_k", "--top-k must be >= 1, got 0"),
        ({"no_repeat_ngram": -2}, "no_repeat_ngram", "--no-repeat-ngram must be >= 0"),
        ({"max_new_tokens": -1}, "max_new_tokens", "--max-new-tokens must be >= 0, got -1"),
        ({"logprobs": -1}, "logprobs", "--logprobs must be >= 0, got -1"),
    ],
)
def test_errors_name_the_value_as_the_caller_spells_it(values, key, message):
    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    with pytest.raises(SamplingError) as e:
        SamplingParams.from_config(SampleConfig(), flag, **values)
    assert e.value.key == key and message in str(e.value)
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    with pytest.raises(SamplingError, match=f"^{key} must be"):
        SamplingParams(**values)  # the library's spelling: the field's name
