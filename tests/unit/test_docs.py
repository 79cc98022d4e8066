"""The docs point at real code and real files.

`docs/theory.md` names the code behind each explanation as `` `path/to/file.py::name` ``, where
`name` is a top-level function or class, or `Class.method`. Each reference must exist: the file,
and the name defined in it (found with `ast`, so nothing is imported). Every section of
theory.md ends with such an "Implemented in:" line. Relative links and images in the docs and
the README must point to files that exist.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THEORY = ROOT / "docs" / "theory.md"
REFERENCE = re.compile(r"`([\w./-]+\.py)::([A-Za-z_][\w.]*)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


@cache
def definitions(path: Path) -> frozenset[str]:
    """Names defined in a Python file: top-level functions, classes and assignments, plus
    `Class.method` (and `Class.attribute`) for everything defined in a class body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()

    def targets(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Assign):
            return [t.id for t in node.targets if isinstance(t, ast.Name)]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            return [node.target.id]
        return []

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        names.update(targets(node))
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(f"{node.name}.{item.name}")
                names.update(f"{node.name}.{t}" for t in targets(item))
    return frozenset(names)


def theory_references() -> list[tuple[str, str]]:
    return REFERENCE.findall(THEORY.read_text(encoding="utf-8"))


def test_definitions_finds_functions_classes_and_methods(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "X = 1\n"
        "def f():\n    def inner(): pass\n"
        "class C:\n    y: int = 2\n    def m(self): pass\n    @property\n    def p(self): pass\n"
    )
    assert definitions(source) == {"X", "f", "C", "C.y", "C.m", "C.p"}


def test_theory_documents_its_reference_syntax():
    head = THEORY.read_text(encoding="utf-8")[:3000]
    assert "::" in head and "Implemented in" in head
    assert len(theory_references()) >= 40


@pytest.mark.parametrize(("path", "name"), sorted(set(theory_references())))
def test_theory_reference_exists(path, name):
    file = ROOT / path
    assert file.is_file(), f"docs/theory.md names {path}, which does not exist"
    assert name in definitions(file), f"docs/theory.md names {path}::{name}, not defined there"


def test_every_theory_section_says_where_it_is_implemented():
    text = THEORY.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) >= 12
    for section in sections:
        title = section.splitlines()[0]
        if title.lower().startswith(("how to read", "further reading", "where next")):
            continue
        lines = [line for line in section.splitlines() if line.startswith("Implemented in:")]
        assert lines, f"section {title!r} has no 'Implemented in:' line"
        assert REFERENCE.search(lines[-1]), f"section {title!r}: no `file.py::name` reference"


def relative_links(doc: Path) -> list[str]:
    """Links to files of the repository (not http:, mailto:, ...), anchors included."""
    text = doc.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code blocks are examples
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens
    (`## 3. Scaled dot-product attention` -> `3-scaled-dot-product-attention`)."""
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_anchors_follow_github(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n## 3. Scaled dot-product attention\n```\n# not a heading\n```\n")
    assert anchors(doc) == {"title", "3-scaled-dot-product-attention"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_and_images_exist(doc):
    for target in relative_links(doc):
        path, _, anchor = target.partition("#")
        file = doc.parent / path if path else doc
        assert file.exists(), f"{doc.name} links to {target}, which is missing"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{doc.name} links to {target}: no such heading"


def test_doc_images_are_real_pngs_under_300_kb():
    images = sorted((ROOT / "docs" / "img").glob("*.png"))
    assert images, "docs/img holds no images"
    for image in images:
        data = image.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{image.name} is not a PNG"
        assert 1000 < len(data) < 300_000, f"{image.name} is {len(data):,} bytes"
        linked = any(f"img/{image.name}" in doc.read_text(encoding="utf-8") for doc in DOCS)
        assert linked, f"docs/img/{image.name} is not shown in any doc"


# ----------------------------------------------------------------------------- troubleshooting

TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"


def code_text() -> str:
    """The sources of llm_tiny and tok, with adjacent string literals joined, so that a message
    split over several lines of code reads as one string."""
    files = sorted((ROOT / "llm_tiny").rglob("*.py")) + sorted((ROOT / "tok").rglob("*.py"))
    text = "\n".join(p.read_text(encoding="utf-8") for p in files)
    return re.sub(r"[\"']\s*\n\s*[rRfFbB]{0,2}[\"']", "", text)


def quoted_messages() -> list[str]:
    """Backticked text with `…` or `...` (a message with its variable parts elided) in the
    Symptom paragraphs."""
    text = TROUBLESHOOTING.read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.startswith("**Symptom.**")]
    quotes = [q for p in paragraphs for q in re.findall(r"`([^`]+)`", p.replace("\n", " "))]
    return [q.replace("...", "…") for q in quotes if "…" in q or "..." in q]


def test_troubleshooting_quotes_real_messages():
    code = code_text()
    messages = quoted_messages()
    assert len(messages) >= 8
    for message in messages:
        for fragment in (f.strip() for f in message.split("…")):
            assert len(fragment) < 3 or fragment in code, (
                f"troubleshooting.md quotes {message!r}, but {fragment!r} is not in the code"
            )


def test_troubleshooting_config_keys_exist():
    from llm_tiny.config import SECTIONS

    text = TROUBLESHOOTING.read_text(encoding="utf-8")
    keys = re.findall(r"`(model|data|optim|train|sample)\.([a-z_0-9]+)", text)
    assert len(keys) >= 20
    for section, key in keys:
        fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
        assert key in fields, f"troubleshooting.md names {section}.{key}, which is not a config key"


def test_files_the_readme_examples_write_in_the_root_are_ignored_by_git():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL))
    written = set(re.findall(r"> ([\w.-]+\.\w+)", blocks))  # `... > my.txt`
    written |= set(re.findall(r"--out ([\w.-]+\.\w+)", blocks))  # `plot ... --out compare.png`
    written |= set(re.findall(r"write_table\(.*?'([\w.-]+\.parquet)'\)", blocks))
    assert {"my.txt", "notes.jsonl", "rows.parquet", "prompt.txt", "compare.png"} <= written
    ignored = set((ROOT / ".gitignore").read_text(encoding="utf-8").split())
    assert {f"/{name}" for name in written} <= ignored
