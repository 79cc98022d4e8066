"""RL on a checkable task: `python -m llm_tiny rl CONFIG.yaml [--section.key=value ...] [--resume]`.

Starts from a trained run (`train.init_from`, usually a supervised one that answers the task
partly right) and improves it with rewards instead of labels. One step (`RLTrainer.rl_step`):

    draw rl.prompts_per_step prompts of rl.prompts          (a pure function of seed and step)
    sample rl.k completions of each with the engine          (`infer.engine.run`, temperature 1)
    reward each (`rewards.reward`); advantages per group     (`losses.group_advantages`)
    rl.updates_per_batch times: loss = clipped policy gradient + kl_coef x KL to the start
                                (`losses.policy_loss`); clip the gradient norm; optimizer step

`train.eval_interval` steps apart (and at the start and the end) the held-out prompts
(`rl.eval_prompts`, the first `rl.eval_n`) are answered greedily (exact match, what `tasks
eval` reports) and sampled k times (mean reward, pass@1, pass@k). Metrics go to `metrics.csv`
(`COLUMNS`) and `rl.png`; `last.pt` every `train.ckpt_interval` steps and at the end, `best.pt`
whenever the held-out greedy accuracy improves. The checkpoints are ordinary training
checkpoints: `sample`, `tasks eval`, `serve` and `export` read them as they read any run.

Exact resume: sampling draws from a generator seeded by (seed, step), prompts are drawn by
(seed, step), the optimizer and RNG states travel in `last.pt`, evaluation runs inside
`runtime.preserved_rng`; so a resumed run repeats an uninterrupted one bit for bit on CPU.
`train.max_seconds` bounds the loop as in training (the schedule follows the clock, time is
kept back for the final evaluation and save: `train.budget.Reserve`, counted in sampled rows).

Every forward pass runs in eval mode (dropout off): the log-probabilities the update sees are
those of the policy that sampled, so the first update's ratio is exactly 1.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llm_tiny.config import RunConfig, load_config, split_overrides
from llm_tiny.errors import ArgumentParser, UserError, run_cli
from llm_tiny.infer import engine
from llm_tiny.infer.params import SamplingParams
from llm_tiny.model import TinyGPT
from llm_tiny.rl import losses
from llm_tiny.rl.curves import PLOT, plot_rl
from llm_tiny.rl.rewards import Problem, correct, file_sha256, load_problems, reward, well_formed
from llm_tiny.runtime import (
    Runtime,
    StopSignal,
    gather_rng,
    preserved_rng,
    seed_everything,
    setup_runtime,
    shutdown,
)
from llm_tiny.train import checkpoint
from llm_tiny.train.budget import Reserve
from llm_tiny.train.metrics import RunLog, Throughput
from llm_tiny.train.optim import build_optimizer, clip_grad_norm, set_lr
from llm_tiny.train.result import TrainingDiverged
from llm_tiny.train.rundir import BEST, LAST, resume_path, run_files, start_files
from llm_tiny.train.schedule import lr_for, schedule_step
from tok.bpe import Tokenizer

COLUMNS = (
    "step",
    "samples",  # completions sampled so far
    "reward",  # mean reward of the step's completions
    "correct",  # their share of exact answers
    "well_formed",  # their share of well-formed answers (`rewards.well_formed`)
    "response_len",  # mean completion length in tokens (the stop token included)
    "entropy",  # mean next-token entropy over the completions' tokens (nats)
    "kl",  # mean per-token KL estimate to the starting model (`losses.kl_k3`)
    "loss",
    "clip_frac",  # share of tokens the ratio clip held back (0 with one update per batch)
    "lr",
    "grad_norm",
    "samples_per_s",
    "eval_greedy",  # held-out exact match, greedy decoding (as `tasks eval`)
    "eval_reward",  # held-out mean reward of k samples per prompt
    "eval_pass1",  # held-out pass@1 of those samples (their share of exact answers)
    "eval_passk",  # held-out pass@k: a prompt counts if any of its k samples is exact
    "elapsed_s",
)
EVAL_SEED = 1_000_003  # the held-out samples' generator: the same draws at every evaluation


class PromptDraw:
    """The prompts of each step: `rl.prompts_per_step` distinct problems drawn by
    `random.Random(f"{seed}:{step}")` (with replacement only when the file has fewer). Its
    state is the prompt file's identity: a resumed run refuses other prompts."""

    def __init__(self, problems: list[Problem], seed: int, per_step: int, sha256: str) -> None:
        self.problems, self.seed, self.per_step, self.sha256 = problems, seed, per_step, sha256

    def at(self, step: int) -> list[Problem]:
        rng = random.Random(f"{self.seed}:{step}")
        n = len(self.problems)
        picks = (
            rng.sample(range(n), self.per_step)
            if self.per_step <= n
            else rng.choices(range(n), k=self.per_step)
        )
        return [self.problems[i] for i in picks]

    def state_dict(self) -> dict[str, Any]:
        return {"prompts_sha256": self.sha256}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("prompts_sha256") != self.sha256:
            raise UserError(
                "cannot resume: rl.prompts holds other prompts than the run was trained on"
            )


