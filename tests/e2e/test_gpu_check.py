"""benchmarks/gpu_check.py: its dry run (every stage at toy size on the CPU, on a Python where
only torch and the core libraries can be imported), and the report it writes (its pure parts are tests/unit/test_gpu_check_parts.py).
The figures themselves are what the script measures on a GPU (docs/gpu.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


gpu_check = load_script("gpu_check")
bench_train = load_script("bench_train")

# What a bare CUDA machine may lack: everything but torch, numpy, pyyaml, regex and tqdm (and
# the standard library). A `sitecustomize` on PYTHONPATH makes them unimportable in the script
# and in every process it starts. The full dry run keeps pytest (and its hypothesis plugin) so
# that its tests stage runs; a run of the tests stage alone hides them too.
BLOCKED = (
    "matplotlib", "transformers", "tokenizers", "safetensors", "gguf", "fastapi", "uvicorn",
    "openai", "sklearn", "pyarrow", "tiktoken", "zstandard", "tensorboard", "PIL", "pandas",
    "scipy",
)  # fmt: skip
TEST_TOOLS = ("pytest", "_pytest", "hypothesis")


def bare_python(folder: Path, names: tuple[str, ...]) -> list[str]:
    """A PYTHONPATH entry whose `sitecustomize` hides `names` from every process started with
    it. NOTE: hidden means not found (None), not an error: torch probes optional modules with
    `importlib.util.find_spec`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        "from importlib.machinery import PathFinder\n\n"
        "class _Bare(PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {set(names)!r}:\n"
        "            return None\n"
        "        return super().find_spec(name, path, target)\n\n"
        "sys.meta_path[:] = [_Bare if f is PathFinder else f for f in sys.meta_path]\n"
    )
    return [str(folder)]


def run_script(*args: str, env_path: list[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(env_path or []), str(ROOT)])
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    site = bare_python(tmp / "site", BLOCKED)
    proc = run_script("--out", str(tmp / "out"), "--dry-run", env_path=site)
    return proc, tmp / "out"


def test_the_bare_python_really_hides_the_optional_libraries(tmp_path):
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('matplotlib') is None\n"
        "try:\n    import matplotlib\nexcept ImportError:\n    sys.exit(7)"
    )
    env = {**os.environ, "PYTHONPATH": bare_python(tmp_path, BLOCKED)[0]}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 7


def test_dry_run_runs_every_stage_on_a_bare_python(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["format"] == "llm_tiny.gpu_check" and report["dry_run"] is True
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == [name for name, _ in gpu_check.STAGES]
    assert report["elapsed_s"] < report["budget_s"]

    tests = stages["tests"]
    assert tests["status"] == "ok" and tests["files"] == ["tests/integration/test_gpu.py"]
    assert tests["tests"] >= 4 and tests["failed"] == tests["errors"] == 0
    if not torch.cuda.is_available():
        assert tests["skipped"] == tests["tests"]

    for name, variant in gpu_check.TRAIN_VARIANTS:
        s = stages[name]
        assert s["status"] == "ok", s
        assert s["variant"] == variant and s["compile_backend"] == "eager"
        assert (s["n_layer"], s["block_size"], s["vocab_size"]) == (2, 32, 512)
        assert s["tokens_per_s"] > 0 and s["ms_per_iter"] > 0 and s["peak_mem_mib"] > 0
        assert s["mfu"] is None and math.isfinite(s["final_loss"])  # no known peak on a CPU

    sh = stages["shakespeare_char"]
    assert sh["status"] == "ok", sh
    assert sh["steps"] == 12 and [e[0] for e in sh["evals"]] == [0, 6, 12]
    assert sh["best_val_loss"] == min(e[2] for e in sh["evals"]) < sh["evals"][0][2]  # it learns
    assert sh["time_to_target_s"] is None and sh["step_at_target"] is None  # 1.47: a GPU's job
    assert sh["input"].endswith("tiny.txt") and sh["input_is_tiny_shakespeare"] is False
    csv = (out / "shakespeare_char_metrics.csv").read_text().splitlines()
    assert csv[0].startswith("step,") and len(csv) > 3

    gen = stages["generation"]
    assert gen["status"] == "ok", gen
    assert [r["batch"] for r in gen["runs"]] == [1, 64]
    assert all(r["new_tokens"] == 16 and r["tokens_per_s"] > 0 for r in gen["runs"])

    assert stages["ddp"]["status"] == "skipped" and "two or more" in stages["ddp"]["reason"]
    assert stages["fsdp"]["status"] == "skipped" and "two or more" in stages["fsdp"]["reason"]
    assert [t["met"] for t in report["targets"]] == [None, None]  # toy sizes prove nothing


def test_dry_run_markdown_is_the_report_as_a_table(dry_run):
    proc, out = dry_run
    report = json.loads((out / "gpu_check.json").read_text())
    md = (out / "gpu_check.md").read_text()
    assert md == gpu_check.markdown(report)
    assert md.startswith("# GPU check (dry run")
    assert "| stage | status | result | seconds |" in md
    for s in report["stages"]:
        assert f"| {s['name']} | {s['status']} |" in md
    assert "| target | measured | met |" in md
    assert md in proc.stdout  # printed as well as written


def test_without_pytest_the_tests_stage_is_skipped_and_says_why(tmp_path):
    site = bare_python(tmp_path / "site", BLOCKED + TEST_TOOLS)
    proc = run_script("--out", str(tmp_path), "--dry-run", "--only", "tests", env_path=site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (stage,) = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert stage["status"] == "skipped" and "pytest is not installed" in stage["reason"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "no/such.txt"], "--input no/such.txt: no such file"),
        (["--only", "tests,bogus"], "unknown stage 'bogus'"),
        (["--budget", "0"], "--budget must be > 0"),
    ],
)
def test_user_mistakes_are_one_line_with_status_2(tmp_path, args, message):
    proc = run_script("--out", str(tmp_path), "--dry-run", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "gpu_check.json").exists()
