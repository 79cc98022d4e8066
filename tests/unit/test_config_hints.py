"""Config mistakes a new user makes, each answered with a fix that works: a foreign name for a
key, the space form of an override, a short run whose warmup is longer than the run."""

from __future__ import annotations

import pytest

from llm_tiny.config import ConfigError, load_config, split_overrides
from llm_tiny.config.load import ALIASES, SECTIONS


def test_every_alias_names_a_real_key():
    import dataclasses

    keys = {f"{n}.{f.name}" for n, c in SECTIONS.items() for f in dataclasses.fields(c)}
    assert set(ALIASES.values()) <= keys


@pytest.mark.parametrize(
    ("flag", "meant"),
    [
        ("--optim.learning_rate=1e-3", "optim.lr"),
        ("--train.batch=8", "train.batch_size"),
        ("--train.epochs=3", "train.max_iters"),
        ("--model.n_layers=2", "model.n_layer"),
        ("--optim.lrr=1e-3", "optim.lr"),  # a misspelling still goes by distance
    ],
)
def test_a_foreign_or_misspelt_key_suggests_the_key_meant(flag, meant):
    with pytest.raises(ConfigError, match=rf"did you mean {meant}\?"):
        load_config(None, [flag])


def test_the_space_form_of_an_override_is_accepted():
    overrides, rest = split_overrides(["cfg.yaml", "--optim.lr", "1e-3", "--resume"])
    assert overrides == ["--optim.lr=1e-3"]
    assert rest == ["cfg.yaml", "--resume"]
    assert load_config(None, overrides).optim.lr == 1e-3


def test_an_override_without_a_value_says_how_to_write_it():
    overrides, rest = split_overrides(["--optim.lr", "--model.n_layer=2", "--resume"])
    assert overrides == ["--optim.lr", "--model.n_layer=2"]
    assert rest == ["--resume"]
    with pytest.raises(ConfigError, match=r"write --optim\.lr=VALUE"):
        load_config(None, overrides)


def test_a_short_run_on_the_command_line_lowers_the_warmup_with_a_note(capsys):
    cfg = load_config(None, ["--train.max_iters=5"])
    assert cfg.train.max_iters == 5
    assert cfg.optim.warmup_iters == 5
    assert "optim.warmup_iters lowered" in capsys.readouterr().err


def test_a_warmup_set_explicitly_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"lower it, e\.g\. --optim\.warmup_iters=5"):
        load_config(None, ["--train.max_iters=5", "--optim.warmup_iters=50"])
