"""TinyGPT -> GGUF (llama.cpp's file format), written with the `gguf` package that llama.cpp
maintains. Llama-shaped models only (`hf.hf_shape(cfg) == "llama"`).

The tensors are the Hugging Face Llama tensors (`hf.to_hf`: the fused QKV and SwiGLU already
split) under GGUF's names (`gguf.get_tensor_name_map`), with one change: query and key rows are
permuted from the "rotate half" RoPE layout (pairs i, i + hs/2; ours and HF's) to GGML's
interleaved one (pairs 2i, 2i + 1), per head, as llama.cpp's own converter does (and so are
their biases). Readers that go back to HF (transformers' GGUF loader) undo exactly this
permutation. `bias=True` writes llama.cpp's optional bias tensors (`blk.N.attn_q.bias`, ...,
`blk.N.ffn_down.bias`), which llama.cpp applies; NOTE: transformers' GGUF loader builds its
Llama without biases and drops them.

The tokenizer is stored as llama.cpp's `gpt2` type, i.e. byte-level BPE: the tokens spelled
through the byte-to-unicode table (`hf_tokenizer.spell`), the merges as "a b" strings (a
spelled token never holds a real space), special tokens as CONTROL. llama.cpp does not read a
split regex from the file; it picks one by the name in `tokenizer.ggml.pre` (`PRE_TOKENIZERS`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llm_tiny.config import ModelConfig
from llm_tiny.errors import UserError
from llm_tiny.export.hf import hf_shape, norm_eps, to_hf
from llm_tiny.export.hf_tokenizer import spell
from llm_tiny.model import mlp_width
from tok.serialize import make_shareable

DTYPES = ("f32", "f16", "q8_0")
# Our named split patterns -> the llama.cpp pre-tokenizer that splits the same way (llama.cpp's
# `llama-bpe` regex is of the cl100k family, as are our gpt4 and gpt4-legacy; `gpt-2` is
# GPT-2's). A custom regex has no name llama.cpp knows: it gets "default" (GPT-2-like
# splitting; see docs/export.md).
PRE_TOKENIZERS = {"gpt4": "llama-bpe", "gpt4-legacy": "llama-bpe", "gpt2": "gpt-2"}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5  # gguf.TokenType values


def check_gguf_exportable(cfg: ModelConfig) -> None:
    if hf_shape(cfg) != "llama":  # hf_shape: a UserError for flags with no counterpart at all
        raise UserError(
            "GGUF export writes Llama-shaped models (pos_emb=rope, norm=rmsnorm, mlp=swiglu); "
            "export this GPT-2-shaped one with --format hf"
        )


def interleave_rope_rows(w: Tensor, n_heads: int) -> Tensor:
    """Rows of q_proj / k_proj from halves (i, i + hs/2) to interleaved (2i, 2i + 1) pairs,
    head by head: row (h, half, i) goes to (h, i, half).

    >>> interleave_rope_rows(torch.arange(4.0)[:, None], 1).flatten().tolist()
    [0.0, 2.0, 1.0, 3.0]
    """
    rows = w.shape[0]
    return (
        w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
    )


def _tensor_for(t: Tensor, dtype: str) -> tuple[np.ndarray, Any]:
    """The array to store and its GGML type: 1-D tensors (norm gains) stay f32, as llama.cpp
    keeps them; matrices become `dtype` (q8_0 needs rows of a multiple of 32 values)."""
    import gguf

    data = t.detach().to(torch.float32).cpu().numpy()
    if data.ndim == 1 or dtype == "f32":
        return data, gguf.GGMLQuantizationType.F32
    if dtype == "f16" or data.shape[-1] % 32:
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    qtype = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(
    path: Path,
    cfg: ModelConfig,
    state: dict[str, Tensor],
    tok: Any,
    *,
    eot: int | None,
    dtype: str,
    name: str,
) -> None:
    """Write the GGUF file at `path` atomically (a temporary file in the same folder, renamed)."""
    import gguf

    check_gguf_exportable(cfg)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    writer_path = Path(tmp)
    try:
        w = gguf.GGUFWriter(str(writer_path), "llama")
        w.add_name(name)
        w.add_file_type(
            {
                "f32": gguf.LlamaFileType.ALL_F32,
                "f16": gguf.LlamaFileType.MOSTLY_F16,
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            }[dtype]
        )
        w.add_vocab_size(cfg.vocab_size)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(mlp_width(cfg))
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.kv_heads)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(norm_eps())
        _add_tokenizer(w, tok, cfg.vocab_size, eot)
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.n_layer)
        for hf_name, t in to_hf(state, cfg).items():
            base, suffix = hf_name.rsplit(".", 1)
            gguf_name = names.get_name(base)
            if gguf_name is None:  # a bug: every Llama tensor has a GGUF name
                raise KeyError(hf_name)
            if base.endswith("q_proj"):
                t = interleave_rope_rows(t, cfg.n_head)
            elif base.endswith("k_proj"):
                t = interleave_rope_rows(t, cfg.kv_heads)
            data, qtype = _tensor_for(t, dtype)
            w.add_tensor(f"{gguf_name}.{suffix}", data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        make_shareable(writer_path)  # mkstemp made it owner-only
        os.replace(writer_path, path)
    finally:
        writer_path.unlink(missing_ok=True)


def _add_tokenizer(w: Any, tok: Any, n_vocab: int, eot: int | None) -> None:
    from tok.chat import END_OF_TURN, JINJA_TEMPLATE, has_template

    """The tokenizer as llama.cpp's `gpt2` type (see the module docstring). Rows of the
    embedding beyond the tokenizer's vocabulary get UNUSED placeholder tokens."""
    n = 256 + len(tok.merges)
    tokens = [spell(tok.token_bytes(i)) for i in range(n)]
    types = [TOKEN_NORMAL] * n
    for name, _ in sorted(tok.special_tokens.items(), key=lambda kv: kv[1]):
        tokens.append(name)
        types.append(TOKEN_CONTROL)
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        types.append(TOKEN_UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_TOKENIZERS.get(tok.pattern_name, "default"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{tokens[a]} {tokens[b]}" for a, b in tok.merges])
    if eot is not None:
        w.add_bos_token_id(eot)
        w.add_eos_token_id(eot)
    if has_template(tok):  # a chat run: its template, and the end of a turn
        w.add_chat_template(JINJA_TEMPLATE)
        w.add_eot_token_id(tok.special_tokens[END_OF_TURN])
    w.add_add_bos_token(False)
