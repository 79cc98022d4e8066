"""Training: `python -m llm_tiny train CONFIG.yaml [--section.key=value ...] [--resume]`.

`train(cfg)` is the library entry point (the sweep and the tests call it in-process); `main`
is the command line around it. The path is one way: the data are prepared (tokenizer, splits),
the vocabulary size they determine goes into the model config, then `Trainer` builds the
model, optimizer and batch sources and runs `Trainer.optimizer_step` until the budget ends:

    lr = schedule(step)
    for each of grad_accum_steps micro-batches:        # gradients sync on the last only
        loss = model(x, y) / grad_accum_steps; backward
    clip the global gradient norm; skip the update if the loss (or norm) is not finite
    AdamW step

Steps count optimizer updates: a row logged at step s describes the state after s updates.
Validation (a fixed subset of the split, `train.eval_iters` batches) runs at step 0, every
`eval_interval` steps and at the end, when the whole split is scored too if the budget allows;
`last.pt` is written every `ckpt_interval` steps and at the end, `best.pt` whenever the
validation loss improves. `train.max_seconds` covers the loop, the end included (`budget`):
the schedule follows whichever of steps and time is further along (`schedule.schedule_step`).

A resumed run continues *exactly* (bit for bit on CPU): the checkpoint holds the model,
optimizer, GradScaler, every rank's RNG states and the step; batches are a pure function of
(seed, step, micro-batch); evaluation and sampling run inside `runtime.preserved_rng`.

Distributed (`torchrun --nproc_per_node=N -m llm_tiny train ...`; DDP or FSDP, `distributed`):
each rank trains on its own micro-batches (`llm_tiny.data`), gradients and the logged loss are
averaged once per step; rank 0 logs and writes files (FSDP: every rank its shards, `sharded`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_tiny.config import RunConfig, load_config, split_overrides
from llm_tiny.data import PreparedData, open_split
from llm_tiny.distributed import SingleProcess, parallel_for
from llm_tiny.errors import ArgumentParser, run_cli
from llm_tiny.eval.loss import evaluate_split
from llm_tiny.eval.monitor import TaskMonitor
from llm_tiny.model import add_lora, build_model, trainable_note
from llm_tiny.runtime import (
    Runtime,
    StopSignal,
    preserved_rng,
    seed_everything,
    setup_runtime,
    shutdown,
    try_compile,
)
from llm_tiny.train import checkpoint, sharded
from llm_tiny.train.budget import Reserve, final_eval_note
from llm_tiny.train.dynamics import measure, snapshot
from llm_tiny.train.metrics import RunLog, Throughput
from llm_tiny.train.optim import build_optimizer, clip_grad_norm, set_lr
from llm_tiny.train.profiling import StepProfiler
from llm_tiny.train.result import TrainingDiverged, TrainResult, summary
from llm_tiny.train.rundir import BEST, LAST, run_files, start_files
from llm_tiny.train.schedule import lr_for, schedule_step
from llm_tiny.train.start import start_run


class Trainer:
    """One training run on prepared data: `Trainer(cfg, rt, data, log).run()`. `cfg.model`
    has its vocabulary size; `ckpt` is the checkpoint to continue from, or None; `weights` a
    state dict to start from with a fresh optimizer (`train.init_from`), or None; `par` how
    the processes share the model (default: `distributed.parallel_for(rt)`)."""

    def __init__(
        self,
        cfg: RunConfig,
        rt: Runtime,
        data: PreparedData,
        log: RunLog,
        ckpt: dict[str, Any] | None = None,
        weights: dict[str, Any] | None = None,
        par: SingleProcess | None = None,
    ) -> None:
        t = cfg.train
        self.cfg, self.rt, self.data, self.log = cfg, rt, data, log
        self.par = par or parallel_for(rt, cfg.runtime.parallel, cfg.runtime.offload)
        self.out_dir = Path(t.out_dir)
        self.accum = t.grad_accum_steps
        self.first_micro = rt.rank * self.accum  # this rank's first global micro-batch
        self.tokens_per_step = t.batch_size * cfg.model.block_size * self.accum * rt.world_size
        self.train_src = open_split(
            data, "train", cfg, rt.device, micro_batches=self.accum * rt.world_size
        )
        self.val_src = open_split(data, "val", cfg, rt.device)
        sizes = [self.val_src.eval_targets(t.eval_batch_size, n) for n in (t.eval_iters, None)]
        self.reserve = Reserve(t.max_seconds, *sizes)  # an evaluation's targets, the split's
        self.tasks = TaskMonitor(cfg, data)  # train.eval_tasks

        seed_everything(t.seed)
        self.model = build_model(cfg.model).to(rt.device)  # same initial weights on every rank
        if weights is not None:  # train.init_from
            self.model.load_state_dict(weights)
        add_lora(self.model, cfg.lora)  # lora.rank > 0: those weights freeze, adapters train
        self.par.prepare(self.model)  # FSDP shards the weights here, before the optimizer
        seed_everything(t.seed + rt.rank)  # rank-specific dropout masks from here on
        self.optimizer = build_optimizer(self.model, cfg.optim, rt.device_type)
        self.scaler = torch.amp.GradScaler(rt.device_type, enabled=rt.use_scaler)
        self.state = checkpoint.TrainState()
        if ckpt is not None:
            parts = (self.model, self.optimizer, self.scaler, self.train_src)
            self.state = sharded.restore(ckpt, *parts, rt=rt, log=log)  # either form
        self.resumed = ckpt is not None
        self.skipped = self.bad_in_row = 0
        self.meter = Throughput()  # since the last log line
        self.t0: float | None = None  # when this process's loop started
        self.synced_elapsed = self.state.elapsed_s  # the ranks' mean, as of the last step
        self.synced_reserve = 0.0  # the same for the time kept for the end (`budget`)
        self.batch = self.train_src.get_batch(self.state.step, self.first_micro)

        compiled = try_compile(self.model, self.batch, rt, log) if t.compile else self.model
        self.runner: nn.Module = self.par.wrap(compiled)

    # --------------------------------------------------------------------- one step

    def optimizer_step(self, lr: float, stop: bool) -> tuple[float, float, bool, bool]:
        """One optimizer update at learning rate `lr` over this rank's micro-batches.

        `stop` is this rank's wish to stop after the step. Returns (loss, grad norm, finite,
        stop_all): loss and norm are averaged over ranks and `stop_all` is true when any rank
        wants to stop (the mean of the wishes is above 0), so every rank decides the same.
        """
        rt, A, step = self.rt, self.accum, self.state.step
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)  # here: `dynamics` reads the last step's
        loss_sum = torch.zeros((), device=rt.device)
        for m in range(A):
            x, y = self.batch
            last = m == A - 1
            with self.par.sync(last):  # gradients are exchanged on the last micro-batch only
                with rt.autocast():
                    # Label smoothing shapes the training objective only; evaluation (and so
                    # the validation loss and bits per byte) calls the model without it.
                    _, loss = self.runner(x, y, label_smoothing=self.cfg.optim.label_smoothing)
                # Fetch the next micro-batch on the CPU while the device computes this one.
                nxt = (step + 1, self.first_micro) if last else (step, self.first_micro + m + 1)
                self.batch = self.train_src.get_batch(*nxt)
                loss_sum += loss.detach().float()
                # The mean over A micro-batches: each contributes 1/A of the gradient.
                self.scaler.scale(loss / A).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
        norm = clip_grad_norm(self.model.parameters(), self.cfg.optim.grad_clip)
        # One small read from the device per step (plus one all-reduce with several ranks).
        # The elapsed time is averaged too: every rank then schedules the same learning rate.
        extra = torch.tensor([float(stop), self.elapsed(), self.reserve.seconds], device=rt.device)
        flags = self.par.mean(torch.cat([torch.stack([loss_sum / A, norm.float()]), extra]))
        loss_v, norm_v, stop_v, self.synced_elapsed, self.synced_reserve = flags.tolist()
        # With float16 the GradScaler owns inf gradients (it skips the update and lowers the
        # scale); only a non-finite loss is ours to handle.
        finite = math.isfinite(loss_v) and (self.scaler.is_enabled() or math.isfinite(norm_v))
        if finite:
            self.scaler.step(self.optimizer)  # a plain optimizer.step() when not scaling
        if self.scaler.is_enabled():
            self.scaler.update()
        return loss_v, norm_v, finite, stop_v > 0

    # --------------------------------------------------------------------- the loop

    def run(self) -> TrainResult:
        t, s = self.cfg.train, self.state
        last_val: dict[str, float] | None = None
        train_loss: float | None = None
        stopped = "max_iters"
        self.t0 = time.perf_counter()
        profiler = StepProfiler(t.profile_steps, self.out_dir, self.rt.device_type, self.log)
        with StopSignal(self.log) as stopper, self.log.running(t.max_iters, s.step), profiler:
            if not self.resumed and t.eval_at_start:
                last_val = self.evaluate_and_log(row={"tokens": 0})
            while s.step < t.max_iters:
                started = time.perf_counter()
                lr = lr_for(self.cfg.optim, t.max_iters, s.step, self.schedule_position())
                end_s = self.elapsed() + self.reserve.seconds  # when the run would end now
                over_time = t.max_seconds is not None and end_s > t.max_seconds
                watch = t.log_dynamics and (s.step + 1) % t.log_interval == 0
                before = snapshot(self.model) if watch else None
                loss, norm, finite, stop_all = self.optimizer_step(
                    lr, stopper.signum is not None or over_time
                )
                s.step += 1
                profiler.step()
                if before is not None:
                    self.log.dynamics(s.step, measure(self.model, before))
                s.tokens_seen += self.tokens_per_step
                self.meter.add(self.tokens_per_step, time.perf_counter() - started)
                self.reserve.update(self.meter.rate())
                if finite:
                    self.bad_in_row, train_loss = 0, loss
                else:
                    self.skip(loss, norm, lr)
                if stop_all:
                    stopped = "signal" if stopper.signum is not None else "max_seconds"
                done = s.step >= t.max_iters or stop_all
                row = self.log_step(loss, norm, lr, done)
                if s.step % t.eval_interval == 0 or (done and stopped != "signal"):
                    final = done and stopped != "signal"
                    last_val = self.evaluate_and_log({"tokens": s.tokens_seen, **row}, final)
                elif row:
                    self.log.row(s.step, **row, elapsed_s=self.elapsed())
                # During a run of non-finite losses the last good checkpoint stays.
                if self.bad_in_row == 0 and (s.step % t.ckpt_interval == 0 or done):
                    self.save(LAST)
                if done:
                    break
        val = last_val or {}
        whole = {k: val.get(f"full_{k}", val.get(k)) for k in ("loss", "ppl", "bpb")}
        return TrainResult(
            out_dir=self.out_dir, step=s.step, tokens=s.tokens_seen, train_loss=train_loss,
            val_loss=whole["loss"], val_ppl=whole["ppl"], val_bpb=whole["bpb"],
            best_val_loss=s.best_val_loss, elapsed_s=self.elapsed(),
            skipped_steps=self.skipped, stopped=stopped, signum=stopper.signum,
        )  # fmt: skip

    def elapsed(self) -> float:
        """Training wall time: earlier runs of a resumed run plus this one's loop so far."""
        running = time.perf_counter() - self.t0 if self.t0 is not None else 0.0
        return self.state.elapsed_s + running

    def schedule_position(self) -> int:
        """Where a time budget puts the schedule (the same on every rank)."""
        t = self.cfg.train
        budget = t.max_seconds and t.max_seconds - self.synced_reserve  # less the end's time
        return schedule_step(self.state.step, t.max_iters, self.synced_elapsed, budget)

    def skip(self, loss: float, norm: float, lr: float) -> None:
        """Count a skipped (non-finite) step; stop the run after `max_bad_steps` in a row."""
        self.bad_in_row += 1
        self.skipped += 1
        step = self.state.step
        self.log(f"step {step}: skipped non-finite loss ({self.bad_in_row} in a row)")
        if self.bad_in_row < self.cfg.train.max_bad_steps:
            return
        row = {"train_loss": loss, "lr": lr, "grad_norm": norm}
        self.log.row(step, tokens=self.state.tokens_seen, **row, elapsed_s=self.elapsed())
        raise TrainingDiverged.at(step, self.bad_in_row, self.out_dir / LAST)

    def log_step(self, loss: float, norm: float, lr: float, done: bool) -> dict[str, Any]:
        """Progress bar / log line; the metrics row when this step is logged (else {})."""
        tps = self.meter.rate()
        self.log.advance(f"loss {loss:.4f} lr {lr:.2e} {tps:,.0f} tok/s")
        step = self.state.step
        if step % self.cfg.train.log_interval != 0 and not done:
            return {}
        self.log.unless_bar(
            f"step {step}/{self.cfg.train.max_iters} | loss {loss:.4f} | lr {lr:.2e} | "
            f"grad norm {norm:.3f} | {tps:,.0f} tok/s"
            + self.rt.mfu_text(self.model.flops_per_token(), tps, self.cfg.train.peak_flops)
        )
        self.meter = Throughput()
        row = {"tokens": self.state.tokens_seen, "train_loss": loss, "lr": lr, "grad_norm": norm}
        return {**row, "tokens_per_s": tps}

    # --------------------------------------------------------------------- evaluation, files

    def evaluate_and_log(self, row: dict[str, Any], final: bool = False) -> dict[str, float]:
        """Evaluate on the validation subset (`budget`); at the end of the run also on the rest
        of the split, when the budget allows (decided alike on every rank)."""
        t, s = self.cfg.train, self.state
        wants_full = final and self.reserve.final_full(self.meter.rate())
        full = bool(self.par.mean(torch.tensor([float(wants_full)], device=self.rt.device)) > 0)
        started = time.perf_counter()
        with preserved_rng(self.rt.device):
            val = evaluate_split(
                self.par.eval_model, self.val_src, self.data.split("val")["scored_bytes"],
                batch_size=t.eval_batch_size, max_batches=t.eval_iters, full=full,
                autocast=self.rt.autocast, rank=self.rt.rank, world_size=self.rt.world_size,
            )  # fmt: skip
        scored = val.get("full_tokens", val["tokens"])
        self.reserve.measured_eval(scored, time.perf_counter() - started)
        improved = val["loss"] < s.best_val_loss
        if improved:
            s.best_val_loss = val["loss"]
            if s.step > 0:
                self.save(BEST)
        self.log(
            f"step {s.step}: val loss {val['loss']:.4f} | ppl {val['ppl']:.2f} | "
            f"bpb {val['bpb']:.4f}" + (" (best)" if improved and s.step > 0 else "")
        )
        if final and (note := final_eval_note(val, self.reserve, t.out_dir)):
            self.log(note)
        metrics = {f"val_{k}": val[k] for k in ("loss", "ppl", "bpb")}
        metrics |= {f"full_val_{k}": val.get(f"full_{k}") for k in ("loss", "bpb")}
        metrics |= self.par.on_main(self.tasks.run, self.model, s.step, self.log) or {}
        self.log.row(s.step, **row, **metrics, elapsed_s=self.elapsed())
        return val

    def save(self, name: str) -> None:
        """Write checkpoints. Every rank takes part: the RNG states are gathered to rank 0, and
        the weights too (it writes `.pt`), or every rank writes its shards (`train.sharded`)."""
        started = time.perf_counter()
        sharded.save(self.par, self.out_dir / name, self._checkpoint, self.model, self.optimizer)
        self.reserve.measured_save(time.perf_counter() - started)

    def _checkpoint(self, weights: dict, rng: list[dict[str, Any]]) -> dict[str, Any]:
        state = dataclasses.replace(self.state, elapsed_s=self.elapsed())
        return checkpoint.training_checkpoint(
            self.cfg, weights, self.optimizer, self.scaler, state,
            rng=rng, sampler=self.train_src.state_dict(), tokenizer=self.data.tokenizer,
            data_sha256=self.data.meta["input_sha256"],
        )  # fmt: skip


