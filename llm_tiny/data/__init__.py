"""Data: text files -> token ids on disk (`prepare`) -> batches (`batches`)."""

from llm_tiny.data.batches import ExampleBatches, TokenArray, TokenWindows, eval_windows, open_split
from llm_tiny.data.prepare import PreparedData, load_prepared, prepare_data
