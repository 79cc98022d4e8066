"""The model layer: TinyGPT (`model`, the file to read top to bottom), its attention kernels
(`attention`), config-free pieces (`layers`), the KV cache (`kvcache`), LoRA adapters
(`lora`), the encoder-only and encoder-decoder models built from its blocks (`encoder`,
`seq2seq`) and the class of each `model.arch` (`archs`). It imports nothing from training,
inference or serving."""

from llm_tiny.model.archs import MODELS, build_model
from llm_tiny.model.lora import add_lora, trainable_note
from llm_tiny.model.model import (
    RMSNorm,
    TinyGPT,
    decode_layout,
    mlp_width,
    swiglu_hidden,
)
