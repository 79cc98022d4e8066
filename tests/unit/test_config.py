"""Config loading, overrides, validation errors and the YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llm_tiny.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    dump_config,
    load_config,
    override,
    parse_overrides,
    save_config,
    split_overrides,
)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_and_derived_values():
    cfg = load_config(None)
    assert cfg == RunConfig()
    assert cfg.model.kv_heads == cfg.model.n_head
    assert cfg.model.head_dim == cfg.model.n_embd // cfg.model.n_head
    assert cfg.tokens_per_iter == cfg.train.batch_size * cfg.model.block_size
    assert cfg.lr_decay_iters == cfg.train.max_iters


def test_every_shipped_config_loads():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        if "sweep" in path.name:  # sweep specs have their own schema
            continue
        assert isinstance(load_config(path), RunConfig), path


def test_overrides_are_parsed_to_field_types(tmp_path):
    path = write(tmp_path, "model:\n  n_embd: 64\n  n_head: 4\n")
    cfg = load_config(
        path,
        [
            "--optim.lr=3e-4",  # YAML alone reads `3e-4` as a string
            "--model.n_layer=2",
            "--model.bias=false",
            "--model.n_kv_head=2",
            "--train.threads=null",
            "--train.out_dir=out/x",
            "--optim.lr_decay_iters=1e3",
            "--data.input=[a.txt, b.txt]",
            "--sample.prompt=12",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.model.n_layer == 2 and cfg.model.n_embd == 64
    assert cfg.model.bias is False
    assert cfg.model.kv_heads == 2
    assert cfg.train.threads is None
    assert cfg.train.out_dir == "out/x"
    assert cfg.optim.lr_decay_iters == 1000 and cfg.lr_decay_iters == 1000
    assert cfg.data.input == ("a.txt", "b.txt")
    assert cfg.sample.prompt == "12"


def test_yaml_scientific_notation_without_dot(tmp_path):
    cfg = load_config(write(tmp_path, "optim:\n  lr: 6e-4\n  min_lr: 6e-5\n"))
    assert cfg.optim.lr == pytest.approx(6e-4)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["--data.special_tokens=[<|endoftext|>]"])
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg


def test_override_helper_revalidates():
    cfg = override(RunConfig(), **{"train.max_iters": 500, "optim.warmup_iters": 10})
    assert cfg.train.max_iters == 500
    with pytest.raises(ConfigError):
        override(cfg, **{"model.n_head": 3})


@pytest.mark.parametrize(
    ("yaml_text", "flags", "expected"),
    [
        ("model:\n  n_emb: 64\n", [], "unknown key model.n_emb (did you mean model.n_embd?)"),
        ("modle:\n  n_embd: 64\n", [], "unknown section modle (did you mean model?)"),
        ("", ["--model.n_emb=64"], "override --model.n_emb=64: unknown key model.n_emb"),
        ("", ["--optm.lr=1"], "unknown section optm (did you mean optim?)"),
        ("", ["--lr=1"], "expected --section.key=value"),
        ("model:\n  n_embd: sixty\n", [], "model.n_embd: expected integer, got 'sixty'"),
        ("model:\n  n_embd: 64.5\n", [], "model.n_embd: expected integer"),
        ("model:\n  bias: 1\n", [], "model.bias: expected true/false"),
        ("optim:\n  lr: fast\n", [], "optim.lr: expected number"),
        ("train:\n  threads: [1]\n", [], "train.threads: expected integer or null"),
        ("model:\n  n_embd: 130\n  n_head: 4\n", [], "must be divisible by model.n_head"),
        ("model:\n  n_head: 4\n  n_kv_head: 3\n", [], "must be divisible by model.n_kv_head"),
        ("optim:\n  lr: 0\n", [], "optim.lr must be > 0"),
        ("optim:\n  lr: -1.0e-3\n", [], "optim.lr must be > 0"),
        ("train:\n  batch_size: 0\n", [], "train.batch_size must be >= 1"),
        ("model:\n  dropout: 1.0\n", [], "model.dropout must be in [0, 1)"),
        ("model:\n  dropout: -0.1\n", [], "model.dropout must be in [0, 1)"),
        ("optim:\n  label_smoothing: 1.0\n", [], "optim.label_smoothing must be in [0, 1)"),
        ("optim:\n  name: sgd\n", [], "optim.name must be one of adamw | muon"),
        ("optim:\n  muon_lr: 0\n", [], "optim.muon_lr must be > 0"),
        ("optim:\n  muon_momentum: 1.0\n", [], "optim.muon_momentum must be in [0, 1)"),
        ("optim:\n  muon_weight_decay: -1\n", [], "optim.muon_weight_decay must be >= 0"),
        ("model:\n  logit_softcap: 0\n", [], "model.logit_softcap must be > 0 or null"),
        (
            "model:\n  mlp: relu3\n",
            [],
            "model.mlp must be one of gelu | swiglu | relu | relu2 | mish",
        ),
        ("model:\n  norm_position: middle\n", [], "model.norm_position must be one of pre | post"),
        ("optim:\n  warmup_iters: 20\ntrain:\n  max_iters: 10\n", [], "must be <= train.max_iters"),
        ("model:\n  block_size: 0\n", [], "model.block_size must be >= 1"),
        (
            "model:\n  pos_emb: rop\n",
            [],
            "must be one of learned | rope | alibi | t5, got 'rop' (did you mean rope?)",
        ),
        ("model:\n  norm: batchnorm\n", [], "model.norm must be one of layernorm | rmsnorm | none"),
        ("train:\n  device: tpu\n", [], "train.device must be one of auto | cpu | cuda | mps"),
        ("data:\n  vocab_size: 100\n", [], "data.vocab_size must be >= 256"),
        ("data:\n  val_fraction: 1.5\n", [], "data.val_fraction must be in (0, 1)"),
        (
            "data:\n  kind: examples\n  val_input: [v.txt]\n",
            [],
            "data.val_input is for text data",
        ),
        ("train:\n  profile_steps: -1\n", [], "train.profile_steps must be >= 0"),
        ("model:\n  mlp_hidden: 0\n", [], "model.mlp_hidden must be >= 1 or null"),
        ("sample:\n  top_p: 0\n", [], "sample.top_p must be in (0, 1]"),
        ("model:\n  n_embd: 6\n  n_head: 2\n  pos_emb: rope\n", [], "rope needs an even head size"),
        ("runtime:\n  parallel: zero\n", [], "runtime.parallel must be one of ddp | fsdp"),
        ("runtime:\n  offload: true\n", [], "runtime.offload is for runtime.parallel: fsdp"),
        (
            "",
            ["--runtime.parallel=fsdp", "--lora.rank=4", "--train.init_from=base"],
            "fsdp does not support lora.rank",
        ),
        ("", ["--runtime.parallel=fsdp", "--train.dtype=float16"], "use bfloat16"),
        (
            "data:\n  kind: examples\ntrain:\n  sample_at_end: false\n",
            ["--runtime.parallel=fsdp", "--model.arch=encoder", "--model.n_classes=10"],
            "fsdp does not support model.arch: encoder",
        ),
        ("", ["--runtime.parallel=fsdp", "--train.eval_tasks=[sum]"], "train.eval_tasks"),
        ("model: 3\n", [], "section model must be a mapping"),
        ("- a\n- b\n", [], "top level must be a mapping"),
    ],
)
def test_validation_errors_name_the_problem(tmp_path, yaml_text, flags, expected):
    path = write(tmp_path, yaml_text)
    message = error_of(path, flags)
    assert expected in message
    assert str(path) in message or any(f in message for f in flags)


def test_malformed_and_missing_files(tmp_path):
    bad = write(tmp_path, "model:\n  n_embd: [64\n")
    assert "invalid YAML at line" in error_of(bad)
    assert "config file not found" in error_of(tmp_path / "missing.yaml")
    assert "is a directory" in error_of(tmp_path)


def test_parse_and_split_overrides():
    nested, sources = parse_overrides(["--model.n_embd=64", "train.seed=3"])
    assert nested == {"model": {"n_embd": 64}, "train": {"seed": 3}}
    assert sources["model.n_embd"] == "override --model.n_embd=64"
    overrides, rest = split_overrides(["cfg.yaml", "--resume", "--model.n_embd=64", "--optim.lr=1"])
    assert overrides == ["--model.n_embd=64", "--optim.lr=1"]
    assert rest == ["cfg.yaml", "--resume"]


def test_each_choice_list_has_one_home_and_its_implementations_match_it():
    from llm_tiny import runtime
    from llm_tiny.config import (
        AttnImpl,
        Dtype,
        Mlp,
        Norm,
        NormPosition,
        PosEmb,
        Schedule,
        architecture_fields,
        choices,
    )
    from llm_tiny.model import attention, model
    from llm_tiny.train import schedule

    assert set(model.NORMS) == set(choices(Norm))
    assert set(model.POSITIONS) == set(choices(PosEmb))
    assert set(attention.ATTENTION) == set(choices(AttnImpl))
    assert set(attention.ATTENTION_ANY_MASK) == set(choices(AttnImpl))  # a window: any kernel
    assert set(model.MLPS) == set(choices(Mlp))
    assert set(model.BLOCKS) == set(choices(NormPosition))
    for name in choices(Schedule):  # every schedule the config allows is implemented
        assert schedule.lr_at(0, lr=1.0, min_lr=0.0, warmup_iters=0, decay_iters=2, schedule=name)
    assert set(runtime.DTYPES) == set(choices(Dtype)) - {"auto"}
    # The fields that fix the parameters' shapes: resuming across a change of one is refused.
    assert architecture_fields() == (
        "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "bias",
        "pos_emb", "rope_theta", "tie_weights", "norm", "mlp", "mlp_hidden", "norm_position",
        "qk_norm", "logit_softcap", "bigram_logits", "attn_window", "n_classes", "arch",
    )  # fmt: skip


def test_sampling_rules_name_the_value_the_way_the_caller_does():
    from llm_tiny.config import sampling_problem

    assert sampling_problem(temperature=0.0, top_k=None, top_p=1.0) is None
    assert (
        sampling_problem(lambda k: f"sample.{k}", top_p=0)
        == "sample.top_p must be in (0, 1], got 0"
    )
    cli = sampling_problem(lambda k: "--" + k.replace("_", "-"), num_samples=0)
    assert cli == "--num-samples must be >= 1, got 0"
    assert "temperature must be >= 0" in sampling_problem(temperature=float("nan"))
