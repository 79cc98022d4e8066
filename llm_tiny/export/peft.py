"""A LoRA run's adapters -> a PEFT adapter folder (`adapter_config.json` +
`adapter_model.safetensors`) for the Hugging Face export of its base model, so that

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_HF), ADAPTER_DIR)

computes what our adapted model computes (tests/integration/test_lora_run.py checks the
logits with the real `peft` and `transformers`).

PEFT's LoRA layer on a module computes y = base(x) + (lora_alpha / r) lora_B(lora_A(drop(x)))
with `lora_A.weight` (r, in) and `lora_B.weight` (out, r); the file's keys are
`base_model.model.<module>.lora_A.weight` (no adapter name). For GPT-2's `Conv1D` modules the
same shapes hold (`fan_in_fan_out` only concerns merging). Our targets map onto HF modules
through `hf.py`'s names:

- Llama: every target is its own module (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
  down_proj), so each adapter is written as it is.
- GPT-2: q, k and v share the fused `attn.c_attn`. k adapters of rank r on blocks of its rows
  are one adapter of rank k r: A stacked, B block-diagonal (zeros outside each block's rows),
  with lora_alpha k alpha so that the scale alpha / r stays; `rank_pattern` and `alpha_pattern`
  say so for that module alone.

PEFT's format is written by hand because `peft` would need the HF model instantiated first;
the reader in the tests is `peft` itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from llm_tiny.config import LoraConfig, ModelConfig
from llm_tiny.export.hf import hf_shape
from llm_tiny.model.lora import check_targets

# Our (Linear, target) -> the HF module inside a layer, per HF shape.
HF_MODULES: dict[str, dict[str, str]] = {
    "llama": {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    },
    "gpt2": {
        "q": "attn.c_attn",
        "k": "attn.c_attn",
        "v": "attn.c_attn",
        "o": "attn.c_proj",
        "up": "mlp.c_fc",
        "down": "mlp.c_proj",
    },
}
LAYER_PREFIX = {"llama": "model.layers", "gpt2": "transformer.h"}


def peft_adapter(
    adapters: dict[str, Tensor], model_cfg: ModelConfig, lora: LoraConfig, base_hf: str | None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(adapter_config.json's dict, adapter_model.safetensors' tensors) for a LoRA run's
    adapter weights (`lora.split_state(...)[1]`)."""
    shape = hf_shape(model_cfg)
    rows = check_targets(model_cfg, lora)
    names = HF_MODULES[shape]
    # Each HF module -> its adapters [(target, first row within the module)], in row order.
    modules: dict[str, list[tuple[str, int]]] = {}
    for target, (_, start, _) in sorted(rows.items(), key=lambda kv: kv[1][1]):
        fused = shape == "gpt2" and target in ("q", "k", "v")  # rows of c_attn as in ours
        modules.setdefault(names[target], []).append((target, start if fused else 0))
    r = lora.rank
    tensors: dict[str, Tensor] = {}
    for i in range(model_cfg.n_layer):
        for module, parts in modules.items():
            key = f"base_model.model.{LAYER_PREFIX[shape]}.{i}.{module}"
            ours = {t: f"blocks.{i}.{rows[t][0]}.lora.{t}" for t, _ in parts}
            a = torch.cat([adapters[ours[t] + ".A"] for t, _ in parts], dim=0)  # (k r, in)
            fused = module == "attn.c_attn"  # GPT-2's [q | k | v], no grouped heads
            out_rows = (
                3 * model_cfg.n_embd if fused else adapters[ours[parts[0][0]] + ".B"].shape[0]
            )
            b = a.new_zeros(out_rows, r * len(parts))  # (out, k r), block-diagonal
            for j, (t, off) in enumerate(parts):
                block = adapters[ours[t] + ".B"]
                b[off : off + block.shape[0], j * r : (j + 1) * r] = block
            tensors[key + ".lora_A.weight"] = a.contiguous()
            tensors[key + ".lora_B.weight"] = b.contiguous()
    wide = {m: len(p) for m, p in modules.items() if len(p) > 1}
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_hf,
        "r": r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": sorted(modules),
        "rank_pattern": {m: r * k for m, k in wide.items()},
        "alpha_pattern": {m: lora.alpha * k for m, k in wide.items()},
        "fan_in_fan_out": shape == "gpt2",  # Conv1D stores (in, out)
        "bias": "none",
        "modules_to_save": None,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    return config, tensors
