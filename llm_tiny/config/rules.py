"""Every rule a valid run config obeys beyond its types (`validate`): values impossible on their
own (a negative rate) or together (a LoRA run without a base, FSDP with an encoder)."""

from __future__ import annotations

import math
from collections.abc import Callable

from llm_tiny.config.sections import (
    SAMPLING_RULES,
    ConfigError,
    RlConfig,
    RunConfig,
    sampling_problem,
)


def validate(cfg: RunConfig, source: str = "config") -> None:
    """Check values that are impossible on their own or together; raise ConfigError."""
    m, d, o, t, s = cfg.model, cfg.data, cfg.optim, cfg.train, cfg.sample

    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {message}")

    check(m.vocab_size is None or m.vocab_size >= 1, "model.vocab_size must be >= 1")
    check(m.block_size >= 1, f"model.block_size must be >= 1, got {m.block_size}")
    check(m.n_layer >= 1, f"model.n_layer must be >= 1, got {m.n_layer}")
    check(m.n_head >= 1, f"model.n_head must be >= 1, got {m.n_head}")
    check(m.n_embd >= 1, f"model.n_embd must be >= 1, got {m.n_embd}")
    check(
        m.n_embd % m.n_head == 0,
        f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})",
    )
    check(m.kv_heads >= 1, f"model.n_kv_head must be >= 1, got {m.n_kv_head}")
    check(
        m.n_head % m.kv_heads == 0,
        f"model.n_head ({m.n_head}) must be divisible by model.n_kv_head ({m.kv_heads})",
    )
    check(
        m.pos_emb != "rope" or m.head_dim % 2 == 0,
        f"rope needs an even head size, got n_embd/n_head = {m.head_dim}",
    )
    check(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
    check(
        m.logit_softcap is None or m.logit_softcap > 0,
        f"model.logit_softcap must be > 0 or null, got {m.logit_softcap}",
    )
    check(
        m.attn_window is None or m.attn_window >= 1,
        f"model.attn_window must be >= 1 or null (no window), got {m.attn_window}",
    )
    check(m.rope_theta > 0, f"model.rope_theta must be > 0, got {m.rope_theta}")
    check(
        m.mlp_hidden is None or m.mlp_hidden >= 1,
        f"model.mlp_hidden must be >= 1 or null, got {m.mlp_hidden}",
    )
    if m.arch != "decoder":
        check(d.kind == "examples", f"model.arch {m.arch} trains on data.kind: examples")
        for causal_only in ("alibi", "t5"):  # their distances here are a causal query's
            check(m.pos_emb != causal_only, f"model.arch {m.arch}: pos_emb {causal_only} is causal only; use rope")  # fmt: skip
        check(m.attn_window is None, f"model.arch {m.arch}: model.attn_window is for decoders")
        check(cfg.lora.rank == 0, f"model.arch {m.arch}: LoRA (lora.rank > 0) is for decoders")
        check(not t.sample_at_end, f"model.arch {m.arch}: set train.sample_at_end: false")
        check(not t.eval_tasks, f"model.arch {m.arch}: train.eval_tasks are for decoders")
    check(
        m.arch != "encoder" or (m.n_classes is not None and m.n_classes >= 2),
        f"model.arch encoder needs model.n_classes >= 2 (the answers), got {m.n_classes}",
    )
    check(0.0 <= m.mlm_prob < 1.0, f"model.mlm_prob must be in [0, 1), got {m.mlm_prob}")
    check(
        m.arch != "encoder_decoder" or m.norm_position == "pre",
        "model.arch encoder_decoder is pre-norm only: set model.norm_position: pre",
    )

    check(len(d.input) >= 1, "data.input must name at least one text file")
    check(d.vocab_size >= 256, f"data.vocab_size must be >= 256 (the bytes), got {d.vocab_size}")
    check(
        m.vocab_size is None or m.vocab_size >= d.vocab_size,
        f"model.vocab_size ({m.vocab_size}) is smaller than data.vocab_size ({d.vocab_size})",
    )
    check(0.0 < d.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    check(
        d.doc_separator != "", "data.doc_separator must not be empty (null: one document per file)"
    )
    check(d.eot != "", "data.eot must not be empty (null: no end-of-text token)")
    check(
        not (d.val_input and d.kind == "examples"),
        "data.val_input is for text data; with data.kind: examples the validation examples are "
        "the last data.val_fraction of the lines",
    )
    check(d.shard_tokens >= 1, f"data.shard_tokens must be >= 1, got {d.shard_tokens}")
    check(t.profile_steps >= 0, f"train.profile_steps must be >= 0, got {t.profile_steps}")
    check(
        d.workers is None or d.workers >= 1, f"data.workers must be >= 1 or null, got {d.workers}"
    )
    check(
        d.tokenizer_train_bytes is None or d.tokenizer_train_bytes >= 1,
        f"data.tokenizer_train_bytes must be >= 1 or null, got {d.tokenizer_train_bytes}",
    )

    check(o.lr > 0 and math.isfinite(o.lr), f"optim.lr must be > 0, got {o.lr}")
    check(0 <= o.min_lr <= o.lr, f"optim.min_lr must be in [0, optim.lr], got {o.min_lr}")
    check(o.warmup_iters >= 0, f"optim.warmup_iters must be >= 0, got {o.warmup_iters}")
    check(
        o.lr_decay_iters is None or o.lr_decay_iters >= o.warmup_iters,
        f"optim.lr_decay_iters ({o.lr_decay_iters}) must be >= optim.warmup_iters ({o.warmup_iters})",
    )
    check(
        0 < o.decay_fraction <= 1, f"optim.decay_fraction must be in (0, 1], got {o.decay_fraction}"
    )
    check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
    check(o.eps > 0, f"optim.eps must be > 0, got {o.eps}")
    check(o.muon_lr > 0 and math.isfinite(o.muon_lr), f"optim.muon_lr must be > 0, got {o.muon_lr}")
    check(0 <= o.muon_momentum < 1, f"optim.muon_momentum must be in [0, 1), got {o.muon_momentum}")
    check(
        o.muon_weight_decay >= 0,
        f"optim.muon_weight_decay must be >= 0, got {o.muon_weight_decay}",
    )
    check(o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 disables), got {o.grad_clip}")
    check(
        0 <= o.label_smoothing < 1,
        f"optim.label_smoothing must be in [0, 1), got {o.label_smoothing}",
    )

    check(t.max_iters >= 1, f"train.max_iters must be >= 1, got {t.max_iters}")
    check(
        o.warmup_iters <= t.max_iters,
        f"optim.warmup_iters ({o.warmup_iters}) must be <= train.max_iters ({t.max_iters}); "
        f"lower it, e.g. --optim.warmup_iters={t.max_iters}",
    )
    check(t.max_seconds is None or t.max_seconds > 0, "train.max_seconds must be > 0")
    check(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    check(t.grad_accum_steps >= 1, f"train.grad_accum_steps must be >= 1, got {t.grad_accum_steps}")
    check(t.eval_interval >= 1, f"train.eval_interval must be >= 1, got {t.eval_interval}")
    check(t.eval_iters is None or t.eval_iters >= 1, "train.eval_iters must be >= 1 or null")
    check(t.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    check(
        t.eval_tasks_interval is None
        or (t.eval_tasks_interval >= 1 and t.eval_tasks_interval % t.eval_interval == 0),
        "train.eval_tasks_interval must be a multiple of train.eval_interval (tasks are scored "
        f"at evaluations), got {t.eval_tasks_interval}",
    )
    check(t.eval_tasks_n >= 1, f"train.eval_tasks_n must be >= 1, got {t.eval_tasks_n}")
    check(t.log_interval >= 1, f"train.log_interval must be >= 1, got {t.log_interval}")
    check(t.ckpt_interval >= 1, f"train.ckpt_interval must be >= 1, got {t.ckpt_interval}")
    check(t.threads is None or t.threads >= 1, f"train.threads must be >= 1, got {t.threads}")
    check(t.peak_flops is None or t.peak_flops > 0, "train.peak_flops must be > 0 or null")
    check(t.max_bad_steps >= 1, f"train.max_bad_steps must be >= 1, got {t.max_bad_steps}")

    lo = cfg.lora
    check(lo.rank >= 0, f"lora.rank must be >= 0 (0 means off), got {lo.rank}")
    check(lo.alpha > 0 and math.isfinite(lo.alpha), f"lora.alpha must be > 0, got {lo.alpha}")
    check(0.0 <= lo.dropout < 1.0, f"lora.dropout must be in [0, 1), got {lo.dropout}")
    check(len(lo.targets) >= 1, "lora.targets must name at least one projection")
    check(len(set(lo.targets)) == len(lo.targets), f"lora.targets repeats one: {list(lo.targets)}")
    check(all(t >= 0 for t in lo.tokens), f"lora.tokens must be token ids >= 0: {list(lo.tokens)}")
    check(len(set(lo.tokens)) == len(lo.tokens), f"lora.tokens repeats one: {list(lo.tokens)}")
    check(
        lo.rank == 0 or t.init_from is not None,
        "lora.rank > 0 adapts trained weights: set train.init_from to the base run (or an "
        "imported model)",
    )

    fsdp = cfg.runtime.parallel == "fsdp"
    check(fsdp or not cfg.runtime.offload, "runtime.offload is for runtime.parallel: fsdp")
    for ok, what in (
        (lo.rank == 0, "lora.rank > 0 (adapters are small: use ddp)"),
        (cfg.model.arch == "decoder", f"model.arch: {cfg.model.arch} (it shards TinyGPT's blocks)"),
        (t.dtype != "float16", "train.dtype: float16 (loss scaling); use bfloat16"),
        (not t.eval_tasks, "train.eval_tasks (rank 0 alone scores them); score the checkpoint"),
    ):
        check(not fsdp or ok, f"runtime.parallel: fsdp does not support {what}")
    validate_rl(cfg.rl, check)

    check(
        s.prompt != "",
        "sample.prompt must not be empty (generation continues a prompt); null: the start of "
        "the run's own text",
    )
    problem = sampling_problem(
        lambda k: f"sample.{k}",
        **{k: getattr(s, k) for k in SAMPLING_RULES},
    )
    check(problem is None, str(problem))


def validate_rl(r: RlConfig, check: Callable[[bool, str], None]) -> None:
    """The `rl` section's rules (`validate`); the files are checked when `rl` runs."""
    check(r.k >= 1, f"rl.k must be >= 1, got {r.k}")
    check(
        r.k >= 2 or r.baseline == "none",
        f"rl.k is {r.k}: a group baseline needs rl.k >= 2 (one sample is its own mean, so every "
        "advantage would be 0); raise rl.k or set rl.baseline: none",
    )
    check(not r.std_norm or r.baseline == "group", "rl.std_norm needs rl.baseline: group")
    check(r.prompts_per_step >= 1, f"rl.prompts_per_step must be >= 1, got {r.prompts_per_step}")
    check(r.eval_n >= 1, f"rl.eval_n must be >= 1, got {r.eval_n}")
    check(
        r.temperature > 0 and math.isfinite(r.temperature),
        f"rl.temperature must be > 0 (greedy samples of a prompt would all be the same), "
        f"got {r.temperature}",
    )
    check(r.max_new_tokens >= 1, f"rl.max_new_tokens must be >= 1, got {r.max_new_tokens}")
    check(r.updates_per_batch >= 1, f"rl.updates_per_batch must be >= 1, got {r.updates_per_batch}")
    check(0 < r.clip < 1, f"rl.clip must be in (0, 1), got {r.clip}")
    check(r.kl_coef >= 0, f"rl.kl_coef must be >= 0 (0: no penalty), got {r.kl_coef}")
    check(r.format_reward >= 0, f"rl.format_reward must be >= 0, got {r.format_reward}")
