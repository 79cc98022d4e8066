"""Training: `python -m llm_tiny train CONFIG.yaml [--section.key=value ...] [--resume]`.

`train(cfg)` is the library entry point (the sweep and the tests call it in-process); `main`
is the command line around it. One optimizer step is:

    lr = schedule(step)
    for each of grad_accum_steps micro-batches:        # DDP: gradients sync on the last only
        loss = model(x, y) / grad_accum_steps; backward
    clip the global gradient norm; skip the update if the loss (or norm) is not finite
    AdamW step

Steps are counted in optimizer updates: a row logged at step s describes the state after s
updates (its `train_loss` is the loss of update s's batch). Validation runs at step 0, every
`eval_interval` steps and at the end; `last.pt` is written every `ckpt_interval` steps and at
the end, `best.pt` whenever the validation loss improves.

What makes a resumed run continue *exactly* (bit for bit on CPU): the checkpoint holds the
model, AdamW and GradScaler states, every RNG state of every rank, and the step; batches are a
pure function of (seed, step, micro-batch), and evaluation and sampling run inside
`runtime.preserved_rng` so they never shift the training random streams.

Distributed: launched by `torchrun --nproc_per_node=N -m llm_tiny train ...`, each process
trains on its own micro-batches (global micro index `rank * grad_accum_steps + m`, see
`llm_tiny.data`), the gradients are averaged across processes once per step, and only rank 0
logs and writes files. The logged loss is averaged over ranks too, so N processes with
accumulation A log the same curve as 1 process with accumulation N x A.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from llm_tiny.checkpoint import (
    FORMAT,
    VERSION,
    check_resume_compatible,
    load_checkpoint,
    save_checkpoint,
)
from llm_tiny.config import RunConfig, config_to_dict, load_config, override, save_config
from llm_tiny.data import PreparedData, open_split, prepare_data
from llm_tiny.errors import ArgumentParser, UserError, run_cli
from llm_tiny.evaluate import evaluate_split
from llm_tiny.metrics import MetricsLog, tensorboard_available
from llm_tiny.optim import build_optimizer, clip_grad_norm, set_lr
from llm_tiny.runtime import (
    Runtime,
    capture_rng,
    preserved_rng,
    restore_rng,
    seed_everything,
    setup_runtime,
    shutdown,
)
from llm_tiny.schedule import lr_for


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    out_dir: Path
    step: int
    tokens: int
    train_loss: float | None
    val_loss: float | None
    val_ppl: float | None
    val_bpb: float | None
    best_val_loss: float
    elapsed_s: float
    skipped_steps: int
    stopped: str  # "max_iters" | "max_seconds" | "signal"
    signum: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


# ----------------------------------------------------------------------------- helpers


def resolve_vocab(cfg: RunConfig, tokenizer: Any) -> RunConfig:
    """Fill `model.vocab_size` from the tokenizer, or check that the given one is big enough."""
    n = tokenizer.vocab_size
    if cfg.model.vocab_size is None:
        return override(cfg, **{"model.vocab_size": n})
    if cfg.model.vocab_size < n:
        raise UserError(
            f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's "
            f"vocabulary ({n}, {cfg.data.tokenizer}); leave model.vocab_size null to use it"
        )
    return cfg


def check_out_dir(path: str | Path) -> None:
    """Fail early if `train.out_dir` cannot be a writable directory (creating nothing)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"train.out_dir: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"train.out_dir: cannot write to {existing} (permission denied)")


def prepare_out_dir(path: str | Path) -> Path:
    """Create `train.out_dir` if needed and check that files can be written in it."""
    path = Path(path)
    check_out_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"train.out_dir: cannot write to {path} ({e.strerror or e})") from None
    return path


