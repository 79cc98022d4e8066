"""Data: text files -> token ids on disk (`prepare`) -> batches (`batches`; `encoded` for the
encoder-only and encoder-decoder models, whose `open_split` serves every `model.arch`)."""

from llm_tiny.data.batches import ExampleBatches, TokenArray, TokenWindows, eval_windows
from llm_tiny.data.encoded import open_split
from llm_tiny.data.prepare import PreparedData, load_prepared, prepare_data
