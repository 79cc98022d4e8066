"""LoRA runs end to end, in-process: a base run, adapters trained over it with `train.init_from`,
adapter-only checkpoints, bit-exact resume, the commands that load base + adapters, and the
refusals (another base, another adapter shape), one line and exit 2."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from llm_tiny.__main__ import main
from llm_tiny.config import config_from_dict, load_config
from llm_tiny.model import lora as L
from llm_tiny.train.checkpoint import load_checkpoint, load_model, start_from
from llm_tiny.train.loop import train
from llm_tiny.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
N = 6  # steps of each half of the resumed run
LLAMA = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1}


def write_config(path: Path, corpus: Path, out: Path, **sections) -> Path:
    """A tiny run (1 layer, 32 wide, byte-level tokenizer) on `corpus`, writing under `out`."""
    raw = {
        "model": {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32},
        "data": {"input": [str(corpus)], "vocab_size": 256},
        "optim": {"lr": 1e-2, "min_lr": 1e-3, "warmup_iters": 2},
        "train": {"out_dir": str(out), "max_iters": N, "batch_size": 8, "eval_interval": N,
                  "eval_iters": 2, "ckpt_interval": N, "log_interval": 1, "eval_batch_size": 8,
                  "threads": 1, "device": "cpu", "sample_at_end": False},
    }  # fmt: skip
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def quiet(_: str) -> None:
    """A log function that drops the lines."""


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> SimpleNamespace:
    """Two trained base runs on a slice of data/tiny.txt: GPT-2-shaped and Llama-shaped."""
    tmp = tmp_path_factory.mktemp("bases")
    corpus = tmp / "corpus.txt"
    corpus.write_text((ROOT / "data" / "tiny.txt").read_text(encoding="utf-8")[:12_000])
    runs = {}
    for name, model in (("gpt2", {}), ("llama", LLAMA)):
        config = write_config(tmp / f"{name}.yaml", corpus, tmp / name, model=model)
        train(load_config(config), progress=False, log=quiet)
        runs[name] = tmp / name
    return SimpleNamespace(corpus=corpus, **runs)


def lora_config(tmp: Path, base: Path, corpus: Path, **sections) -> Path:
    """`tmp/lora.yaml`: a LoRA run over `base` (rank 4 unless `lora` says otherwise)."""
    sections.setdefault("lora", {"rank": 4, "alpha": 8.0, "targets": ["q", "v", "o", "up", "down"]})
    sections["train"] = {"init_from": str(base), **sections.get("train", {})}
    tmp.mkdir(parents=True, exist_ok=True)
    return write_config(tmp / "lora.yaml", corpus, tmp / "run", **sections)


def test_a_lora_run_trains_only_adapters_and_saves_them_alone(tmp_path, bases):
    config = lora_config(tmp_path, bases.gpt2, bases.corpus)
    result = train(load_config(config), progress=False, log=quiet)
    assert result.step == N
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    base_ckpt = load_checkpoint(bases.gpt2 / "best.pt")
    # Only adapters, and the hash of the base they were trained over.
    assert ckpt["model"] and all(L.is_adapter_key(k) for k in ckpt["model"])
    assert ckpt["base"]["sha256"] == L.state_sha256(base_ckpt["model"])
    assert Path(ckpt["base"]["init_from"]) == (bases.gpt2 / "best.pt").resolve()
    size, base_size = (tmp_path / "run" / "last.pt").stat().st_size, (bases.gpt2 / "last.pt").stat().st_size  # fmt: skip
    assert size < base_size / 3, (size, base_size)
    # Merged for inference: every base tensor outside the adapted matrices is unchanged, each
    # adapted one moved by exactly (alpha / r) B A.
    model, _, cfg, _ = load_model(tmp_path / "run", name="last.pt")
    merged, base = model.state_dict(), base_ckpt["model"]
    adapted = {f"blocks.0.{linear}.weight" for linear, _, _ in L.target_rows(cfg.model).values()}
    for key in base:
        if key in adapted:
            expected = L.merge_state(base, ckpt["model"], cfg.model, cfg.lora)[key]
            assert not torch.equal(merged[key], base[key]), key  # the adapters trained
            torch.testing.assert_close(merged[key], expected, rtol=0, atol=0)
        else:
            assert torch.equal(merged[key], base[key]), key
    # A new run may start from the LoRA run: from its merged weights.
    again = load_config(config, [f"--train.init_from={tmp_path / 'run'}", "--lora.rank=0",
                                 f"--train.out_dir={tmp_path / 'again'}"])  # fmt: skip
    _, weights = start_from(again)
    assert weights.keys() == merged.keys() and all(
        torch.equal(weights[k], merged[k]) for k in merged
    )
    # The validation loss moved from the base's (fine-tuning did something, from its start).
    losses = [r["val_loss"] for r in read_metrics(tmp_path / "run" / "metrics.csv") if r.get("val_loss")]  # fmt: skip
    assert len(losses) == 2 and losses[-1] < losses[0]


def test_lora_resume_continues_bit_for_bit(tmp_path, bases):
    lora = {"rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": ["q", "k", "v", "gate", "down"]}
    whole = lora_config(
        tmp_path / "whole", bases.llama, bases.corpus, lora=lora,
        train={"max_iters": 2 * N}, optim={"lr_decay_iters": 2 * N},
    )  # fmt: skip
    split = lora_config(
        tmp_path / "split", bases.llama, bases.corpus, lora=lora, optim={"lr_decay_iters": 2 * N}
    )
    assert train(load_config(whole), progress=False, log=quiet).step == 2 * N
    assert train(load_config(split), progress=False, log=quiet).step == N
    cfg = load_config(split, [f"--train.max_iters={2 * N}", "--train.resume=always"])
    assert train(cfg, progress=False, log=quiet).step == 2 * N

    def losses(run: Path) -> dict[int, float]:
        return {int(r["step"]): r["train_loss"] for r in read_metrics(run / "metrics.csv")}

    assert losses(tmp_path / "split" / "run") == losses(tmp_path / "whole" / "run")
    a = load_checkpoint(tmp_path / "split" / "run" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "whole" / "run" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_commands_load_base_plus_adapters_and_refuse_another_base(tmp_path, bases, capsys):
    def llm(*args: str) -> SimpleNamespace:
        code = main(list(args))
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    # A base of its own, so that retraining it later leaves the shared fixture alone.
    base = tmp_path / "base"
    base_cfg = write_config(tmp_path / "base.yaml", bases.corpus, base)
    assert llm("train", str(base_cfg)).returncode == 0
    config = lora_config(tmp_path, base, bases.corpus)
    assert llm("train", str(config)).returncode == 0
    run = str(tmp_path / "run")
    sample = ["--prompt", "KING:", "--max-new-tokens", "8", "--temperature", "0"]
    first = llm("sample", "--ckpt", run, *sample)
    assert first.returncode == 0 and first.stdout.startswith("KING:"), first.stderr
    evaluated = llm("eval", "--ckpt", run)
    assert evaluated.returncode == 0 and "bits per byte" in evaluated.stdout, evaluated.stderr

    # The base run trains on (another seed): its best.pt now holds other weights.
    assert llm("train", str(base_cfg), "--train.seed=7", "--train.overwrite=true").returncode == 0
    for command in (["sample", "--ckpt", run, *sample], ["eval", "--ckpt", run],
                    ["export", "--ckpt", run, "--out", str(tmp_path / "hf")],
                    ["train", str(config), "--train.resume=always", f"--train.max_iters={2 * N}"]):  # fmt: skip
        result = llm(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "other base weights than" in result.stderr, result.stderr
    assert not (tmp_path / "hf").exists()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == N  # the last good one stays

    # Resuming with another adapter shape is refused before anything moves.
    result = llm("train", str(config), "--train.resume=always", "--lora.rank=8")
    assert result.returncode == 2 and "lora.rank is 4 in the checkpoint but 8" in result.stderr

    # A bad lora config: one line, exit 2, and no run directory.
    fresh = f"--train.out_dir={tmp_path / 'fresh'}"
    for flags, message in (
        (["--lora.rank=4", "--train.init_from=null"], "set train.init_from"),
        (["--lora.targets=[q,gate]"], "'gate' is not a projection of this model"),
        (["--lora.alpha=0"], "lora.alpha must be > 0"),
    ):
        result = llm("train", str(config), fresh, *flags)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    ("kind", "targets"),
    [("gpt2", ["q", "v", "o", "down"]), ("llama", ["q", "k", "v", "o", "gate", "up", "down"])],
)
def test_peft_loads_the_exported_adapters_with_our_logits(tmp_path, bases, capsys, kind, targets):
    """The real `peft` and `transformers`: PeftModel over the base's HF export computes our
    adapted model's logits. GPT-2's fused c_attn gets q and v, not k: a block-diagonal B."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base = getattr(bases, kind)
    lora = {"rank": 4, "alpha": 8.0, "targets": targets}
    config = lora_config(tmp_path, base, bases.corpus, lora=lora)
    assert main(["train", str(config)]) == 0
    base_hf, adapter = tmp_path / "base_hf", tmp_path / "adapter"
    assert main(["export", "--ckpt", str(base), "--out", str(base_hf)]) == 0
    argv = ["export", "--ckpt", str(tmp_path / "run"), "--format", "peft", "--out", str(adapter)]
    assert main([*argv, "--base-hf", str(base_hf)]) == 0
    assert "PEFT LoRA adapters" in capsys.readouterr().out
    merged = tmp_path / "merged"
    assert main(["export", "--ckpt", str(tmp_path / "run"), "--merge", "--out", str(merged)]) == 0
    assert "LoRA adapters merged into their base" in capsys.readouterr().out
    if kind == "llama":  # GGUF (Llama shapes only) takes the same merged weights
        gguf = tmp_path / "merged.gguf"
        argv_gguf = ["--ckpt", str(tmp_path / "run"), "--merge", "--format", "gguf"]
        assert main(["export", *argv_gguf, "--out", str(gguf)]) == 0 and gguf.stat().st_size
    assert {p.name for p in adapter.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }

    hf_base = transformers.AutoModelForCausalLM.from_pretrained(base_hf).eval()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = hf_base(ids).logits.clone()
        theirs = peft.PeftModel.from_pretrained(hf_base, adapter).eval()(ids).logits
    ours, _, cfg, _ = load_model(tmp_path / "run")  # merged
    # ...and unmerged: the base with live adapter layers.
    live, _, _, _ = load_model(base)
    L.add_lora(live, cfg.lora)
    live.load_state_dict(load_checkpoint(tmp_path / "run" / "best.pt")["model"], strict=False)
    with torch.no_grad():
        for model in (ours, live.eval()):
            got = model(ids)[0][..., : plain.shape[-1]]
            assert (got - theirs).abs().max().item() < 1e-4
    assert (theirs - plain).abs().max().item() > 1e-3  # the adapters do change the logits
    # export --merge: a plain HF model with the merged weights gives the same logits.
    with torch.no_grad():
        merged_logits = transformers.AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    assert (merged_logits - theirs).abs().max().item() < 1e-4

    # --format peft of a run without adapters, and --merge with it, are one line, exit 2.
    capsys.readouterr()  # (transformers' progress bars)
    for bad in (["--ckpt", str(base), "--format", "peft"], [*argv[1:5], "--merge"]):
        assert main(["export", *bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and ("not a LoRA run" in err or "--merge" in err)


def test_lora_chat_sft_trains_the_new_turn_tokens_rows_and_resumes_bit_for_bit(tiny_run, tmp_path):
    """A chat run with LoRA over a base without the chat tokens: the grown rows train whole
    (`lora.tokens`), the adapter checkpoint holds them, and the run resumes bit for bit."""
    from helpers import sft_config

    from tok.chat import CHAT_TOKENS

    lora = {"rank": 4, "alpha": 8.0, "targets": ["q", "v", "o"]}
    whole = sft_config(tmp_path / "a", tiny_run, max_iters=6, ckpt_interval=3) | {"lora": lora}
    train(config_from_dict(whole), progress=False, log=quiet)
    split = sft_config(tmp_path / "b", tiny_run, max_iters=3, ckpt_interval=3) | {"lora": lora}
    split["optim"]["lr_decay_iters"] = 6
    train(config_from_dict(split), progress=False, log=quiet)
    split["train"] |= {"max_iters": 6, "resume": "always"}
    train(config_from_dict(split), progress=False, log=quiet)

    ckpt = load_checkpoint(tmp_path / "a" / "chat" / "last.pt")
    base = load_checkpoint(tiny_run / "best.pt")["model"]["wte.weight"]
    cfg = config_from_dict(ckpt["config"])
    assert cfg.lora.tokens == tuple(range(base.shape[0], base.shape[0] + len(CHAT_TOKENS)))
    assert set(ckpt["model"]) >= {"wte.lora.rows", "lm_head.lora.rows"}
    assert all(L.is_adapter_key(k) for k in ckpt["model"])
    assert ckpt["base"]["sha256"] == L.state_sha256(load_checkpoint(tiny_run / "best.pt")["model"])
    # The turn tokens' rows moved away from their start (the mean row) and the merged model
    # carries them; the base's own rows did not move.
    model = load_model(tmp_path / "a" / "chat", name="last.pt")[0]
    merged = model.state_dict()["wte.weight"]
    assert torch.equal(merged[: base.shape[0]], base)
    assert torch.equal(merged[base.shape[0] :], ckpt["model"]["wte.lora.rows"])
    assert not torch.allclose(merged[base.shape[0] :], base.mean(dim=0).expand(4, -1), atol=1e-4)

    # Bit for bit: the same losses and the same adapters and rows.
    def losses(run):
        rows = read_metrics(run / "chat" / "metrics.csv")
        return {r["step"]: r["train_loss"] for r in rows if r["train_loss"] is not None}

    assert losses(tmp_path / "a") == {
        k: v for k, v in losses(tmp_path / "b").items() if k in losses(tmp_path / "a")
    }
    b = load_checkpoint(tmp_path / "b" / "chat" / "last.pt")["model"]
    assert b.keys() == ckpt["model"].keys()
    assert all(torch.equal(ckpt["model"][k], b[k]) for k in b)
    # PEFT's format cannot carry rows the base's export lacks: one line saying what to do.
    args = ["export", "--ckpt", str(tmp_path / "a" / "chat"), "--format", "peft",
            "--out", str(tmp_path / "peft"), "--base-hf", str(tmp_path / "none")]  # fmt: skip
    assert main(args) == 2 and not (tmp_path / "peft").exists()


def test_adapters_find_their_base_after_the_project_moves(tmp_path, bases, monkeypatch):
    """The absolute base path is gone after a move: the run's own (relative) train.init_from,
    read from the working directory, finds the base, whose hash is checked; no base at all is
    one line."""
    import shutil

    from llm_tiny.errors import UserError

    project = tmp_path / "project"
    shutil.copytree(bases.gpt2, project / "base")
    monkeypatch.chdir(project)
    config = lora_config(project, Path("base"), bases.corpus)
    train(load_config(config), progress=False, log=quiet)
    want = load_model(project / "run", name="last.pt")[0].state_dict()
    moved = tmp_path / "moved"
    project.rename(moved)
    monkeypatch.chdir(moved)
    got = load_model(moved / "run", name="last.pt")[0].state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    shutil.rmtree(moved / "base")
    with pytest.raises(UserError, match="which is not there any more") as info:
        load_model(moved / "run", name="last.pt")
    assert "\n" not in str(info.value)