def pack(
    prompts: list[list[int]], completions: list[list[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs x, targets y and mask (B, T) for prompt + completion rows, padded on the right:
    mask is 1 where y is a completion token (the only tokens the loss sees).

    prompts [[5, 6]], completions [[7, 8]] -> x [[5, 6, 7]], y [[6, 7, 8]], mask [[0, 1, 1]].
    """
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    T = max(len(r) for r in rows) - 1
    x = torch.zeros(len(rows), T, dtype=torch.long)
    y = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T)
    for i, (row, p) in enumerate(zip(rows, prompts)):
        x[i, : len(row) - 1] = torch.tensor(row[:-1])
        y[i, : len(row) - 1] = torch.tensor(row[1:])
        mask[i, len(p) - 1 : len(row) - 1] = 1.0
    return x.to(device), y.to(device), mask.to(device)


class RLTrainer:
    """One RL run: `RLTrainer(cfg, rt, log, tokenizer, weights, ckpt).run()`. `weights` are
    the starting model's (`train.init_from`), also the reference of the KL; `ckpt` the
    checkpoint to continue from, or None."""

    def __init__(self, cfg: RunConfig, rt: Runtime, log: RunLog, tokenizer: Any, weights, ckpt):
        r, t = cfg.rl, cfg.train
        self.cfg, self.rt, self.log, self.tok = cfg, rt, log, tokenizer
        self.out_dir = Path(t.out_dir)
        train = load_problems(r.task, r.prompts, "rl.prompts")
        self.held_out = load_problems(r.task, r.eval_prompts, "rl.eval_prompts")[: r.eval_n]
        self.draw = PromptDraw(train, t.seed, r.prompts_per_step, file_sha256(r.prompts))
        newline = tokenizer.encode("\n")
        if len(newline) != 1:
            raise UserError(
                "rl: the tokenizer must encode a newline as one token (answers end there)"
            )
        self.params = SamplingParams(  # NOTE: not the run's `sample` section: on-policy
            max_new_tokens=r.max_new_tokens,  # samples need the policy's own distribution,
            temperature=r.temperature,  # so no top-k / top-p filtering and no penalties
            top_k=None,
            top_p=None,
            stop_tokens=tuple(newline),
        )
        self.greedy = self.params.replace(temperature=0.0)
        longest = max(len(tokenizer.encode(p.prompt)) for p in train + self.held_out)
        if longest + r.max_new_tokens - 1 > cfg.model.block_size:
            raise UserError(
                f"rl: a prompt of {longest} tokens plus rl.max_new_tokens {r.max_new_tokens} does "
                f"not fit the model's block_size {cfg.model.block_size}; lower rl.max_new_tokens"
            )
        seed_everything(t.seed)
        self.model = TinyGPT(cfg.model).to(rt.device)
        self.model.load_state_dict(weights)
        self.model.eval()  # dropout off in every pass (module docstring)
        self.ref = TinyGPT(cfg.model).to(rt.device)
        self.ref.load_state_dict(weights)
        self.ref.requires_grad_(False).eval()
        self.optimizer = build_optimizer(self.model, cfg.optim, rt.device_type)
        self.scaler = torch.amp.GradScaler(rt.device_type, enabled=False)  # float32 only
        self.state = checkpoint.TrainState()
        self.best = -math.inf  # best held-out greedy accuracy so far
        if ckpt is not None:
            parts = (self.model, self.optimizer, self.scaler, self.draw)
            self.state = checkpoint.restore_training(ckpt, *parts, rt=rt, log=log)
            self.best = float(ckpt.get("rl", {}).get("best_eval_greedy", -math.inf))
        self.resumed = ckpt is not None
        self.rows_per_step = r.prompts_per_step * r.k
        self.reserve = Reserve(t.max_seconds, *(2 * [len(self.held_out) * (r.k + 1)]))
        self.meter = Throughput()  # sampled rows per second since the last log line
        self.bad_in_row = 0  # non-finite updates in a row (`finite`)
        self.t0: float | None = None

    # --------------------------------------------------------------------- one step

    def rl_step(self, lr: float) -> dict[str, float]:
        """Sample, score and update once (`rl.updates_per_batch` optimizer steps)."""
        r, step = self.cfg.rl, self.state.step
        problems = [p for p in self.draw.at(step) for _ in range(r.k)]  # each prompt k times
        prompts = [self.tok.encode(p.prompt) for p in problems]
        gen = torch.Generator(device=self.rt.device).manual_seed(self.cfg.train.seed * 7919 + step)
        done = engine.run(self.model, prompts, self.params, generators=[gen] * len(prompts))
        texts = [self.tok.decode(c.tokens) for c in done]
        rewards = torch.tensor(
            [reward(s, p.answer, r.format_reward) for s, p in zip(texts, problems)]
        )
        adv = losses.group_advantages(rewards.view(-1, r.k), r.baseline, r.std_norm).flatten()
        x, y, mask = pack(prompts, [c.tokens for c in done], self.rt.device)
        with torch.no_grad():
            ref_logp = losses.token_logprobs(self.ref(x)[0], y)
        set_lr(self.optimizer, lr)
        old_logp = None
        for _ in range(r.updates_per_batch):
            logits, _ = self.model(x)  # (B, T, V)
            logp = losses.token_logprobs(logits, y)
            if old_logp is None:  # the sampling policy: these very weights, before any update
                old_logp = logp.detach()
                entropy = losses.masked_mean(losses.token_entropy(logits.detach()), mask)
            loss, parts = losses.policy_loss(
                logp, old_logp, adv.to(logp.device), mask, r.clip, ref_logp, r.kl_coef
            )
            loss.backward()
            norm = clip_grad_norm(self.model.parameters(), self.cfg.optim.grad_clip)
            if self.finite(loss, norm, step):  # else the weights stay as they are
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.state.tokens_seen += int(mask.sum())
        return {
            "reward": rewards.mean().item(),
            "correct": sum(map(correct, texts, (p.answer for p in problems))) / len(texts),
            "well_formed": sum(map(well_formed, texts)) / len(texts),
            "response_len": sum(len(c.tokens) for c in done) / len(done),
            "entropy": entropy.item(),
            "kl": parts["kl"].item(),  # the last update's (the first's is exactly 0 at step 0)
            "loss": loss.item(),
            "clip_frac": parts["clip_frac"].item(),
            "lr": lr,
            "grad_norm": norm.item(),
        }

    def finite(self, loss: torch.Tensor, norm: torch.Tensor, step: int) -> bool:
        """Whether an update may be taken; `train.max_bad_steps` non-finite ones in a row stop
        the run (`TrainingDiverged`, the last good checkpoint kept)."""
        if math.isfinite(loss.item()) and math.isfinite(norm.item()):
            self.bad_in_row = 0
            return True
        self.bad_in_row += 1
        self.log(f"step {step}: skipped a non-finite loss ({self.bad_in_row} in a row)")
        if self.bad_in_row >= self.cfg.train.max_bad_steps:
            raise TrainingDiverged.at(step, self.bad_in_row, self.out_dir / LAST)
        return False

    # --------------------------------------------------------------------- the loop

    def run(self) -> dict[str, Any]:
        t, s = self.cfg.train, self.state
        stopped, last_eval = "max_iters", {}
        self.t0 = time.perf_counter()
        with StopSignal(self.log) as stopper, self.log.running(t.max_iters, s.step):
            if not self.resumed:
                last_eval = self.evaluate_and_log({})
            while s.step < t.max_iters:
                started = time.perf_counter()
                lr = lr_for(self.cfg.optim, t.max_iters, s.step, self.schedule_position())
                over_time = (
                    t.max_seconds is not None
                    and self.elapsed() + self.reserve.seconds > t.max_seconds
                )
                row = self.rl_step(lr)
                s.step += 1
                self.meter.add(self.rows_per_step, time.perf_counter() - started)
                self.reserve.update(self.meter.rate())
                if stopper.signum is not None or over_time:
                    stopped = "signal" if stopper.signum is not None else "max_seconds"
                done = s.step >= t.max_iters or stopped != "max_iters"
                self.log.advance(f"reward {row['reward']:.3f} kl {row['kl']:.4f}")
                row |= {"samples": s.step * self.rows_per_step}
                if s.step % t.log_interval == 0 or done:
                    row["samples_per_s"] = self.meter.rate()
                    self.meter = Throughput()
                    self.log.unless_bar(
                        f"step {s.step}/{t.max_iters} | reward {row['reward']:.3f} | "
                        f"correct {row['correct']:.3f} | entropy {row['entropy']:.3f} | "
                        f"kl {row['kl']:.4f} | len {row['response_len']:.2f}"
                    )
                    if not (s.step % t.eval_interval == 0 or (done and stopped != "signal")):
                        self.log.row(s.step, **row, elapsed_s=self.elapsed())
                if s.step % t.eval_interval == 0 or (done and stopped != "signal"):
                    last_eval = self.evaluate_and_log(row)
                if s.step % t.ckpt_interval == 0 or done:
                    self.save(LAST)
                if done:
                    break
        return {"step": s.step, "stopped": stopped, "signum": stopper.signum, **last_eval,
                "elapsed_s": self.elapsed()}  # fmt: skip

    def elapsed(self) -> float:
        """Wall time of the loop: earlier runs of a resumed run plus this one's so far."""
        running = time.perf_counter() - self.t0 if self.t0 is not None else 0.0
        return self.state.elapsed_s + running

    def schedule_position(self) -> int:
        t = self.cfg.train
        budget = t.max_seconds and t.max_seconds - self.reserve.seconds
        return schedule_step(self.state.step, t.max_iters, self.elapsed(), budget)

    # --------------------------------------------------------------------- evaluation, files

    def evaluate(self) -> dict[str, float]:
        """Held-out scores: greedy exact match; mean reward, pass@1 and pass@k of k samples."""
        r = self.cfg.rl
        prompts = [self.tok.encode(p.prompt) for p in self.held_out]
        answers = [p.answer for p in self.held_out]
        with preserved_rng(self.rt.device):
            greedy = engine.run(self.model, prompts, self.greedy)
            gen = torch.Generator(device=self.rt.device).manual_seed(EVAL_SEED)
            many = [p for p in prompts for _ in range(r.k)]
            sampled = engine.run(self.model, many, self.params, generators=[gen] * len(many))
        texts = [self.tok.decode(c.tokens) for c in sampled]
        hits = [correct(s, answers[i // r.k]) for i, s in enumerate(texts)]
        rewards = [reward(s, answers[i // r.k], r.format_reward) for i, s in enumerate(texts)]
        per_prompt = [sum(hits[i * r.k : (i + 1) * r.k]) for i in range(len(prompts))]
        return {
            "eval_greedy": sum(
                correct(self.tok.decode(c.tokens), a) for c, a in zip(greedy, answers)
            ) / len(answers),
            "eval_reward": sum(rewards) / len(rewards),
            "eval_pass1": sum(hits) / len(hits),
            "eval_passk": sum(losses.pass_at_k(r.k, c, r.k) for c in per_prompt) / len(prompts),
        }  # fmt: skip

    def evaluate_and_log(self, row: dict[str, Any]) -> dict[str, float]:
        started = time.perf_counter()
        scores = self.evaluate()
        self.reserve.measured_eval(self.reserve.subset, time.perf_counter() - started)
        s = self.state
        improved = scores["eval_greedy"] > self.best
        if improved:
            self.best = scores["eval_greedy"]
            if s.step > 0:
                self.save(BEST)
        self.log(
            f"step {s.step}: held-out exact {scores['eval_greedy']:.3f} (greedy) | reward "
            f"{scores['eval_reward']:.3f} | pass@1 {scores['eval_pass1']:.3f} | "
            f"pass@{self.cfg.rl.k} {scores['eval_passk']:.3f}"
            + (" (best)" if improved and s.step > 0 else "")
        )
        samples = row.get("samples", s.step * self.rows_per_step)
        self.log.row(s.step, **{**row, "samples": samples}, **scores, elapsed_s=self.elapsed())
        return scores

    def save(self, name: str) -> None:
        started = time.perf_counter()
        state = dataclasses.replace(self.state, elapsed_s=self.elapsed())
        ckpt = checkpoint.training_checkpoint(
            self.cfg, self.model, self.optimizer, self.scaler, state,
            rng=gather_rng(self.rt), sampler=self.draw.state_dict(), tokenizer=self.tok,
            data_sha256=self.draw.sha256,
        )  # fmt: skip
        ckpt["rl"] = {"best_eval_greedy": self.best}
        checkpoint.save_checkpoint(ckpt, self.out_dir / name)
        self.reserve.measured_save(time.perf_counter() - started)


# ----------------------------------------------------------------------------- the run


def rl(
    cfg: RunConfig, *, progress: bool | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run RL as configured; returns the final held-out scores, the step and why it stopped.
    Raises UserError on bad input (before any file of the run is written)."""
    if not cfg.train.init_from:
        raise UserError(
            "rl starts from a trained model: set train.init_from to a run directory or "
            "checkpoint (e.g. --train.init_from=out/digits)"
        )
    if cfg.lora.rank:
        raise UserError("rl trains every weight: set lora.rank: 0")
    rt = setup_runtime(cfg.train)
    interactive = sys.stderr.isatty() if progress is None else progress
    out = RunLog(interactive=interactive, print_fn=log or print)
    try:
        if rt.distributed:
            raise UserError("rl runs in one process; start it with python, not torchrun")
        for key in ("prompts", "eval_prompts"):  # before anything is written
            load_problems(cfg.rl.task, getattr(cfg.rl, key), f"rl.{key}")
        resume_from = resume_path(cfg, out)
        ckpt = checkpoint.load_checkpoint(resume_from) if resume_from else None
        cfg, weights = checkpoint.start_from(cfg)  # the starting model: also the KL's reference
        if cfg.model.arch != "decoder":
            raise UserError(f"rl samples from decoder-only models; {cfg.train.init_from} is "
                            f"model.arch {cfg.model.arch}")  # fmt: skip
        tokenizer = Tokenizer.load(cfg.run_data.tokenizer)
        if ckpt is not None:
            checkpoint.check_resume_compatible(ckpt, cfg, tokenizer.fingerprint, resume_from)
        trainer = RLTrainer(cfg, rt, out, tokenizer, weights, ckpt)
        at = trainer.state.step if ckpt is not None else None
        start_files(cfg, out, resumed_at=at, columns=COLUMNS)
        r = cfg.rl
        out(
            (f"resuming from {resume_from} at step {at}; " if at is not None else "")
            + f"RL from {cfg.train.init_from}: {r.prompts_per_step} prompts x {r.k} samples a "
            f"step, {len(trainer.draw.problems):,} prompts, {len(trainer.held_out)} held out"
        )
        result = trainer.run()
        if result["stopped"] != "signal":
            plot_rl(cfg.train.out_dir, out)
        out(
            f"done: step {result['step']} in {result['elapsed_s']:.1f}s ({result['stopped']})"
            + (f" | held-out exact {result['eval_greedy']:.3f}" if "eval_greedy" in result else "")
        )
        picture = [Path(cfg.train.out_dir) / PLOT] * (Path(cfg.train.out_dir) / PLOT).exists()
        out("files: " + ", ".join(map(str, [*run_files(cfg.train.out_dir), *picture])))
        rt.barrier()  # leave the group together (as train.loop)
        return result
    finally:
        shutdown(rt)


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    overrides, rest = split_overrides(list(sys.argv[1:] if argv is None else argv))
    p = ArgumentParser(
        prog="llm_tiny rl",
        description="Improve a trained model on a task whose answers can be checked (RL with "
        "verifiable rewards, docs/rl.md). Any config value can be overridden with "
        "--section.key=value, e.g. --rl.k=8 --train.init_from=out/digits.",
    )
    p.add_argument("config", metavar="CONFIG", help="YAML run config, e.g. configs/rl_digits.yaml")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    p.add_argument(
        "--overwrite", action="store_true", help="start anew even if OUT_DIR holds a run"
    )
    args = p.parse_args(rest)
    flags = ["--train.resume=always"] * args.resume + ["--train.overwrite=true"] * args.overwrite

    def run() -> int:
        result = rl(load_config(args.config, overrides + flags))
        if result["stopped"] == "signal" and result["signum"] is not None:
            return 128 + result["signum"]
        return 0

    return run_cli(run, "llm_tiny rl")


if __name__ == "__main__":
    sys.exit(main())
