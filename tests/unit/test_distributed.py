"""The parallelism seam (`llm_tiny.distributed`): what the training loop asks of it, checked
against the bare model. The 2-process run that must equal accumulation is tests/test_ddp.py."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist
from torch import nn

from llm_tiny.config import ModelConfig
from llm_tiny.distributed import (
    DataParallel,
    FullyShardedParallel,
    SingleProcess,
    check_shardable,
    parallel_for,
    strip_wrapper_prefixes,
    unwrap,
)
from llm_tiny.errors import UserError
from llm_tiny.model import TinyGPT
from llm_tiny.runtime import Runtime
from llm_tiny.train.optim import clip_grad_norm

CPU = Runtime(device=torch.device("cpu"), dtype=torch.float32)


def tiny_model(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 32, (2, 8), generator=g),) * 2 for _ in range(n)]


def accumulated_grads(runner: nn.Module, par: SingleProcess, model: TinyGPT) -> dict:
    """The gradients of 3 micro-batches accumulated as `Trainer.optimizer_step` does."""
    data = batches(3)
    for m, (x, y) in enumerate(data):
        with par.sync(last=m == len(data) - 1):
            _, loss = runner(x, y)
            (loss / len(data)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_one_process_is_the_identity():
    model = tiny_model()
    par = parallel_for(CPU)
    assert type(par) is SingleProcess and par.is_main
    assert par.wrap(model) is model and par.eval_model is model
    t = torch.tensor([1.5, 2.0])
    assert par.mean(t) is t and t.tolist() == [1.5, 2.0]
    assert isinstance(par.sync(last=False), contextlib.nullcontext)
    assert par.full_state_dict().keys() == model.state_dict().keys()
    assert par.on_main(lambda a, b: a + b, 2, b=3) == 5
    assert SingleProcess(Runtime(CPU.device, CPU.dtype, rank=1, world_size=2)).on_main(int) is None


def test_unwrap_and_prefixes_know_compile_and_ddp_wrappers():
    model = tiny_model()

    class Wrapper(nn.Module):  # DDP and DataParallel keep the wrapped module as `.module`
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    compiled = torch.compile(model)  # compiled lazily: nothing runs here
    assert unwrap(Wrapper(compiled)) is model
    assert unwrap(model) is model
    prefixed = Wrapper(compiled).state_dict()
    assert all(k.startswith("module._orig_mod.") for k in prefixed)
    assert list(strip_wrapper_prefixes(prefixed)) == list(model.state_dict())


@pytest.fixture
def one_rank_group(tmp_path):
    """A real gloo process group of one process, so that DDP itself runs in this test."""
    if not dist.is_available():
        pytest.skip("needs torch.distributed")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_runs_accumulation_like_the_bare_model(one_rank_group):
    reference = tiny_model()
    want = accumulated_grads(reference, SingleProcess(CPU), reference)

    model = tiny_model()
    par = DataParallel(CPU)
    runner = par.wrap(model)
    assert runner is not model and par.eval_model is model  # evaluation skips DDP
    got = accumulated_grads(runner, par, model)
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=0, msg=name)
    # The state dict a checkpoint gets is the bare model's, with no `module.` prefix.
    assert par.full_state_dict().keys() == reference.state_dict().keys()
    assert par.mean(torch.tensor([4.0, 2.0])).tolist() == [4.0, 2.0]  # one rank: its own


def test_fsdp_shards_in_place_and_accumulates_like_the_bare_model(one_rank_group):
    from torch.distributed.tensor import DTensor

    reference = tiny_model()
    want = accumulated_grads(reference, SingleProcess(CPU), reference)
    model = tiny_model()
    par = FullyShardedParallel(CPU)
    assert par.prepare(model) is model and par.sharded
    assert all(isinstance(p, DTensor) for p in model.parameters())  # shards, before any optimizer
    assert par.wrap(model) is model and par.eval_model is model  # evaluation runs the shards
    got = accumulated_grads(model, par, model)
    for name, grad in want.items():
        torch.testing.assert_close(got[name].full_tensor(), grad, rtol=1e-6, atol=1e-7, msg=name)
    # The gradient norm of sharded gradients is the whole model's, as a plain tensor.
    norm = clip_grad_norm(model.parameters(), 0.0)
    assert type(norm) is torch.Tensor
    torch.testing.assert_close(norm, clip_grad_norm(reference.parameters(), 0.0))
    full = par.full_state_dict()
    assert full.keys() == reference.state_dict().keys()
    assert all(type(v) is torch.Tensor for v in full.values())


def test_fsdp_refuses_one_process_and_weights_it_cannot_shard():
    with pytest.raises(UserError, match=r"fsdp shards the model over several processes; launch"):
        parallel_for(CPU, "fsdp")
    two = Runtime(CPU.device, CPU.dtype, rank=0, world_size=2)
    assert type(parallel_for(two, "fsdp")) is FullyShardedParallel
    assert type(parallel_for(two, "ddp")) is DataParallel
    with pytest.raises(UserError, match=r"runtime.offload moves the shards from a GPU"):
        parallel_for(two, "fsdp", offload=True)
    narrow = TinyGPT(ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=1, n_embd=2))
    check_shardable(narrow, 2)
    with pytest.raises(UserError, match=r"cannot shard \S+ \(2 rows\) over 3 processes; use"):
        check_shardable(narrow, 3)
