"""Chat runs end to end in-process: conversation data (bad records, no valid rows), the SFT
loss against a brute-force reference that scores each conversation token by token, the
validation loss on the assistant's tokens, `train.init_from` growing a base run's vocabulary,
exact resume, and the KV cache a conversation keeps between turns."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import sft_config, write_conversations

from llm_tiny.config import config_from_dict, load_config
from llm_tiny.data import load_prepared, open_split, prepare_data
from llm_tiny.errors import UserError
from llm_tiny.eval.loss import evaluate_split
from llm_tiny.infer.chat import ChatSession
from llm_tiny.infer.engine import run
from llm_tiny.infer.params import SamplingParams
from llm_tiny.infer.prompt import chat_prompt_ids
from llm_tiny.train.checkpoint import load_checkpoint, load_model, start_from
from llm_tiny.train.loop import train
from llm_tiny.train.metrics import read_metrics
from tok.chat import CHAT_TOKENS, has_template
from tok.errors import TokenizerError


def quiet(_: str) -> None:
    pass


def brute_force_loss(model, conversations: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean loss over every scored token: each one predicted from its conversation's prefix
    alone, in its own forward pass."""
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, mask in conversations:
            for j in range(1, len(ids)):
                if mask[j]:
                    logits, _ = model(torch.as_tensor(np.asarray(ids[:j]))[None])
                    total -= float(F.log_softmax(logits[0, -1].double(), -1)[int(ids[j])])
                    n += 1
    return total / n


def test_sft_loss_is_the_brute_force_assistant_loss(chat_run):
    model, tok, cfg, _ = load_model(chat_run, "cpu")
    data = load_prepared(chat_run / "data", tok)
    assert data.meta["kind"] == "chat"
    for split in ("train", "val"):
        source = open_split(data, split, cfg, batch_size=4)
        x, y = source.get_batch(step=7)
        rows = [source.groups[r] for r in source._rows(7, 0, len(source.groups))]
        _, loss = model(x, y)
        convs = [source.conversation(i) for (i,) in rows]
        assert float(loss.detach()) == pytest.approx(brute_force_loss(model, convs), abs=1e-5)
    # Validation: every conversation once, alone; the loss the run reports.
    val = open_split(data, "val", cfg)
    result = evaluate_split(model, val, data.split("val")["scored_bytes"], batch_size=8)
    convs = [val.conversation(i) for i in range(len(val.index))]
    assert result["loss"] == pytest.approx(brute_force_loss(model, convs), abs=1e-5)
    # A conversation longer than the context keeps its first block_size + 1 tokens.
    assert val.truncated > 0 and all(len(ids) <= cfg.model.block_size + 1 for ids, _ in convs)
    assert data.split("val")["scored_tokens"] == int(val.index[:, 1].sum())


def test_packed_rows_hold_whole_conversations_and_their_targets(chat_run):
    _, tok, cfg, _ = load_model(chat_run, "cpu")
    data = load_prepared(chat_run / "data", tok)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pack=True))
    source = open_split(data, "train", cfg, batch_size=4)
    assert len(source.groups) < len(source.index) and any(len(g) > 1 for g in source.groups)
    x, y = source._batch(source.groups[:4])
    for r, group in enumerate(source.groups[:4]):
        ids = np.concatenate([source.conversation(i)[0] for i in group])
        mask = np.concatenate([source.conversation(i)[1] for i in group])
        n = min(len(ids), cfg.model.block_size + 1)
        assert x[r, : n - 1].tolist() == ids[: n - 1].tolist()
        assert y[r, : n - 1].tolist() == np.where(mask[1:n], ids[1:n], -1).tolist()


def test_init_from_adds_the_chat_tokens_and_grows_the_rows(tiny_run, tmp_path):
    cfg = config_from_dict(sft_config(tmp_path, tiny_run))
    base = load_checkpoint(tiny_run / "best.pt")
    cfg, weights = start_from(cfg)
    old = base["model"]["wte.weight"]
    assert cfg.model.vocab_size == old.shape[0] + 4 == cfg.data.vocab_size
    assert torch.equal(weights["wte.weight"][: old.shape[0]], old)
    for row in weights["wte.weight"][old.shape[0] :]:
        torch.testing.assert_close(row, old.mean(dim=0))
    from tok.bpe import Tokenizer

    assert has_template(Tokenizer.load(cfg.run_data.tokenizer))


