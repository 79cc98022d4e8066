"""The shape of the code: which module may import which, no import cycles, and the map in
docs/architecture.md naming only modules and functions that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from test_docs import definitions

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "docs" / "architecture.md"
REFERENCE = re.compile(r"`([\w./-]+\.py)::([A-Za-z_][\w.]*)`")
PACKAGES = ("llm_tiny", "tok")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports anywhere in it (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import module` depends on the module; `from module import name` on it.
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs or ({node.module} & known)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {}
    for name, path in mods.items():
        edges[name] = imports(path, known) - {name}
    return edges


def test_no_import_cycles():
    edges = graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(edges):
        visit(node, [])


# The layers, lowest first: a module may import its own layer and the ones before it, never a
# later one. `tok` and the foundation (config, errors, runtime, distributed) sit under all of
# them; the model; data, the training pieces and the checkpoint format; inference and evaluation
# (which load checkpoints); on top the commands, the training loop among them (it evaluates and
# samples at the end).
LAYERS = [
    ("tok",),
    ("llm_tiny.config", "llm_tiny.errors", "llm_tiny.runtime", "llm_tiny.distributed"),
    ("llm_tiny.model",),
    ("llm_tiny.data", "llm_tiny.train", "llm_tiny.plots"),
    ("llm_tiny.infer", "llm_tiny.eval"),
    (
        "llm_tiny.train.loop",
        "llm_tiny.rl",  # RL with verifiable rewards: draws on `tasks`' answers and the engine
        "llm_tiny.tasks",
        "llm_tiny.eval.suite",  # draws on `tasks`' digit operations
        "llm_tiny.eval.cli",
        "llm_tiny.eval.lmeval",
        "llm_tiny.eval.monitor",
        "llm_tiny.serve",
        "llm_tiny.export",
        "llm_tiny.sweep",
        "llm_tiny.viz",
    ),
    ("llm_tiny.__main__", "llm_tiny"),
]


def layer_of(name: str) -> int:
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    assert best is not None, f"{name} is in no layer of test_architecture.LAYERS"
    return best


def test_dependencies_point_one_way():
    edges = graph()
    for name, deps in edges.items():
        for dep in deps:
            assert layer_of(dep) <= layer_of(name), f"{name} (a lower layer) imports {dep}"
    # The model file knows nothing of training: the config and its own leaves, the kernels,
    # the KV cache and the config-free layers.
    model_deps = {
        "llm_tiny.config",
        "llm_tiny.model.attention",
        "llm_tiny.model.kvcache",
        "llm_tiny.model.layers",
    }
    assert edges["llm_tiny.model.model"] == model_deps
    assert edges["llm_tiny.model.attention"] == set()
    assert edges["llm_tiny.model.layers"] == set()
    assert edges["llm_tiny.model.kvcache"] == {"llm_tiny.config"}
    # Nothing in the library imports the training loop (the sweep runs it as a subprocess).
    assert not [n for n, deps in edges.items() if "llm_tiny.train.loop" in deps]


def test_no_module_is_over_500_lines():
    # The model is the one file a learner reads top to bottom (docs/model.md): it keeps every
    # module the flags choose from together, and so may run a little over.
    limits = {"llm_tiny.model.model": 600, "llm_tiny.train.loop": 400}
    for name, path in modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        assert n <= limits.get(name, 500), f"{name} has {n} lines"


def test_the_map_names_real_functions_and_every_module():
    text = MAP.read_text(encoding="utf-8")
    refs = REFERENCE.findall(text)
    assert len(refs) >= 25
    for path, name in refs:
        assert (ROOT / path).is_file(), f"architecture.md names {path}, which does not exist"
        assert name in definitions(ROOT / path), f"{path}::{name} is not defined"
    for path in modules().values():
        if path.name in ("__init__.py", "__main__.py") and path.parent.name in PACKAGES:
            continue  # the packages' entry points
        rel = path.relative_to(ROOT)
        shown = str(rel) in text or f"`{path.stem}`" in text or f"{rel.parent}/" in text
        assert shown, f"docs/architecture.md does not mention {rel}"


def module_table() -> dict[str, str]:
    """docs/architecture.md's module table: the path in the first cell -> the description."""
    text = MAP.read_text(encoding="utf-8").split("## The modules", 1)[1]
    rows = re.findall(r"^\| `([\w./]+)` \| (.*) \|$", text, flags=re.MULTILINE)
    return dict(rows)


def test_the_module_table_has_a_row_for_each_package_naming_each_of_its_modules():
    table = module_table()
    for path in table:
        assert (ROOT / path).exists(), f"architecture.md's table names {path}, which does not exist"
    for path in modules().values():
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "llm_tiny" and len(rel.parts) == 2:  # a top-level module
            if rel.name != "__init__.py":
                assert str(rel) in table, f"architecture.md's table has no row for {rel}"
            continue
        package = f"{rel.parent}/"
        assert package in table, f"architecture.md's table has no row for {package}"
        if rel.name != "__init__.py":
            assert f"`{rel.stem}`" in table[package], (
                f"the row for {package} does not name {rel.stem}"
            )


def test_http_libraries_stay_in_the_server():
    # Prompt and chat rules live in `infer`, free of HTTP: only `serve` may import the web stack.
    web = ("pydantic", "fastapi", "starlette", "uvicorn")
    for name, path in modules().items():
        if name.startswith("llm_tiny.serve"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found = [node.module or ""]
            else:
                continue
            assert not [f for f in found if f.split(".")[0] in web], f"{name} imports {found}"
