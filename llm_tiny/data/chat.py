"""Conversations (data.kind `chat`): rows of `messages: [{role, content}, ...]` (the OpenAI /
Hugging Face format) from JSON Lines or Parquet, through the same input layer as documents
(`tok.sources.iter_documents` with a record check), rendered by the one chat template
(`tok.chat.render`) into token ids and a loss mask.

A bad record (not a list of messages, an unknown role, content that is not a string, no
assistant turn) is named with its file:line (or Parquet row) and counted under
`data.on_bad_record`. The conversations of `data.val_input` are validation when it is set;
otherwise a conversation is validation when a hash of it falls below `data.val_fraction`
(`prepare.is_validation`, as for documents).

On disk, beside the token shards: `{split}.idx.npy` holds each conversation's start, scored
tokens and total tokens; `{split}.mask.npy` one byte per token, 1 where the loss counts.
The context rule (a conversation longer than the context keeps its first tokens) and packing
are the batch source's (`batches.ChatBatches`), since only it knows `model.block_size`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llm_tiny.config import DataConfig
from llm_tiny.data.inputs import CHAT_NAMES
from llm_tiny.data.shards import SPLITS, ShardWriter
from llm_tiny.errors import UserError
from tok.chat import CHAT_TOKENS, message_problem, render
from tok.sources import BadRecords, Document, iter_documents


def check_conversation(
    value: Any, field: str, record: dict | None = None
) -> tuple[list[tuple[str, str]] | None, str | None]:
    """(the messages as (role, content) pairs, None) for a usable conversation, else (None,
    why): a `tok.sources` record check.

    >>> check_conversation([{"role": "user", "content": "Hi"}], "messages")
    (None, 'no assistant turn in the conversation')
    """
    if value is None:
        keys = f" (keys: {', '.join(list(record)[:8])})" if record is not None else ""
        return None, f"no {field!r} value{keys}"
    if not isinstance(value, list) or not value:
        return None, f"{field!r} must be a non-empty list of messages, not {type(value).__name__}"
    pairs = []
    for i, message in enumerate(value):
        problem = message_problem(message)
        if problem:
            return None, f"message {i + 1}: {problem}"
        role, content = message["role"], message["content"]
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            return None, f"message {i + 1}: content holds a lone surrogate (not UTF-8)"
        pairs.append((role, content))
    if not any(role == "assistant" for role, _ in pairs):
        return None, "no assistant turn in the conversation"
    return pairs, None


def iter_conversations(cfg: DataConfig, files: list[Path], stats: BadRecords) -> Iterator[Document]:
    """The conversations of `files` (`Document.text` holds the (role, content) pairs)."""
    return iter_documents(
        files,
        text_field=cfg.messages_field,
        on_bad_record=cfg.on_bad_record,
        stats=stats,
        names=CHAT_NAMES,
        check=check_conversation,
    )


def conversation_texts(cfg: DataConfig, files: list[Path]) -> Iterator[str]:
    """Every message's content, for training a tokenizer on conversations."""
    for doc in iter_conversations(cfg, files, BadRecords()):
        yield from (content for _, content in doc.text if content)


def prepare_chat(
    files: list[Path],
    val_files: list[Path],
    tok: Any,
    writers: dict[str, ShardWriter],
    cfg: DataConfig,
    in_val: Callable[[str, float], bool],
    log: Callable[[str], None],
) -> dict[str, dict[str, int]]:
    """Render the conversations of `files` (and `val_files`) into the two writers, with their
    index and mask files; the splits' counts. `in_val(text, data.val_fraction)` says which split
    a conversation joins when there are no `val_files`."""
    missing = [t for t in CHAT_TOKENS if t not in tok.special_tokens]
    if missing:
        raise UserError(
            f"{cfg.tokenizer} has no chat tokens ({', '.join(missing)}); start from a run "
            "with train.init_from (its tokenizer gets them), or delete the file to train one"
        )
    stats = BadRecords()
    parts: dict[str, list[tuple[list[int], list[bool], int]]] = {s: [] for s in SPLITS}
    sources = [("train", files), ("val", val_files)] if val_files else [(None, files)]
    for fixed, paths in sources:
        for doc in iter_conversations(cfg, paths, stats):
            ids, mask = render(tok, doc.text)
            n_bytes = sum(len(c.encode("utf-8")) for _, c in doc.text)
            split = fixed or ("val" if in_val(json.dumps(doc.text), cfg.val_fraction) else "train")
            parts[split].append((ids, mask, n_bytes))
    if stats.count:
        log(f"note: {stats.summary()}")
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        convs = parts[split]
        if not convs:
            total = sum(len(c) for c in parts.values())
            raise UserError(
                f"data.input: none of its {total} conversations fell in the {split} split; "
                "use more conversations, another data.val_fraction, or data.val_input"
            )
        index = np.zeros((len(convs), 3), dtype=np.int64)  # start, scored tokens, total tokens
        start = 0
        for row, (ids, mask, _) in enumerate(convs):
            index[row] = (start, sum(mask), len(ids))
            start += len(ids)
        ids_all = np.fromiter((t for ids, _, _ in convs for t in ids), dtype=np.uint32)
        mask_all = np.fromiter((m for _, mask, _ in convs for m in mask), dtype=np.uint8)
        writers[split].append(ids_all)
        np.save(Path(cfg.data_dir) / f"{split}.idx.npy", index)
        np.save(Path(cfg.data_dir) / f"{split}.mask.npy", mask_all)
        scored = ids_all[mask_all.astype(bool)]
        out[split] = {
            "bytes": sum(n for _, _, n in convs),
            "tokens": len(ids_all),
            "conversations": len(convs),
            "scored_bytes": sum(len(tok.token_bytes(int(t))) for t in scored),
            "scored_tokens": int(mask_all.sum()),
            "max_example_tokens": int(index[:, 2].max()),
        }
    return out
