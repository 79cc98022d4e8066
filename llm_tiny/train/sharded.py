"""Checkpoints across parallelisms: saving a run as one `.pt` file or sharded (`train.dcp`),
resuming either into one process, DDP or FSDP, and consolidating a sharded checkpoint.

`save` writes `.pt` (rank 0, from the gathered weights) unless the model is sharded
(`runtime.parallel: fsdp`): then every rank writes its shards of the weights and optimizer
state through `torch.distributed.checkpoint` and rank 0 the rest (`meta.pt`). The other form
of the same name is deleted afterwards, so a run directory holds one `last`.

`restore` continues a run from either form into any model:

    checkpoint   model            how
    .pt          plain, DDP       `checkpoint.restore_training` as ever
    sharded      any              DCP fills this rank's tensors (its shards, or whole tensors):
                                  it reshards from the world size that saved to this one
    .pt          FSDP             each rank reads the file into a plain model and optimizer and
                                  hands their whole state to `set_state_dict`, which keeps
                                  this rank's shards (the whole model is in memory meanwhile)

Exactness: a resume at the same world size and parallelism is bit for bit (tests/e2e/
test_fsdp.py). Across world sizes the weights and optimizer state load exactly, but the next
steps differ in the last bits: the gradients are summed in another order, and rank r's
dropout masks come from the RNG state rank r saved (ranks that saved none start from the seed).
With `train.batch_size` x `grad_accum_steps` x processes kept equal, the windows are the same.

`consolidate` (`python -m llm_tiny consolidate`) turns a sharded checkpoint into one `.pt`
with the weights and optimizer state, in one process; `sample`, `eval`, `export` and `serve`
also read a sharded checkpoint directly (`checkpoint.load_checkpoint`).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from llm_tiny.distributed import SingleProcess, unwrap
from llm_tiny.errors import ArgumentParser, UserError, run_cli
from llm_tiny.model import TinyGPT
from llm_tiny.runtime import Runtime, gather_rng
from llm_tiny.train import checkpoint, dcp
from llm_tiny.train.optim import build_optimizer
from llm_tiny.train.rundir import is_sharded, sharded_name

MODEL, OPTIM = "model", "optim"  # the two trees of tensors in a sharded save


def _optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    return list(getattr(optimizer, "optimizers", [optimizer]))


def save(
    par: SingleProcess,
    path: Path,
    make: Callable[[dict, list], dict[str, Any]],
    model: nn.Module,
    optimizer: Any,
) -> None:
    """Write the checkpoint `make(weights, rng)` builds (on rank 0; `rng`: every rank's RNG
    states) to `path` (`.pt`), or sharded to its `.dcp` form when the model is. Every rank
    calls it."""
    rng = gather_rng(par.rt)
    if not par.sharded:
        weights = par.full_state_dict()
        par.on_main(lambda: checkpoint.save_checkpoint(make(weights, rng), path))
        par.on_main(shutil.rmtree, path.with_name(sharded_name(path.name)), ignore_errors=True)
        return
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = path.with_name(sharded_name(path.name))
    meta = make({}, rng) if par.is_main else {}  # the model stays {}: its tensors are shards
    where = [str(dcp.new_save_dir(root, meta["step"])) if par.is_main else None]
    dist.broadcast_object_list(where)  # rank 0 names the save; every rank writes into it
    target = Path(where[0])
    weights, optim = get_state_dict(unwrap(model), _optimizers(optimizer))
    dcp_save({MODEL: weights, OPTIM: optim["state"]}, checkpoint_id=target)
    if par.is_main:
        meta["optimizer"] = {"param_groups": optim["param_groups"]}
        checkpoint.save_checkpoint(meta, target / dcp.META_FILE)
        dcp.commit(target)
        path.unlink(missing_ok=True)
    dist.barrier()  # no rank goes on (and may be killed) before the save is complete


def restore(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: Any,
    scaler: torch.amp.GradScaler,
    sampler: Any,
    *,
    rt: Runtime,
    log: Callable[[str], None],
) -> checkpoint.TrainState:
    """`checkpoint.restore_training` for a checkpoint of either form into a plain, DDP or FSDP
    model (the table in the module docstring)."""
    from torch.distributed.tensor import DTensor

    fsdp = any(isinstance(p, DTensor) for p in model.parameters())
    if "shards" not in ckpt and not fsdp:
        return checkpoint.restore_training(ckpt, model, optimizer, scaler, sampler, rt=rt, log=log)
    fill = load_shards if "shards" in ckpt else load_whole
    return checkpoint.restore_training(
        ckpt, model, optimizer, scaler, sampler, rt=rt, log=log,
        load=lambda: fill(ckpt, model, _optimizers(optimizer)),
    )  # fmt: skip


def load_shards(ckpt: dict[str, Any], model: nn.Module, optimizers: list) -> None:
    """Fill `model` and `optimizers` from a sharded checkpoint: DCP reads into this rank's
    shards (FSDP) or into whole tensors, whatever the world size that saved it."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, optim = get_state_dict(model, optimizers)  # the templates, optimizer state too
    dcp.load_into({MODEL: weights, OPTIM: optim["state"]}, Path(ckpt["shards"]))
    state = {"state": optim["state"], "param_groups": ckpt["optimizer"]["param_groups"]}
    set_state_dict(model, optimizers, model_state_dict=weights, optim_state_dict=state)


