"""The standard library as input (`stdlib:` entries) and whole files held out for validation
(`data.val_input` files left out of `data.input`), on a made-up library and on the real one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_documents import EOT, cfg, split_docs

from llm_tiny.data.inputs import check_inputs, stdlib_files, stdlib_root
from llm_tiny.data.prepare import held_out, prepare_data
from llm_tiny.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def fake_stdlib(root: Path) -> Path:
    files = {
        "abc.py": "x = 1\n",
        "README.txt": "not code\n",
        "json/__init__.py": "from .decoder import d\n",
        "json/decoder.py": "def d():\n    return 0\n",
        "json/tests/test_d.py": "assert 1\n",
        "test/test_abc.py": "assert 2\n",
        "idlelib/idle_test/t.py": "assert 3\n",
        "idlelib/run.py": "def run():\n    pass\n",
        "site-packages/torch/__init__.py": "big = 1\n",
        "dist-packages/yaml/__init__.py": "big = 2\n",
        ".hidden/h.py": "h = 1\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_stdlib_entries_name_the_py_files_without_third_party_packages_or_tests(tmp_path):
    root = fake_stdlib(tmp_path)
    names = [p.relative_to(root).as_posix() for p in stdlib_files("stdlib:*", root=root)]
    assert stdlib_files("stdlib:", root=root) == stdlib_files("stdlib:*", root=root)
    assert names == ["abc.py", "idlelib/run.py", "json/__init__.py", "json/decoder.py"]
    json_files = [root / "json/__init__.py", root / "json/decoder.py"]
    assert stdlib_files("stdlib:json", root=root) == json_files
    assert stdlib_files("stdlib:abc", root=root) == [root / "abc.py"]  # the module abc.py
    assert stdlib_files("stdlib:abc.py", root=root) == [root / "abc.py"]
    with pytest.raises(UserError, match=r"data.val_input: stdlib:nope not found"):
        stdlib_files("stdlib:nope", "data.val_input", root=root)
    with pytest.raises(UserError, match=r"stdlib:test/sub holds no .py files"):
        (root / "test" / "sub").mkdir()
        stdlib_files("stdlib:test/sub", root=root)


def test_the_real_stdlib_is_found_through_the_running_python():
    files = check_inputs(["stdlib:json", "stdlib:argparse"])
    root = stdlib_root()
    assert root / "json" / "decoder.py" in files and files[-1] == root / "argparse.py"
    assert all(p.suffix == ".py" and p.is_relative_to(root) for p in files)


def test_val_input_files_inside_an_input_folder_are_held_out_whole(tmp_path):
    docs = [f"def f{i}(x):\n    return x + {i}\n" * (i + 1) for i in range(12)]
    folder = tmp_path / "code"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"m{i:02}.py").write_text(d)
    val = [folder / "m03.py", folder / "m07.py"]
    c = cfg(tmp_path, [folder], val_input=tuple(map(str, val)), vocab_size=270)
    data = prepare_data(c, log=lambda _: None)
    tok = data.tokenizer
    eot = tok.special_tokens[EOT]
    train = list(map(tok.decode, split_docs(data, "train", eot)))
    assert list(map(tok.decode, split_docs(data, "val", eot))) == [docs[3], docs[7]]
    assert train == [d for i, d in enumerate(docs) if i not in (3, 7)]
    kept = [str(p) for p in sorted(folder.iterdir()) if p not in val]
    assert [x["path"] for x in data.meta["inputs"]] == kept
    with pytest.raises(UserError, match=r"all its files are in data\.val_input"):
        held_out(val, val)


def test_the_recipe_holds_out_whole_modules_whose_text_training_never_sees():
    data = yaml.safe_load((ROOT / "configs" / "stdlib_code.yaml").read_text())["data"]
    val = check_inputs(data["val_input"], "data.val_input")
    train = held_out(check_inputs(data["input"]), val)
    assert not {p.resolve() for p in val} & {p.resolve() for p in train}
    texts = {p.read_text(encoding="utf-8") for p in train}
    val_texts = [p.read_text(encoding="utf-8") for p in val]
    assert not [t for t in val_texts if t.strip() and t in texts]  # no file's text in both
    share = sum(p.stat().st_size for p in val) / sum(p.stat().st_size for p in val + train)
    assert 0.02 < share < 0.08  # docs/code_model.md: about 4 % of the bytes
