"""benchmarks/experiments.py: the architecture grid, its summary and the doc it writes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import experiments  # noqa: E402

from llm_tiny.config import ModelConfig  # noqa: E402
from llm_tiny.config.sections import Arch, Mlp, Norm, NormPosition, PosEmb  # noqa: E402


def test_every_variant_changes_one_field_from_the_baseline():
    names = experiments.variant_names()
    assert names[0] == "baseline" and len(names) == len(set(names)) == 13
    for name in names[1:]:
        changed = {
            k: v for k, v in experiments.model_of(name).items() if experiments.BASELINE[k] != v
        }
        assert len(changed) == 1 and name == "{}={}".format(*changed.popitem())
        ModelConfig(**experiments.model_of(name))  # a valid model
    # The questions cover every choice the config allows for these fields.
    allowed = {"pos_emb": PosEmb, "norm_position": NormPosition, "norm": Norm, "arch": Arch}
    for field, choices in experiments.QUESTIONS.values():
        if field in allowed:
            assert set(choices) == set(allowed[field].__args__)
    assert set(experiments.QUESTIONS["MLP"][1]) <= set(Mlp.__args__)


def test_the_architectures_run_on_the_digits_only():
    # An encoder has no next-token loss on a text stream: the other archs are a digits question.
    assert experiments.runs_on("digits", "arch=encoder") and experiments.runs_on("text", "baseline")
    assert not experiments.runs_on("text", "arch=encoder_decoder")
    assert experiments.runs_on("text", "mlp=relu")
    encoder = experiments.run_config("digits", "arch=encoder", 1, Args(), Path("/tmp/x")).model
    assert (encoder.arch, encoder.n_classes) == ("encoder", 10)
    decoder = experiments.run_config("digits", "baseline", 1, Args(), Path("/tmp/x")).model
    assert (decoder.arch, decoder.n_classes) == ("decoder", None)


class Args:
    threads, digits_steps = 1, 8


def test_summary_is_mean_and_sample_sd_over_seeds():
    runs = [
        {"task": "text", "variant": "baseline", "seed": s, "params": 10, "val_loss": v,
         "seconds": 2.0}
        for s, v in ((1, 1.0), (2, 2.0), (3, 3.0))
    ]  # fmt: skip
    entry = experiments.summarise(runs)["text"]["baseline"]
    assert entry["seeds"] == 3 and entry["val_loss"] == (2.0, 1.0)
    assert entry["seconds"] == (2.0, 0.0) and "accuracy" not in entry


def test_write_doc_replaces_only_the_results_section(tmp_path):
    doc = tmp_path / "e.md"
    experiments.write_doc(doc, f"{experiments.START}\nold\n{experiments.END}")
    text = doc.read_text().replace("# Architecture experiments", "# Title\n\nmy conclusions")
    doc.write_text(text + "\nafter\n")
    experiments.write_doc(doc, f"{experiments.START}\nnew\n{experiments.END}")
    text = doc.read_text()
    assert "my conclusions" in text and "after" in text and "new" in text
    assert "old" not in text and text.count(experiments.START) == 1


def test_a_run_of_some_variants_writes_its_own_section_with_only_its_questions(tmp_path):
    """`--section arms`: its own markers, kept apart from the first grid's; a question whose
    only row would be the baseline is left out."""
    runs = [
        {"task": "text", "variant": v, "seed": 1, "params": 10, "val_loss": loss, "seconds": 1.0,
         "curve": [(0, 5.0), (10, loss)]}
        for v, loss in (("baseline", 2.0), ("attn_window=8", 2.5))
    ]  # fmt: skip
    meta = {"date": "d", "machine": "m", "torch": "t", "threads": 1, "seeds": 1,
            "seed_list": [1], "total_minutes": 1.0, "command": "c", "digits_steps": 1,
            "text_steps": 10}  # fmt: skip
    section = experiments.results_markdown(experiments.summarise(runs), meta, {}, "arms")
    start, end = experiments.markers("arms")
    assert section.startswith(start) and section.endswith(end)
    rows = [line for line in section.splitlines() if line.startswith("| attention span")]
    assert [r.split("|")[2].strip() for r in rows] == ["**null** (baseline)", "8"]
    assert "| positions |" not in section  # no t5 run: the question is not asked
    doc = tmp_path / "e.md"
    experiments.write_doc(doc, f"{experiments.START}\nfirst grid\n{experiments.END}")
    experiments.write_doc(doc, section, "arms")  # no markers yet: appended
    experiments.write_doc(doc, section.replace("2.5000", "2.4000"), "arms")  # replaced in place
    text = doc.read_text()
    assert "first grid" in text and text.count(start) == 1 and "2.4000" in text
    assert "2.5000" not in text


def test_results_of_parallel_processes_merge_into_one_grid():
    def part(seed: int, minutes: float) -> tuple[list, dict]:
        run = {"task": "text", "variant": "baseline", "seed": seed, "params": 10,
               "val_loss": float(seed), "seconds": 1.0, "curve": [(0, 5.0)]}  # fmt: skip
        meta = {"seeds": 1, "seed_list": [seed], "total_minutes": minutes,
                "command": f"cmd {seed}", "load_avg_after": 2.0 + seed}  # fmt: skip
        return [run], meta

    runs, meta = experiments.merge_results([part(2, 3.0), part(1, 5.0)])
    assert [r["seed"] for r in runs] == [2, 1] and meta["seed_list"] == [1, 2]
    assert meta["seeds"] == 2 and meta["total_minutes"] == 5.0 and meta["load_avg_after"] == 4.0
    assert (
        meta["command"].startswith("cmd 2` and 1 more like it") and "--from-json" in meta["command"]
    )
    assert experiments.summarise(runs)["text"]["baseline"]["val_loss"] == (1.5, 0.5**0.5)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tasks", "vision"], "--tasks: unknown task 'vision'"),
        (["--variants", "mlp=tanh"], "--variants: unknown 'mlp=tanh'"),
        (["--input", "nowhere.txt"], "--input nowhere.txt: not found"),
        (["--seeds", "0", "--tasks", "digits"], "--seeds must be >= 1"),
        (["--from-json", "nowhere.json"], "--from-json nowhere.json: not a result of this script"),
    ],
)
def test_bad_flags_get_one_line_and_status_2(flags, message, capsys):
    assert experiments.main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