def load_whole(ckpt: dict[str, Any], model: nn.Module, optimizers: list) -> None:
    """Fill a sharded `model` and `optimizers` from a `.pt` checkpoint: read into a plain model
    and optimizer, whose whole state each rank then cuts to its shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    cfg = checkpoint.checkpoint_config(ckpt)
    plain = TinyGPT(cfg.model)
    plain.load_state_dict(ckpt["model"])
    plain_opt = build_optimizer(plain, cfg.optim)
    plain_opt.load_state_dict(ckpt["optimizer"])
    weights, optim = get_state_dict(plain, _optimizers(plain_opt))
    options = StateDictOptions(full_state_dict=True)
    set_state_dict(
        model, optimizers, model_state_dict=weights, optim_state_dict=optim, options=options
    )


def main_model(par: SingleProcess, model: nn.Module) -> nn.Module | None:
    """A model rank 0 can run alone (to sample at the end): `model` itself, or when it is
    sharded a plain copy from the gathered weights (every rank calls it; None off rank 0)."""
    if not par.sharded:
        return model
    weights = par.full_state_dict()
    if not par.is_main:
        return None
    inner = unwrap(model)
    plain = TinyGPT(inner.config)
    plain.load_state_dict(weights)
    return plain.to(next(inner.parameters()).device)


# ----------------------------------------------------------------------------- consolidate


def consolidate(src: str | Path, dst: str | Path) -> Path:
    """One `.pt` checkpoint at `dst` with everything of the sharded checkpoint `src`: weights,
    optimizer state, and the rest; it resumes, samples and exports like any other."""
    src, dst = Path(src), Path(dst)
    if not is_sharded(src):
        raise UserError(f"{src}: not a sharded checkpoint (a directory with a LATEST file)")
    if dst.exists() and dst.is_dir():
        raise UserError(f"{dst}: is a directory; name the .pt file to write")
    ckpt = checkpoint.load_checkpoint(src, weights=False)
    cfg = checkpoint.checkpoint_config(ckpt, src)
    model = TinyGPT(cfg.model)
    optimizer = build_optimizer(model, cfg.optim)
    load_shards(ckpt, model, _optimizers(optimizer))
    whole = {k: v for k, v in ckpt.items() if k != "shards"}
    whole |= {"model": dict(model.state_dict()), "optimizer": optimizer.state_dict()}
    checkpoint.save_checkpoint(whole, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="llm_tiny consolidate",
        description="Write a sharded checkpoint (runtime.parallel: fsdp) as one .pt file, "
        "with its weights and optimizer state, e.g. out/run/last.dcp -> out/run/last.pt.",
    )
    p.add_argument("ckpt", metavar="SHARDED", help="a sharded checkpoint directory (NAME.dcp)")
    p.add_argument("--out", help="the .pt file to write (default: NAME.pt beside it)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        src = Path(args.ckpt)
        dst = Path(args.out) if args.out else src.with_suffix(".pt")
        print(f"wrote {consolidate(src, dst)}")
        return 0

    return run_cli(run, "llm_tiny consolidate")


if __name__ == "__main__":
    sys.exit(main())