def resume_path(cfg: RunConfig, out_dir: Path) -> Path | None:
    """The checkpoint to continue from according to `train.resume`, or None for a new run."""
    last = out_dir / "last.pt"
    mode = cfg.train.resume
    if mode == "never":
        return None
    if mode == "auto":
        return last if last.exists() else None
    if not last.exists():
        raise UserError(f"cannot resume: {last} does not exist (train.resume is 'always')")
    return last


def try_compile(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], rt: Runtime, log):
    """`torch.compile(model)`, checked with one forward and backward pass on `batch`; the plain
    model (and a warning) if compilation fails. Gradients are cleared afterwards."""
    try:
        compiled = torch.compile(model)
        with preserved_rng(rt.device):
            with rt.autocast():
                _, loss = compiled(*batch)
            loss.backward()
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        log(f"warning: torch.compile failed, training without it: {first}")
        compiled = model
    model.zero_grad(set_to_none=True)
    return compiled


class _StopSignal:
    """SIGINT / SIGTERM set a flag; the loop finishes the step, saves last.pt and returns.
    A second Ctrl-C aborts at once."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.signum: int | None = None
        self._log = log
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self._log(f"{signal.Signals(signum).name}: stopping after this step and saving last.pt")

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


# ----------------------------------------------------------------------------- the loop


class Trainer:
    """One training run. `Trainer(cfg).run()` is what `train(cfg)` does."""

    def __init__(
        self,
        cfg: RunConfig,
        rt: Runtime,
        *,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.rt = rt
        self.interactive = rt.is_main and (sys.stderr.isatty() if progress is None else progress)
        self._print = log or print
        self._bar = None
        self._t0: float | None = None  # set when the loop starts
        self.out_dir = Path(cfg.train.out_dir)
        if rt.is_main:
            check_out_dir(self.out_dir)
            if cfg.train.tensorboard and not tensorboard_available():
                # The CSV is the source of truth; TensorBoard is a convenience.
                self.log(
                    "note: train.tensorboard is on but tensorboard is not installed "
                    "(pip install tensorboard); writing metrics.csv only"
                )

        # Everything that can fail on bad input happens before any file of the run is written.
        self.resume_from = resume_path(cfg, self.out_dir)
        ckpt = load_checkpoint(self.resume_from) if self.resume_from else None
        self.data = self._prepare_data(cfg)
        cfg = resolve_vocab(cfg, self.data.tokenizer)
        if ckpt is not None:
            check_resume_compatible(ckpt, cfg, self.data.tokenizer.fingerprint, self.resume_from)
        self.cfg = cfg
        t = cfg.train
        self.accum = t.grad_accum_steps
        self.tokens_per_step = t.batch_size * cfg.model.block_size * self.accum * rt.world_size
        self.train_src = open_split(
            self.data,
            "train",
            cfg.model.block_size,
            t.batch_size,
            t.seed,
            rt.device,
            micro_batches=self.accum * rt.world_size,
        )
        self.val_src = open_split(
            self.data, "val", cfg.model.block_size, t.batch_size, t.seed, rt.device
        )
        self.val_bytes = self.data.split("val")["scored_bytes"]
        self._build(ckpt)

    # --------------------------------------------------------------------- setup

    def log(self, message: str) -> None:
        if not self.rt.is_main:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            self._print(message)

    def _prepare_data(self, cfg: RunConfig) -> PreparedData:
        # Rank 0 tokenizes; the others wait and then find the prepared files in the cache.
        if self.rt.is_main:
            data = prepare_data(cfg.data, progress=self.interactive, log=self.log)
        self.rt.barrier()
        if not self.rt.is_main:
            data = prepare_data(cfg.data, progress=False, log=lambda _: None)
        return data

    def _build(self, ckpt: dict[str, Any] | None) -> None:
        from llm_tiny.model import TinyGPT

        cfg, rt = self.cfg, self.rt
        seed_everything(cfg.train.seed)
        self.model = TinyGPT(cfg.model).to(rt.device)  # same initial weights on every rank
        seed_everything(cfg.train.seed + rt.rank)  # rank-specific dropout masks from here on
        self.optimizer = build_optimizer(self.model, cfg.optim, rt.device_type)
        self.scaler = torch.amp.GradScaler(rt.device_type, enabled=rt.use_scaler)
        self.step = 0
        self.tokens = 0
        self.best_val = math.inf
        self.elapsed_before = 0.0
        if ckpt is not None:
            self._restore(ckpt)

        if rt.is_main:
            prepare_out_dir(self.out_dir)
            save_config(cfg, self.out_dir / "config.yaml")
            if ckpt is None:
                stale = [
                    p.name
                    for p in (self.out_dir / "last.pt", self.out_dir / "best.pt")
                    if p.exists()
                ]
                if stale:
                    self.log(
                        f"note: starting a new run in {self.out_dir}; its old {' and '.join(stale)} "
                        "will be replaced (pass --resume to continue it instead)"
                    )
                    (self.out_dir / "best.pt").unlink(missing_ok=True)
            self.metrics = MetricsLog(
                self.out_dir,
                resume_step=self.step if ckpt is not None else None,
                tensorboard=cfg.train.tensorboard,
            )

        self.runner: nn.Module = self.model
        if cfg.train.compile:
            first = self.train_src.get_batch(self.step, 0)
            self.runner = try_compile(self.model, first, rt, self.log)
        self.eval_model = self.runner  # evaluation skips DDP: no gradients to synchronise
        if rt.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [rt.device.index] if rt.device_type == "cuda" else None
            self.runner = DDP(self.runner, device_ids=ids)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        rt = self.rt
        self.model.load_state_dict(ckpt["model"])
        # The config is authoritative for hyperparameters: keep the fresh groups' values.
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group, values in zip(self.optimizer.param_groups, fresh):
            group.update(values)
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.tokens = int(ckpt.get("tokens_seen", 0))
        self.best_val = float(ckpt.get("best_val_loss", math.inf))
        self.elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        self.train_src.load_state_dict(ckpt["sampler"])
        states = ckpt.get("rng") or []
        if rt.rank < len(states):
            restore_rng(states[rt.rank], rt.device)
        elif rt.is_main:
            self.log("note: the checkpoint has no RNG state for every rank; others reseeded")
        self.log(f"resuming from {self.resume_from} at step {self.step}")

    # --------------------------------------------------------------------- checkpoints

    def _checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict (all ranks take part: RNG states are gathered to rank 0)."""
        rng = capture_rng(self.rt.device)
        if self.rt.distributed:
            states: list[Any] = [None] * self.rt.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        from llm_tiny.model import clean_state_dict

        return {
            "format": FORMAT,
            "version": VERSION,
            "config": config_to_dict(self.cfg),
            "model": clean_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "step": self.step,
            "tokens_seen": self.tokens,
            "best_val_loss": self.best_val,
            "elapsed_s": self.elapsed(),
            "rng": states,
            "sampler": self.train_src.state_dict(),
            "tokenizer": self.data.tokenizer.to_json(),
            "tokenizer_fingerprint": self.data.tokenizer.fingerprint,
        }

    def save(self, *names: str) -> None:
        ckpt = self._checkpoint()
        if self.rt.is_main:
            for name in names:
                save_checkpoint(ckpt, self.out_dir / name)

    # --------------------------------------------------------------------- evaluation

    def evaluate(self) -> dict[str, float]:
        t = self.cfg.train
        with preserved_rng(self.rt.device):
            return evaluate_split(
                self.eval_model,
                self.val_src,
                self.val_bytes,
                batch_size=t.eval_batch_size,
                max_batches=t.eval_iters,
                autocast=self.rt.autocast,
                rank=self.rt.rank,
                world_size=self.rt.world_size,
            )

    def elapsed(self) -> float:
        """Training wall time: earlier runs of a resumed run plus this one's loop so far."""
        running = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return self.elapsed_before + running

    # --------------------------------------------------------------------- one step

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], lr: float, stop: bool):
        """One optimizer update on `batch` (this rank's first micro-batch) at learning rate `lr`.

        `stop` is this rank's wish to stop after the step. Returns (loss, grad norm, finite,
        stop_all, next batch): loss and norm are averaged over ranks and `stop_all` is true when
        any rank wants to stop, so every rank takes the same decisions.
        """
        rt, src, A = self.rt, self.train_src, self.accum
        base = rt.rank * A
        set_lr(self.optimizer, lr)
        loss_sum = torch.zeros((), device=rt.device)
        for m in range(A):
            x, y = batch
            last_micro = m == A - 1
            # DDP: skip the gradient all-reduce on all but the last micro-batch. NOTE: `no_sync`
            # must cover the forward pass too; that is where DDP decides.
            no_sync = rt.distributed and not last_micro
            with self.runner.no_sync() if no_sync else contextlib.nullcontext():
                with rt.autocast():
                    _, loss = self.runner(x, y)
                # Prepare the next micro-batch on the CPU while the device computes this one.
                nxt = (self.step, base + m + 1) if not last_micro else (self.step + 1, base)
                batch = src.get_batch(*nxt)
                loss_sum += loss.detach().float()
                # The mean over A micro-batches: each contributes 1/A of the gradient.
                self.scaler.scale(loss / A).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
        norm = clip_grad_norm(self.model.parameters(), self.cfg.optim.grad_clip)
        # One small read from the device per step (plus one all-reduce with several ranks).
        flags = torch.stack(
            [loss_sum / A, norm.float(), torch.tensor(float(stop), device=rt.device)]
        )
        if rt.distributed:
            dist.all_reduce(flags)
            flags[:2] /= rt.world_size
        loss_v, norm_v, stop_v = flags.tolist()
        # With float16 the GradScaler owns inf gradients (it skips the update and lowers the
        # scale); only a non-finite loss is ours to handle.
        finite = math.isfinite(loss_v) and (self.scaler.is_enabled() or math.isfinite(norm_v))
        if finite:
            self.scaler.step(self.optimizer)  # a plain optimizer.step() when not scaling
        if self.scaler.is_enabled():
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_v, norm_v, finite, stop_v > 0, batch

    # --------------------------------------------------------------------- run

    def run(self) -> TrainResult:
        cfg, rt, t = self.cfg, self.rt, self.cfg.train
        where = f"{rt.device} {rt.dtype_name}" + (
            f", {rt.world_size} processes" if rt.distributed else ""
        )
        self.log(
            f"training {self.model.num_params() / 1e6:.2f}M parameters on {where}; "
            f"{self.tokens_per_step:,} tokens per step"
        )
        last_val: dict[str, float] | None = None
        train_loss: float | None = None
        self.bad_in_row = self.skipped = 0
        stopped = "max_iters"
        self._meter = [0, 0.0]  # tokens and seconds of training since the last log line
        self._t0 = time.perf_counter()
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=t.max_iters, initial=self.step, unit="step", dynamic_ncols=True)
        stopper = _StopSignal(self.log)
        try:
            with stopper:
                if self.resume_from is None and self.step == 0 and t.eval_at_start:
                    last_val = self._eval_and_log(0, row={"tokens": 0})
                batch = self.train_src.get_batch(self.step, rt.rank * self.accum)
                while self.step < t.max_iters:
                    started = time.perf_counter()
                    lr = lr_for(cfg, self.step)
                    over_time = t.max_seconds is not None and started - self._t0 > t.max_seconds
                    wants_stop = stopper.signum is not None or over_time
                    loss, norm, finite, stop_all, batch = self.train_step(batch, lr, wants_stop)
                    self.step += 1
                    self.tokens += self.tokens_per_step
                    self._meter[0] += self.tokens_per_step
                    self._meter[1] += time.perf_counter() - started
                    if finite:
                        self.bad_in_row = 0
                        train_loss = loss
                    else:
                        self._skip(loss, norm, lr)
                    if stop_all:
                        stopped = "signal" if stopper.signum is not None else "max_seconds"
                    done = self.step >= t.max_iters or stop_all
                    row = self._log_step(loss, norm, lr, done)
                    if self.step % t.eval_interval == 0 or (done and stopped != "signal"):
                        last_val = self._eval_and_log(self.step, row={"tokens": self.tokens, **row})
                    elif row and rt.is_main:
                        self.metrics.write(self.step, **row, elapsed_s=self.elapsed())
                    # During a run of non-finite losses the last good checkpoint stays.
                    if self.bad_in_row == 0 and (self.step % t.ckpt_interval == 0 or done):
                        self.save("last.pt")
                    if done:
                        break
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if rt.is_main:
                self.metrics.close()

        result = TrainResult(
            out_dir=self.out_dir,
            step=self.step,
            tokens=self.tokens,
            train_loss=train_loss,
            val_loss=last_val["loss"] if last_val else None,
            val_ppl=last_val["ppl"] if last_val else None,
            val_bpb=last_val["bpb"] if last_val else None,
            best_val_loss=self.best_val,
            elapsed_s=self.elapsed(),
            skipped_steps=self.skipped,
            stopped=stopped,
            signum=stopper.signum,
        )
        self._summary(result)
        return result

    def _skip(self, loss: float, norm: float, lr: float) -> None:
        """Count a skipped (non-finite) step; stop the run after `max_bad_steps` in a row."""
        self.bad_in_row += 1
        self.skipped += 1
        self.log(f"step {self.step}: skipped non-finite loss ({self.bad_in_row} in a row)")
        if self.bad_in_row < self.cfg.train.max_bad_steps:
            return
        if self.rt.is_main:
            self.metrics.write(
                self.step,
                tokens=self.tokens,
                train_loss=loss,
                lr=lr,
                grad_norm=norm,
                elapsed_s=self.elapsed(),
            )
        raise TrainingDiverged(self._diverged_message(self.bad_in_row))

    def _log_step(self, loss: float, norm: float, lr: float, done: bool) -> dict[str, Any]:
        """Progress bar / log line; the metrics row when this step is logged (else {})."""
        tokens, seconds = self._meter
        tps = tokens / max(seconds, 1e-9)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(
                f"loss {loss:.4f} lr {lr:.2e} {tps:,.0f} tok/s", refresh=False
            )
        if self.step % self.cfg.train.log_interval != 0 and not done:
            return {}
        if self._bar is None:
            self.log(
                f"step {self.step}/{self.cfg.train.max_iters} | loss {loss:.4f} | lr {lr:.2e} | "
                f"grad norm {norm:.3f} | {tps:,.0f} tok/s" + self._mfu(tps)
            )
        self._meter = [0, 0.0]
        return {
            "tokens": self.tokens,
            "train_loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "tokens_per_s": tps,
        }

    def _eval_and_log(self, step: int, row: dict[str, Any]) -> dict[str, float]:
        val = self.evaluate()
        improved = val["loss"] < self.best_val
        if improved:
            self.best_val = val["loss"]
            if step > 0:
                self.save("best.pt")
        self.log(
            f"step {step}: val loss {val['loss']:.4f} | ppl {val['ppl']:.2f} | "
            f"bpb {val['bpb']:.4f}" + (" (best)" if improved and step > 0 else "")
        )
        if self.rt.is_main:
            self.metrics.write(
                step,
                **row,
                val_loss=val["loss"],
                val_ppl=val["ppl"],
                val_bpb=val["bpb"],
                elapsed_s=self.elapsed(),
            )
        return val

    def _mfu(self, tokens_per_s: float) -> str:
        if self.rt.device_type != "cuda":
            return ""
        mfu = self.model.estimate_mfu(
            tokens_per_s / self.rt.world_size,
            torch.cuda.get_device_name(self.rt.device),
            peak_flops=self.cfg.train.peak_flops,
        )
        return "" if mfu is None else f" | mfu {100 * mfu:.1f}%"

    def _diverged_message(self, n: int) -> str:
        last = self.out_dir / "last.pt"
        keep = (
            f"the last good checkpoint {last} is kept"
            if last.exists()
            else "no checkpoint was written"
        )
        return (
            f"stopped after {n} non-finite losses in a row at step {self.step} ({keep}); "
            "lower optim.lr, keep optim.grad_clip on, or use train.dtype bfloat16/float32"
        )

    def _summary(self, r: TrainResult) -> None:
        why = {"max_iters": "done", "max_seconds": "time budget reached", "signal": "interrupted"}
        self.log(
            f"{why[r.stopped]}: step {r.step} in {r.elapsed_s:.1f}s | val loss {_fmt(r.val_loss)} | "
            f"ppl {_fmt(r.val_ppl, '.2f')} | bpb {_fmt(r.val_bpb)} | best val loss "
            f"{_fmt(r.best_val_loss if math.isfinite(r.best_val_loss) else None)}"
            + (f" | {r.skipped_steps} steps skipped" if r.skipped_steps else "")
        )
        if r.stopped != "signal":
            _after_training(self.cfg, self.model, self.data.tokenizer, self.rt, self.log)
        files = ", ".join(
            str(self.out_dir / n)
            for n in ("best.pt", "last.pt", "metrics.csv", "loss.png", "config.yaml")
            if (self.out_dir / n).exists()
        )
        self.log(f"files: {files}")


