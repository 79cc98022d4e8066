"""Use a model elsewhere: export to Hugging Face transformers (`hf`, `hf_tokenizer`) and to GGUF
for llama.cpp (`gguf`), and import HF GPT-2 / Llama directories (`importer`). The commands are
`python -m llm_tiny export` (`cli`) and `python -m llm_tiny import` (`importer`);
docs/export.md has the mapping tables."""
