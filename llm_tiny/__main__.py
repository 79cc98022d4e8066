"""The one command-line entry point: `python -m llm_tiny COMMAND ...` (also `llm-tiny COMMAND`).

Each command lives in its own module with a `main(argv) -> int`; this file only dispatches, and
imports a command's module only when that command runs.
"""

from __future__ import annotations

import importlib
import sys

from llm_tiny.errors import EXIT_USAGE

COMMANDS = {
    "prepare": (
        "llm_tiny.data.prepare",
        "tokenize a config's input into shards (training does too)",
    ),
    "train": ("llm_tiny.train.loop", "train a model from a YAML config"),
    "consolidate": ("llm_tiny.train.sharded", "a sharded (fsdp) checkpoint as one .pt file"),
    "sample": ("llm_tiny.infer.sample", "generate text from a checkpoint"),
    "eval": ("llm_tiny.eval.cli", "bits per byte of a checkpoint, or its scores on tasks"),
    "config": ("llm_tiny.config", "validate a config and print it resolved"),
    "plot": ("llm_tiny.plots", "plot loss curves of one or more runs"),
    "sweep": ("llm_tiny.sweep", "search hyperparameters"),
    "viz": ("llm_tiny.viz", "attention, embedding and gradient-flow pictures"),
    "tasks": ("llm_tiny.tasks", "synthetic tasks (digit operations)"),
    "rl": ("llm_tiny.rl.loop", "improve a trained run on a task with checkable answers (RL)"),
    "chat": ("llm_tiny.infer.chat", "talk to a chat run (interactive, or JSONL on stdin)"),
    "chatdemo": ("llm_tiny.conversations", "the chat demo's conversations and their scores"),
    "serve": ("llm_tiny.serve", "OpenAI-compatible server and web playground"),
    "export": ("llm_tiny.export.cli", "a checkpoint to Hugging Face transformers or GGUF"),
    "import": ("llm_tiny.export.importer", "a Hugging Face GPT-2 / Llama folder as a run"),
}

USAGE = "usage: llm_tiny COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(
    f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"llm_tiny: error: unknown command {command!r}; choose from {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