def _after_training(
    cfg: RunConfig, model: nn.Module, tokenizer: Any, rt: Runtime, log: Callable[[str], None]
) -> None:
    """Hooks run on rank 0 when training ends normally: `loss.png` from the metrics, then a
    short sample if `train.sample_at_end`."""
    if not rt.is_main:
        return
    from llm_tiny.plots import plot_runs

    plot_runs([cfg.train.out_dir], Path(cfg.train.out_dir) / "loss.png")
    if not cfg.train.sample_at_end or cfg.sample.max_new_tokens == 0:
        return
    from llm_tiny.sampling import generate

    s = cfg.sample
    ids = tokenizer.encode(s.prompt)[-cfg.model.block_size :] or [0]
    idx = torch.tensor([ids], dtype=torch.long, device=rt.device)
    generator = torch.Generator(device=rt.device).manual_seed(s.seed)
    with preserved_rng(rt.device), rt.autocast():
        out = generate(
            model, idx, s.max_new_tokens, s.temperature, s.top_k, s.top_p, generator=generator
        )
    log("sample:\n" + tokenizer.decode(out[0].tolist()))


def train(
    cfg: RunConfig, *, progress: bool | None = None, log: Callable[[str], None] | None = None
) -> TrainResult:
    """Train a model as configured; returns the final metrics. Raises UserError on bad input.

    `progress`: a tqdm bar (True), plain log lines (False) or decide by the terminal (None).
    `log`: where rank 0's lines go (default: print).
    """
    rt = setup_runtime(cfg.train)
    try:
        return Trainer(cfg, rt, progress=progress, log=log).run()
    finally:
        shutdown(rt)


# ----------------------------------------------------------------------------- command line


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="llm_tiny train",
        description="Train a GPT-style model. Any config value can be overridden with "
        "--section.key=value, e.g. --model.n_layer=2 --train.max_iters=100.",
    )
    p.add_argument("config", metavar="CONFIG", help="YAML run config, e.g. configs/tiny.yaml")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT_DIR/last.pt (train.resume=always)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)

    def run() -> int:
        cfg = load_config(args.config, overrides)
        if args.resume:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume="always"))
        result = train(cfg)
        if result.stopped == "signal" and result.signum is not None:
            return 128 + result.signum
        return 0

    return run_cli(run, "llm_tiny train")


if __name__ == "__main__":
    sys.exit(main())
