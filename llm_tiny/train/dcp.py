"""The on-disk layout of a sharded checkpoint (`torch.distributed.checkpoint`, DCP), and
reading its tensors safely.

A sharded checkpoint is a directory named like the `.pt` file it stands for (`last.dcp`,
`best.dcp`; `rundir.sharded_name`):

    last.dcp/
        LATEST               the name of the complete save below; replaced by a rename
        step-00000120/       one save
            .metadata        DCP's index: every tensor's global shape and where its shards are
            __0_0.distcp ... each rank's shards of the weights (`model.*`) and of the
                             optimizer state (`optim.*`), tensors only
            meta.pt          the rest of a `.pt` checkpoint (`checkpoint` module docstring):
                             config, step, every rank's RNG states, sampler, tokenizer, ...,
                             and the optimizer's parameter groups; written by rank 0

Atomic: a save goes to a new directory (`new_save_dir`) and `LATEST` names it only once every
rank's shards (fsync'ed by DCP) and `meta.pt` are on disk (`commit`); the older saves go after
that. A process killed at any instant leaves `LATEST` naming a complete save.

DCP keeps each tensor's global shape and the offsets of its shards, and fills whatever tensors
it is handed on loading: the shards of another number of processes, or whole tensors in one
process. Only tensors are stored in the shards (no pickled objects), and DCP's index, which is
a pickle, is read with an unpickler that builds nothing but DCP's own metadata classes and
torch's sizes and dtypes (`SafeReader`): reading a downloaded checkpoint runs no code.
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llm_tiny.errors import UserError
from llm_tiny.train.rundir import LATEST_FILE, replace_durably

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32,
          torch.int8, torch.uint8, torch.bool)  # fmt: skip
META_FILE = "meta.pt"  # the non-tensor part of a sharded checkpoint, in each save directory


def current_save(path: str | Path) -> Path:
    """The save directory `path/LATEST` names, checked to be complete."""
    path = Path(path)
    name = (path / LATEST_FILE).read_text(encoding="utf-8").strip()
    save = path / name
    if "/" in name or name.startswith(".") or not (save / ".metadata").is_file():
        raise UserError(f"{path}: {LATEST_FILE} names {name!r}, which is not a complete save")
    if not (save / META_FILE).is_file():
        raise UserError(f"{save}: no {META_FILE} (not an llm_tiny sharded checkpoint)")
    return save


def new_save_dir(path: str | Path, step: int) -> Path:
    """A directory name for a new save of step `step` in `path` that no earlier save used."""
    path = Path(path)
    name, n = f"step-{step:08d}", 1
    while (path / name).exists():
        n += 1
        name = f"step-{step:08d}-{n}"
    return path / name


def commit(save: Path) -> None:
    """Point `LATEST` at `save` (atomically: temp file, fsync, rename, fsync of the directory),
    then delete the other saves in its directory."""
    root = save.parent
    tmp = root / (LATEST_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(save.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, root / LATEST_FILE)
    for other in root.iterdir():
        if other.is_dir() and other != save:
            shutil.rmtree(other, ignore_errors=True)


# ----------------------------------------------------------------------------- safe reading

# What DCP's index may hold: its own metadata classes, torch's sizes, dtypes and layouts, and
# paths. Nothing else is built (no function is called but `_get_layout`, a lookup by name).
_DCP_METADATA = (
    "ChunkStorageMetadata", "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
    "TensorStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING",
)  # fmt: skip
_ALLOWED = {("torch.distributed.checkpoint.metadata", n) for n in _DCP_METADATA}
_ALLOWED |= {("torch.distributed.checkpoint.filesystem", "_StorageInfo")}
_ALLOWED |= {("torch", "Size"), ("torch.serialization", "_get_layout")}
_ALLOWED |= {("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath")}
_ALLOWED |= {("torch", str(t).removeprefix("torch.")) for t in DTYPES}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to build {module}.{name}")


def _reader(save: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        """DCP's file reader with its index read by `_IndexUnpickler` instead of `pickle`."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            try:
                with open(save / ".metadata", "rb") as f:
                    metadata = _IndexUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
                raise UserError(f"{save}: not a readable sharded checkpoint index ({e})") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(save)


def index(save: Path) -> dict[str, Any]:
    """DCP's index of `save`: {flattened key ("model.wte.weight"): its metadata}."""
    return _reader(save).read_metadata().state_dict_metadata


def load_into(state: dict[str, Any], save: Path) -> None:
    """Fill the tensors of `state` (nested dicts; whole tensors or this rank's DTensor shards)
    from `save`. Every rank of a process group calls it; with none, one process reads alone."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    index(save)  # a bad index is one line here, before DCP reads it
    try:
        with warnings.catch_warnings():  # "no process group: assuming one process" is the intent
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=_reader(save), no_dist=not dist.is_initialized())
    except UserError:
        raise
    except Exception as e:  # DCP wraps a missing key or a shape mismatch in CheckpointException
        text = " ".join(str(e).split())
        raise UserError(f"{save}: does not fit this model and optimizer ({text[:300]})") from None


def read_tensors(save: Path, prefix: str) -> dict[str, Tensor]:
    """The whole tensors under `prefix` ("model") of `save`, in this process alone (the
    weights of a sharded checkpoint, for sampling, evaluation, export or serving)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    state: dict[str, Tensor] = {}
    for key, md in index(save).items():
        if key.startswith(prefix + ".") and isinstance(md, TensorStorageMetadata):
            state[key[len(prefix) + 1 :]] = torch.empty(md.size, dtype=md.properties.dtype)
    if not state:
        raise UserError(f"{save}: holds no {prefix} tensors")
    load_into({prefix: state}, save)
    return state