# ----------------------------------------------------------------------------- the run


def train(
    cfg: RunConfig, *, progress: bool | None = None, log: Callable[[str], None] | None = None
) -> TrainResult:
    """Train a model as configured; returns the final metrics. Raises UserError on bad input.

    `progress`: a tqdm bar (True), plain log lines (False) or decide by the terminal (None).
    `log`: where rank 0's lines go (default: print).
    """
    rt = setup_runtime(cfg.train)
    par = parallel_for(rt, cfg.runtime.parallel, cfg.runtime.offload)
    interactive = par.is_main and (sys.stderr.isatty() if progress is None else progress)
    out = RunLog(enabled=par.is_main, interactive=interactive, print_fn=log or print)
    try:
        start = start_run(cfg, rt, out)  # all checks before any file of the run is written
        cfg = start.cfg
        trainer = Trainer(cfg, rt, start.data, out, start.ckpt, start.weights, par)
        if (note := start.describe(trainer.state.step)) is not None:
            out(note)
        resumed_at = trainer.state.step if start.ckpt is not None else None
        par.on_main(start_files, cfg, out, resumed_at=resumed_at)
        processes = f", {rt.world_size} processes" if rt.distributed else ""
        where = f"{rt.device} {rt.dtype_name}{processes}"
        n, note = trainer.model.num_params() / 1e6, trainable_note(trainer.model)
        out(
            f"training {n:.2f}M parameters{note} on {where}; {trainer.tokens_per_step:,} tokens per step"
        )
        result = trainer.run()
        out(summary(result, cfg))
        if result.stopped != "signal":
            model = sharded.main_model(par, trainer.model)  # FSDP: gathered to rank 0
            par.on_main(after_training, cfg, model, start.data.tokenizer, rt, out)
        out("files: " + ", ".join(map(str, run_files(cfg.train.out_dir))))
        rt.barrier()  # leave the group together: one leaving while rank 0 plots hung the exit
        return result
    finally:
        shutdown(rt)