def test_chat_run_resumes_bit_for_bit(tiny_run, tmp_path):
    whole = config_from_dict(sft_config(tmp_path / "a", tiny_run, max_iters=6, ckpt_interval=3))
    train(whole, progress=False, log=quiet)
    split = sft_config(tmp_path / "b", tiny_run, max_iters=3, ckpt_interval=3)
    split["optim"]["lr_decay_iters"] = 6
    train(config_from_dict(split), progress=False, log=quiet)
    split["train"] |= {"max_iters": 6, "resume": "always"}
    train(config_from_dict(split), progress=False, log=quiet)

    def losses(run):
        rows = read_metrics(run / "chat" / "metrics.csv")
        return {r["step"]: r["train_loss"] for r in rows if r["train_loss"] is not None}

    whole_losses, split_losses = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(whole_losses) >= 3
    assert {k: split_losses[k] for k in whole_losses} == whole_losses
    a = load_checkpoint(tmp_path / "a" / "chat" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "chat" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_records_are_named_and_counted(tiny_run, tmp_path):
    good = write_conversations(tmp_path / "good.jsonl", 40)
    lines = good.read_text(encoding="utf-8").splitlines()
    lines[2] = json.dumps({"messages": [{"role": "robot", "content": "x"}]})
    lines[5] = json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
    lines[7] = json.dumps({"messages": [{"role": "user", "content": ["not", "text"]}]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = sft_config(tmp_path, tiny_run)
    raw["data"]["input"] = [str(bad)]
    cfg = config_from_dict(raw)
    cfg, _ = start_from(cfg)
    with pytest.raises(TokenizerError, match=rf"{bad}:3: message 1: unknown role 'robot'"):
        prepare_data(cfg.run_data, log=quiet)
    notes = []
    skip = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, on_bad_record="skip"))
    data = prepare_data(skip.run_data, log=notes.append)
    assert any(f"3 bad records skipped (first: {bad}:3:" in n for n in notes)
    assert sum(s["conversations"] for s in data.meta["splits"].values()) == 37
    none = tmp_path / "none.jsonl"
    none.write_text(lines[2] + "\n" + lines[5] + "\n", encoding="utf-8")
    empty = dataclasses.replace(skip.data, input=(str(none),), data_dir=str(tmp_path / "d2"))
    with pytest.raises(TokenizerError, match="no documents in"):
        prepare_data(empty.resolved(cfg.train.out_dir), log=quiet)


def test_a_chat_config_on_a_base_run_without_init_from_is_refused(tiny_run, tmp_path):
    shutil.copytree(tiny_run.parent, tmp_path / "base")
    raw = sft_config(tmp_path, tiny_run)
    base_cfg = load_config(tmp_path / "base" / "run" / "config.yaml")
    raw["data"]["tokenizer"] = base_cfg.data.tokenizer.replace(
        str(tiny_run.parent), str(tmp_path / "base")
    )
    raw["data"]["vocab_size"] = 256
    del raw["train"]["init_from"]
    with pytest.raises(UserError, match="has no chat tokens"):
        train(config_from_dict(raw), progress=False, log=quiet)
    assert not (tmp_path / "chat" / "last.pt").exists()


def test_a_conversation_keeps_its_cache_between_turns(chat_run):
    model, tok, cfg, _ = load_model(chat_run, "cpu")
    params = SamplingParams(max_new_tokens=6, temperature=0.0, top_p=None)
    session = ChatSession(model, tok, params, system="hi")
    first, _ = session.reply("yes")
    second, _ = session.reply("no")
    assert session.reused > 0  # the second turn computed only its new tokens
    # The reference: the whole conversation rendered and decoded afresh.
    ids = chat_prompt_ids(tok, session.messages[:-1], cfg.model.block_size)
    fresh = run(model, [ids], params.replace(stop_tokens=session.params.stop_tokens))[0]
    stops = set(session.params.stop_tokens)
    assert second == tok.decode([t for t in fresh.tokens if t not in stops])
    assert [m[0] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[2][1] == first
    assert all(t in tok.special_tokens for t in CHAT_TOKENS)


def test_conversations_from_parquet_match_jsonl(tiny_run, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers import conversations

    raw = sft_config(tmp_path, tiny_run)
    cfg, _ = start_from(config_from_dict(raw))
    table = pa.table({"chat": conversations(200)})  # a list of structs per row
    pq.write_table(table, tmp_path / "chats.parquet", row_group_size=64)
    parquet = dataclasses.replace(
        cfg.data, input=(str(tmp_path / "chats.parquet"),), messages_field="chat",
        data_dir=str(tmp_path / "pq"),
    )  # fmt: skip
    a = prepare_data(cfg.run_data, log=quiet)
    b = prepare_data(parquet.resolved(cfg.train.out_dir), log=quiet)
    for split in ("train", "val"):
        assert list(a.tokens(split)[0 : len(a.tokens(split))]) == list(
            b.tokens(split)[0 : len(b.tokens(split))]
        )


def test_demo_losses_are_the_brute_force_losses(chat_run):
    from helpers import conversations

    from llm_tiny.conversations import conversation_losses
    from tok.chat import render

    model, tok, cfg, _ = load_model(chat_run, "cpu")
    convs = conversations(6, seed=5)
    assistant, every = conversation_losses(model, tok, convs)
    cut = cfg.model.block_size + 1
    rendered = [tuple(np.asarray(x[:cut]) for x in render(tok, c)) for c in convs]
    assert assistant == pytest.approx(brute_force_loss(model, rendered), abs=1e-5)
    everything = [(ids, np.ones_like(mask)) for ids, mask in rendered]
    assert every == pytest.approx(brute_force_loss(model, everything), abs=1e-5)
