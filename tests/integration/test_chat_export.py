"""A chat run's template in every export, checked by the other side's readers: transformers'
`apply_chat_template` gives exactly our ids on many conversations, `generation_config.json`
stops at the end of a turn, GGUF carries `tokenizer.chat_template` (read by `gguf`), and
`import` keeps a template ours reproduces and says in one line when it cannot."""

from __future__ import annotations

import json

import pytest
from helpers import conversations, write_checkpoint

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from llm_tiny.export import cli, importer
from llm_tiny.export.hf_tokenizer import STAND_IN_BYTE, reproduces_template
from llm_tiny.train.checkpoint import load_model
from tok.chat import JINJA_TEMPLATE, has_template, render

MORE = [
    [{"role": "user", "content": "Hi there! 🙂 héllo 世界"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
    [{"role": "user", "content": "  two  spaces\n\nnew lines\t"},
     {"role": "assistant", "content": "<not a special>"}, {"role": "user", "content": "e\u0301"}],
]  # fmt: skip


@pytest.fixture(scope="module")
def hf_dir(chat_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("chat_hf") / "hf"
    assert cli.main(["--ckpt", str(chat_run), "--format", "hf", "--out", str(out)]) == 0
    return out


def test_apply_chat_template_gives_our_ids(chat_run, hf_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hf_dir)
    _, tok, _, _ = load_model(chat_run, "cpu")
    convs = conversations(60, seed=11) + MORE
    for conv in convs:
        for reply in (False, True):
            messages = conv[:-1] if reply and conv[-1]["role"] == "assistant" else conv
            theirs = hf.apply_chat_template(
                messages, add_generation_prompt=reply, tokenize=True, return_dict=True
            )["input_ids"]
            assert theirs == render(tok, messages, reply)[0], messages


def test_generation_config_stops_at_the_end_of_a_turn(chat_run, hf_dir):
    _, tok, _, _ = load_model(chat_run, "cpu")
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    # The base run read one text file: no end-of-text token of its own, so the export's
    # stand-in (the never-used 0xFF byte's token, named <|endoftext|>) and the end of a turn.
    assert "<|endoftext|>" not in tok.special_tokens
    assert eos == [STAND_IN_BYTE[0], tok.special_tokens["<|end|>"]]
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == JINJA_TEMPLATE


def test_gguf_carries_the_chat_template(tmp_path):
    import gguf

    from llm_tiny.config import ModelConfig
    from llm_tiny.model import TinyGPT
    from tok.bpe import Tokenizer
    from tok.chat import with_chat_tokens

    tok = with_chat_tokens(Tokenizer([], "gpt2", ["<|endoftext|>"]))
    shape = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_layer": 1, "n_embd": 32}
    model = TinyGPT(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_head=2, **shape))
    run = write_checkpoint(tmp_path / "run", model, tok)
    out = tmp_path / "chat.gguf"
    assert cli.main(["--ckpt", str(run), "--format", "gguf", "--out", str(out)]) == 0
    reader = gguf.GGUFReader(out)
    template = reader.fields["tokenizer.chat_template"]
    assert bytes(template.parts[-1]).decode("utf-8") == JINJA_TEMPLATE
    eot = reader.fields["tokenizer.ggml.eot_token_id"]
    assert int(eot.parts[-1][0]) == tok.special_tokens["<|end|>"]


def test_import_keeps_a_template_ours_reproduces(hf_dir, tmp_path, capsys):
    assert importer.main(["--hf", str(hf_dir), "--out", str(tmp_path / "run")]) == 0
    assert "kept the chat template" in capsys.readouterr().out
    _, tok, _, _ = load_model(tmp_path / "run", "cpu")
    assert has_template(tok)


def test_import_says_when_it_cannot_keep_a_template(hf_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "hf"
    shutil.copytree(hf_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert importer.main(["--hf", str(folder), "--out", str(tmp_path / "run")]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "chat template" in x]
    assert len(lines) == 1 and lines[0].startswith("note:")
    assert "not one llm_tiny can reproduce" in lines[0]


def test_reproduces_template():
    assert reproduces_template(JINJA_TEMPLATE)
    spaced = JINJA_TEMPLATE.replace("'<|end|>'", "'<|end|>\\n'")
    assert not reproduces_template(spaced)
    assert not reproduces_template("{{ raise_exception('no') }}")
    assert not reproduces_template("{% for %}")  # not even Jinja
