"""Run configuration: frozen dataclasses loaded from YAML and validated once.

`sections` is the schema (the eight sections, the allowed values of each choice), `rules` the
rules a valid config obeys; `load` reads YAML and `--section.key=value` flags into it. Everything is importable from here:
`from llm_tiny.config import RunConfig, load_config`. `python -m llm_tiny config CONFIG.yaml`
prints a config fully resolved.
"""

from llm_tiny.config.load import (
    check_key,
    closest,
    coerce,
    config_from_dict,
    config_to_dict,
    dump_config,
    field_types,
    load_config,
    main,
    override,
    parse_override_value,
    parse_overrides,
    read_yaml,
    save_config,
    split_overrides,
    with_dotted,
)
from llm_tiny.config.rules import validate
from llm_tiny.config.sections import (
    SAMPLING_RULES,
    SECTIONS,
    AttnImpl,
    ConfigError,
    DataConfig,
    DataKind,
    Device,
    Dtype,
    LoraConfig,
    LoraTarget,
    Mlp,
    ModelConfig,
    MuonDtype,
    Norm,
    NormPosition,
    OptimConfig,
    OptimName,
    Parallel,
    PosEmb,
    Resume,
    RlConfig,
    RunConfig,
    RuntimeConfig,
    SampleConfig,
    Schedule,
    TrainConfig,
    arch,
    architecture_fields,
    choices,
    sampling_problem,
)
