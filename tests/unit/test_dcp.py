"""Sharded checkpoints on disk (`llm_tiny.train.dcp`): the LATEST pointer, reading the tensors
in one process, and an index that would run code refused. The runs that write and reshard them
over 2 processes are tests/e2e/test_fsdp.py."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings

import pytest
import torch
import torch.distributed.checkpoint as torch_dcp

from llm_tiny.errors import UserError
from llm_tiny.train import dcp
from llm_tiny.train.rundir import is_sharded, newest, sharded_name


def write_save(root, step: int, weights: dict) -> object:
    """A save as rank 0 of one process makes it: shards, meta.pt, then LATEST."""
    save = dcp.new_save_dir(root, step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no process group: one process
        torch_dcp.save({"model": weights}, checkpoint_id=save)
    torch.save({"step": step}, save / dcp.META_FILE)
    dcp.commit(save)
    return save


def test_latest_names_the_newest_complete_save_and_the_older_go(tmp_path):
    root = tmp_path / sharded_name("last.pt")
    assert root.name == "last.dcp" and not is_sharded(root)
    a = {"w": torch.arange(6.0).reshape(3, 2), "b": torch.tensor([1, 2], dtype=torch.int64)}
    first = write_save(root, 5, a)
    assert is_sharded(root) and dcp.current_save(root) == first and first.name == "step-00000005"
    # A second save of the same step gets a name of its own; LATEST moves; the first goes.
    second = write_save(root, 5, {k: v + 1 for k, v in a.items()})
    assert second.name == "step-00000005-2" and dcp.current_save(root) == second
    assert not first.exists() and sorted(p.name for p in root.iterdir()) == ["LATEST", second.name]
    got = dcp.read_tensors(second, "model")
    assert got.keys() == a.keys() and all(torch.equal(got[k], a[k] + 1) for k in a)
    assert got["b"].dtype == torch.int64


def test_a_save_that_latest_does_not_name_is_ignored(tmp_path):
    root = tmp_path / "last.dcp"
    done = write_save(root, 1, {"w": torch.ones(2)})
    torn = dcp.new_save_dir(root, 2)  # killed before its index and meta.pt were written
    torn.mkdir()
    assert dcp.current_save(root) == done
    (root / "LATEST").write_text(torn.name)
    with pytest.raises(UserError, match="which is not a complete save"):
        dcp.current_save(root)


def test_newest_takes_the_form_written_last(tmp_path):
    assert newest(tmp_path, "last.pt") is None
    write_save(tmp_path / "last.dcp", 1, {"w": torch.ones(2)})
    (tmp_path / "last.pt").write_bytes(b"x")
    latest = tmp_path / "last.dcp" / "LATEST"
    os.utime(latest, ns=(1, 1))
    assert newest(tmp_path, "last.pt") == tmp_path / "last.pt"
    os.utime(tmp_path / "last.pt", ns=(0, 0))
    assert newest(tmp_path, "last.pt") == tmp_path / "last.dcp"


class RunsCode:
    """Unpickled by plain `pickle`, it would delete a directory."""

    def __init__(self, victim) -> None:
        self.victim = str(victim)

    def __reduce__(self):
        return (shutil.rmtree, (self.victim,))


def test_an_index_that_would_run_code_is_refused(tmp_path):
    save = write_save(tmp_path / "last.dcp", 1, {"w": torch.ones(2)})
    victim = tmp_path / "victim"
    victim.mkdir()
    (save / ".metadata").write_bytes(pickle.dumps(RunsCode(victim)))
    with pytest.raises(UserError, match=r"index \(refusing to build shutil.rmtree\)"):
        dcp.read_tensors(save, "model")
    assert victim.is_dir()
