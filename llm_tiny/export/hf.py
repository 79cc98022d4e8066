"""TinyGPT <-> Hugging Face transformers: which model class fits, `config.json`, and the weights
renamed and reshaped, in both directions (pure functions on state dicts; no file is touched).

Two shapes have a counterpart (docs/export.md has the tables):

- Llama (`pos_emb=rope`, `norm=rmsnorm`, `mlp=swiglu`): `LlamaForCausalLM`. Our fused QKV rows
  are `[q heads | k heads | v heads]`, split into `q_proj`, `k_proj`, `v_proj` (any `n_kv_head`);
  our fused SwiGLU rows are `[gate | up]`; our RoPE rotates halves (i, i + hs/2) like HF's
  `rotate_half`, so no permutation is needed. `bias=True` maps to `attention_bias` and
  `mlp_bias`.
- GPT-2 (`pos_emb=learned`, `norm=layernorm`, `mlp=gelu`, no `n_kv_head`): `GPT2LMHeadModel`.
  Its `Conv1D` layers store weights as (in, out), the transpose of ours; our GELU is the tanh
  approximation, `gelu_new`. `bias=False` is written as zero biases (the same function).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from llm_tiny.config import ModelConfig, architecture_fields
from llm_tiny.errors import UserError
from llm_tiny.model import RMSNorm, mlp_width, swiglu_hidden

# What each HF shape needs of our flags, beyond TinyGPT's defaults; the first that fits is used.
SHAPES: dict[str, dict[str, Any]] = {
    "llama": {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu"},
    "gpt2": {"pos_emb": "learned", "norm": "layernorm", "mlp": "gelu", "n_kv_head": None},
}
# The architecture fields whose every value maps to a `config.json` entry; every other one
# (norm_position, qk_norm, logit_softcap, and whatever flag comes next) must keep its default
# or the shape's value, so that a new model flag is refused until export learns it.
MAPPED = frozenset(
    {"vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "bias",
     "rope_theta", "tie_weights", "mlp_hidden"}
)  # fmt: skip
ARCHITECTURES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU's tanh approximation


def norm_eps() -> float:
    """The epsilon of TinyGPT's norms, read off the modules themselves.

    NOTE: both norms use PyTorch's default (1e-5), which `config.json` states; import refuses a
    model with another value rather than compute a slightly different function.
    """
    eps = {RMSNorm(1).eps, nn.LayerNorm(1).eps}
    assert len(eps) == 1, "TinyGPT's two norms are expected to share one epsilon"
    return eps.pop()


def hf_shape(cfg: ModelConfig) -> str:
    """`"llama"` or `"gpt2"`, the HF shape of `cfg`; a UserError naming the flags that have no
    counterpart otherwise (those that differ from the nearest shape)."""
    if cfg.arch != "decoder":  # BERT- and T5-style models are no causal language model
        raise UserError(
            f"model.arch {cfg.arch}: export writes decoder-only models (GPT-2 or Llama shaped); "
            "score this one with `llm_tiny tasks eval`"
        )
    defaults = ModelConfig()
    fixed = [f for f in architecture_fields() if f not in MAPPED]
    flags = {f: getattr(cfg, f) for f in fixed}
    flags["n_kv_head"] = None if cfg.kv_heads == cfg.n_head else cfg.n_kv_head
    needs = {s: {f: getattr(defaults, f) for f in fixed} | w for s, w in SHAPES.items()}
    misses = {
        shape: {k: flags[k] for k, v in wanted.items() if flags[k] != v}
        for shape, wanted in needs.items()
    }
    shape = min(misses, key=lambda s: len(misses[s]))
    if not misses[shape]:
        return shape
    bad = ", ".join(f"model.{k}={v}" for k, v in misses[shape].items())
    shapes = "; ".join(
        f"{ARCHITECTURES[s]} ({', '.join(f'{k}={v}' for k, v in wanted.items())})"
        for s, wanted in SHAPES.items()
    )
    raise UserError(f"{bad}: no Hugging Face counterpart (export writes {shapes})")


# ----------------------------------------------------------------------------- config.json


def hf_config(cfg: ModelConfig, bos_id: int | None, eos_id: int | None) -> dict[str, Any]:
    """The `config.json` of the HF model for `cfg`."""
    shape, eps = hf_shape(cfg), norm_eps()
    common = {
        "architectures": [ARCHITECTURES[shape]],
        "model_type": shape,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }
    if shape == "gpt2":
        return common | {
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_positions": cfg.block_size,
            "n_inner": mlp_width(cfg),
            "activation_function": "gelu_new",
            "layer_norm_epsilon": eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        }
    return common | {
        "hidden_size": cfg.n_embd,
        "intermediate_size": mlp_width(cfg),
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": eps,
        # transformers 5 reads `rope_parameters`; older versions read `rope_theta`.
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": 0.0,
    }


def _width(hf_width: int | None, default: int) -> int | None:
    """`model.mlp_hidden` for an HF MLP width: None (our default) when it is the default."""
    return None if hf_width in (None, default) else int(hf_width)


def model_config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    """The `ModelConfig` of an HF `config.json` (Llama or GPT-2); a UserError for an
    architecture or a setting TinyGPT cannot reproduce exactly."""
    eps = norm_eps()
    kind = hf.get("model_type")
    arch = (hf.get("architectures") or ["?"])[0]
    tie = bool(hf.get("tie_word_embeddings", True))

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UserError(f"{source}: {what}; TinyGPT cannot reproduce this model")

    if kind == "gpt2":
        C = hf["n_embd"]
        need(
            hf.get("activation_function", "gelu_new") in GELU_NAMES,
            f"activation_function {hf.get('activation_function')!r} is not GELU's tanh form",
        )
        need(
            abs(hf.get("layer_norm_epsilon", 1e-5) - eps) < 1e-12,
            f"layer_norm_epsilon {hf.get('layer_norm_epsilon')} is not {eps}",
        )
        for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            need(not hf.get(flag, False), f"{flag} is set")
        return ModelConfig(
            vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
            n_head=hf["n_head"], n_embd=C, bias=True, pos_emb="learned", norm="layernorm",
            mlp="gelu", tie_weights=tie, mlp_hidden=_width(hf.get("n_inner"), 4 * C),
        )  # fmt: skip
    if kind == "llama":
        C, nh = hf["hidden_size"], hf["num_attention_heads"]
        need(hf.get("hidden_act", "silu") == "silu", f"hidden_act {hf.get('hidden_act')!r}")
        need(
            hf.get("head_dim") in (None, C // nh) and C % nh == 0,
            f"head_dim {hf.get('head_dim')} is not hidden_size / num_attention_heads",
        )
        need(
            abs(hf.get("rms_norm_eps", 1e-6) - eps) < 1e-12,
            f"rms_norm_eps {hf.get('rms_norm_eps')} is not {eps}",
        )
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        need(
            rope.get("rope_type", rope.get("type", "default")) == "default",
            f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is set",
        )
        bias = bool(hf.get("attention_bias", False))
        need(bool(hf.get("mlp_bias", False)) == bias, "attention_bias and mlp_bias differ")
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        nkv = hf.get("num_key_value_heads") or nh
        return ModelConfig(
            vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
            n_layer=hf["num_hidden_layers"], n_head=nh, n_kv_head=None if nkv == nh else nkv,
            n_embd=C, bias=bias, pos_emb="rope", rope_theta=float(theta), norm="rmsnorm",
            mlp="swiglu", tie_weights=tie,
            mlp_hidden=_width(hf["intermediate_size"], swiglu_hidden(C)),
        )  # fmt: skip
    raise UserError(
        f"{source}: unsupported architecture {arch} (model_type {kind!r}); import reads "
        "GPT2LMHeadModel and LlamaForCausalLM directories"
    )


# ----------------------------------------------------------------------------- weights


def _renames(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    """Our key -> (HF key, transposed) for every tensor that maps one to one."""
    shape = hf_shape(cfg)
    out: dict[str, tuple[str, bool]] = {}
    if shape == "gpt2":
        out["wte.weight"] = ("transformer.wte.weight", False)
        out["pos.wpe.weight"] = ("transformer.wpe.weight", False)
        for i in range(cfg.n_layer):
            ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
            for a, b in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[ours + a + ".weight"] = (hf + b + ".weight", False)
                out[ours + a + ".bias"] = (hf + b + ".bias", False)
            for a, b in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                         ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):  # fmt: skip
                out[ours + a + ".weight"] = (hf + b + ".weight", True)  # Conv1D: (in, out)
                out[ours + a + ".bias"] = (hf + b + ".bias", False)
        out["norm_f.weight"] = ("transformer.ln_f.weight", False)
        out["norm_f.bias"] = ("transformer.ln_f.bias", False)
    else:
        out["wte.weight"] = ("model.embed_tokens.weight", False)
        for i in range(cfg.n_layer):
            ours, hf = f"blocks.{i}.", f"model.layers.{i}."
            out[ours + "norm1.weight"] = (hf + "input_layernorm.weight", False)
            out[ours + "norm2.weight"] = (hf + "post_attention_layernorm.weight", False)
            for suffix in (".weight", ".bias") if cfg.bias else (".weight",):
                out[ours + "attn.proj" + suffix] = (hf + "self_attn.o_proj" + suffix, False)
                out[ours + "mlp.proj" + suffix] = (hf + "mlp.down_proj" + suffix, False)
        out["norm_f.weight"] = ("model.norm.weight", False)
    if not cfg.tie_weights:
        out["lm_head.weight"] = ("lm_head.weight", False)
    return out


def _splits(cfg: ModelConfig) -> dict[str, list[tuple[str, int]]]:
    """Our fused Llama tensors -> [(HF key, rows)], in row order (none for GPT-2, whose
    `c_attn` is fused like ours)."""
    if hf_shape(cfg) != "llama":
        return {}
    q, kv, hidden = (
        cfg.n_head * cfg.head_dim,
        cfg.kv_heads * cfg.head_dim,
        mlp_width(cfg),
    )
    out = {}
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        for suffix in (".weight", ".bias") if cfg.bias else (".weight",):
            out[ours + "attn.qkv" + suffix] = [
                (hf + "self_attn.q_proj" + suffix, q),
                (hf + "self_attn.k_proj" + suffix, kv),
                (hf + "self_attn.v_proj" + suffix, kv),
            ]
            out[ours + "mlp.fc" + suffix] = [
                (hf + "mlp.gate_proj" + suffix, hidden),
                (hf + "mlp.up_proj" + suffix, hidden),
            ]
    return out


def to_hf(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our state dict -> the HF model's tensors (contiguous; a tied matrix once, as the
    embedding). GPT-2 without biases gets zero ones."""
    out: dict[str, Tensor] = {}
    for key, (hf_key, transposed) in _renames(cfg).items():
        t = state.get(key)
        if t is None:  # bias=False in a GPT-2-shaped model: HF's bias is zero
            if not key.endswith(".bias"):
                raise KeyError(key)
            width = state[key[: -len(".bias")] + ".weight"].shape[0]
            t = torch.zeros(width, dtype=state["wte.weight"].dtype)
        out[hf_key] = (t.t() if transposed else t).contiguous()
    for key, parts in _splits(cfg).items():
        pieces = state[key].split([rows for _, rows in parts], dim=0)
        out.update((hf_key, p.contiguous()) for (hf_key, _), p in zip(parts, pieces))
    return out


