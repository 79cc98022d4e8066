"""`python -m llm_tiny serve`: an OpenAI-compatible server and a playground page for one model.

    cli       the command line: loads the checkpoint, starts uvicorn
    app       the FastAPI routes (OpenAI's completions, chat and models; the playground's helpers)
    protocol  request schemas, OpenAI-shaped errors, the chat template, stop strings
    engine    the background decoding loop that batches every active request (continuous batching)

docs/serve.md describes the API and the page.
"""

from llm_tiny.serve.cli import main
