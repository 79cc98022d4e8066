"""The encoder-only and encoder-decoder models through the ordinary training loop, checkpoint
format and digit-task evaluation; the commands that take decoders only refuse them by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_tiny.config import load_config
from llm_tiny.errors import UserError
from llm_tiny.export.cli import main as export_main
from llm_tiny.model import MODELS
from llm_tiny.model.encoder import TinyEncoder
from llm_tiny.model.seq2seq import TinySeq2Seq
from llm_tiny.tasks import format_report, predict, read_examples, score, write_dataset
from llm_tiny.train.checkpoint import load_model
from llm_tiny.train.loop import train
from llm_tiny.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"encoder": "digits_encoder.yaml", "encoder_decoder": "digits_seq2seq.yaml"}
N = 3


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    write_dataset(out, 400, 9, seed=1)
    return out


def config(arch: str, digits: Path, out: Path, steps: int, *extra: str):
    return load_config(
        ROOT / "configs" / CONFIGS[arch],
        [
            f"--data.input=[{digits / 'train.txt'},{digits / 'val.txt'}]",
            f"--train.out_dir={out}", f"--train.max_iters={steps}", "--train.batch_size=16",
            "--train.eval_interval=2", "--train.eval_iters=2", "--train.log_interval=1",
            "--optim.warmup_iters=1", f"--optim.lr_decay_iters={2 * N}", "--model.n_embd=32",
            "--model.n_layer=1", *extra,
        ],
    )  # fmt: skip


def losses(run: Path) -> dict[int, float]:
    return {int(r["step"]): r["train_loss"] for r in read_metrics(run / "metrics.csv")}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_trains_resumes_exactly_and_scores_the_digit_task(arch, digits, tmp_path, capsys):
    quiet = {"progress": False, "log": lambda _line: None}
    whole = train(config(arch, digits, tmp_path / "whole", 2 * N), **quiet)
    assert whole.step == 2 * N and whole.val_loss > 0
    train(config(arch, digits, tmp_path / "split", N), **quiet)
    resumed = config(arch, digits, tmp_path / "split", 2 * N, "--train.resume=always")
    assert train(resumed, **quiet).step == 2 * N
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")  # bit for bit

    # The checkpoint rebuilds the right class; the digit task's report reads its answers.
    model, tok, _cfg, _ = load_model(tmp_path / "whole", archs=tuple(MODELS), name="last.pt")
    assert type(model) is {"encoder": TinyEncoder, "encoder_decoder": TinySeq2Seq}[arch]
    examples = read_examples(digits / "test.txt")  # 40: three batches of 16, the last short
    result = score(examples, predict(model, tok, examples, batch_size=16))
    assert result["n"] == 40 and "all" in format_report(result)
    with pytest.raises(UserError, match=r"does not fit model\.block_size"):
        predict(model, tok, ["Max(1,2,3,4,5,6,7,8,9)=9"])

    # Generating, serving and exporting take decoders only: one line naming the arch.
    with pytest.raises(UserError, match=f"model.arch is {arch}; this command takes decoder"):
        load_model(tmp_path / "whole")
    for fmt in ("hf", "gguf"):
        assert export_main(["--ckpt", str(tmp_path / "whole"), "--format", fmt,
                            "--out", str(tmp_path / f"export.{fmt}")]) == 2  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"model.arch {arch}: export writes decoder" in err
        assert not (tmp_path / f"export.{fmt}").exists()