def from_hf(hf: dict[str, Tensor], cfg: ModelConfig, source: str) -> dict[str, Tensor]:
    """The HF model's tensors -> our state dict for `cfg` (`model_config_from_hf`); missing or
    misshapen tensors are a UserError. Unused HF tensors (buffers such as `attn.bias`) are
    ignored."""
    out: dict[str, Tensor] = {}
    if hf_shape(cfg) == "gpt2" and "transformer.wte.weight" not in hf:
        # NOTE: the original GPT-2 checkpoints hold the bare `GPT2Model`'s keys ("h.0.ln_1...",
        # no "transformer." prefix), which transformers accepts too.
        hf = {k if k.startswith("lm_head.") else "transformer." + k: v for k, v in hf.items()}

    def take(key: str) -> Tensor:
        if key not in hf:
            raise UserError(f"{source}: the weights have no tensor {key}")
        return hf[key]

    renames = _renames(cfg)
    if cfg.tie_weights:
        renames["lm_head.weight"] = renames["wte.weight"]
    for key, (hf_key, transposed) in renames.items():
        t = take(hf_key)
        out[key] = (t.t() if transposed else t).contiguous()
    for key, parts in _splits(cfg).items():
        out[key] = torch.cat([take(hf_key) for hf_key, _ in parts], dim=0)
    return out