def after_training(cfg: RunConfig, model: nn.Module, tokenizer: Any, rt: Runtime, log) -> None:
    """Rank 0, when training ends normally: `loss.png`, then a sample if `train.sample_at_end`."""
    from llm_tiny.infer.sample import sample_text
    from llm_tiny.plots import plot_run

    plot_run(cfg.train.out_dir, log)
    if cfg.train.sample_at_end and cfg.sample.max_new_tokens > 0:
        with preserved_rng(rt.device), rt.autocast():
            log("sample:\n" + sample_text(model, tokenizer, cfg, rt.device, note=log))


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    p = ArgumentParser(
        prog="llm_tiny train",
        description="Train a GPT-style model. Any config value can be overridden with "
        "--section.key=value, e.g. --model.n_layer=2 --train.max_iters=100.",
    )
    p.add_argument("config", metavar="CONFIG", help="YAML run config, e.g. configs/tiny.yaml")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT_DIR/last.pt (train.resume=always)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start anew even if OUT_DIR holds a run's checkpoints (train.overwrite=true)",
    )
    args = p.parse_args(rest)
    flags = ["--train.resume=always"] * args.resume + ["--train.overwrite=true"] * args.overwrite

    def run() -> int:
        cfg = load_config(args.config, overrides + flags)
        result = train(cfg)
        if result.stopped == "signal" and result.signum is not None:
            return 128 + result.signum
        return 0

    return run_cli(run, "llm_tiny train")


if __name__ == "__main__":
    sys.exit(main())
