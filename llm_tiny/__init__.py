"""llm_tiny: train GPT-style language models end to end."""
