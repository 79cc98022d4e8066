"""The run config's schema: six frozen dataclass sections, the allowed values of each choice
(`Literal` types), and every rule a valid config obeys (`validate`). Loading YAML and flags into
these is `llm_tiny.config.load`."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llm_tiny.errors import UserError
from tok.patterns import DEFAULT_PATTERN
from tok.sources import ON_BAD_RECORD


class ConfigError(UserError):
    """An invalid config file, key, value or override."""


# ----------------------------------------------------------------------------- sections
# A `Literal` field type is the one list of its allowed values: loading checks it, and the
# modules that implement the choices (model, schedule, runtime) are tested against it.
# `arch(default)` marks a model field that changes the parameters' shapes or meaning: resuming
# across a change of one is an error (`architecture_fields`).

PosEmb = Literal["learned", "rope", "alibi", "t5"]
Norm = Literal["layernorm", "rmsnorm", "none"]
NormPosition = Literal["pre", "post"]
Mlp = Literal["gelu", "swiglu", "relu", "relu2", "mish"]
AttnImpl = Literal["sdpa", "manual", "tiled"]
DataKind = Literal["text", "examples", "chat"]
OnBadRecord = Literal[ON_BAD_RECORD]  # the choices `tok.sources.iter_documents` implements
Schedule = Literal["cosine", "constant", "wsd"]
OptimName = Literal["adamw", "muon"]
MuonDtype = Literal["auto", "float32", "bfloat16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Dtype = Literal["float32", "bfloat16", "float16", "auto"]
Resume = Literal["never", "auto", "always"]
LoraTarget = Literal["q", "k", "v", "o", "gate", "up", "down"]  # gate: SwiGLU models only


def arch(default: Any) -> Any:
    """A model field that defines the architecture (see `architecture_fields`)."""
    return field(default=default, metadata={"architecture": True})


@dataclass(frozen=True)
class ModelConfig:
    """The TinyGPT architecture. Defaults give a GPT-2-style model."""

    vocab_size: int | None = arch(None)  # None: take it from the tokenizer at train time
    block_size: int = arch(256)  # context length in tokens
    n_layer: int = arch(4)
    n_head: int = arch(4)
    n_kv_head: int | None = arch(None)  # grouped-query attention; None means n_head
    n_embd: int = arch(128)
    dropout: float = 0.0
    bias: bool = arch(True)
    pos_emb: PosEmb = arch("learned")
    rope_theta: float = arch(10000.0)
    tie_weights: bool = arch(True)
    norm: Norm = arch("layernorm")
    mlp: Mlp = arch("gelu")
    mlp_hidden: int | None = arch(None)  # the MLP's hidden width; null: 4 x n_embd (SwiGLU: 8/3)
    norm_position: NormPosition = arch("pre")  # pre: x + f(norm(x)) (GPT-2); post: norm(x + f(x))
    qk_norm: bool = arch(False)  # RMSNorm on each head's queries and keys, before RoPE
    logit_softcap: float | None = arch(None)  # logits -> c tanh(logits / c); null: off
    bigram_logits: bool = arch(False)  # a V x V table, zero at init, added to the logits
    attn_window: int | None = arch(None)  # sliding window: attend to the last N positions only
    zero_init_proj: bool = False  # residual projections (and an untied LM head) start at 0
    attn_impl: AttnImpl = "sdpa"
    grad_checkpointing: bool = False

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equals `n_head` unless grouped-query attention)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it becomes token ids on disk."""

    input: tuple[str, ...] = ("data/tiny.txt",)  # text file(s), concatenated in order
    # The run's own files unless set (`resolved`): a run never reuses or rewrites another's.
    tokenizer: str | None = None  # trained from `input` if missing; default OUT_DIR/tok/bpe.json
    vocab_size: int = 512  # tokenizer vocabulary when it has to be trained
    pattern: str = DEFAULT_PATTERN  # pre-tokenizer split pattern: a name in tok.patterns or a regex
    special_tokens: tuple[str, ...] = ()
    data_dir: str | None = None  # train.bin / val.bin / meta.json; default OUT_DIR/data
    val_fraction: float = 0.1  # the last fraction of the text (or of the documents) is validation
    # Validation from its own files instead (every document of them; val_fraction unused):
    val_input: tuple[str, ...] = ()
    # Documents (folders, globs, JSONL, Parquet, compressed files, or doc_separator set):
    text_field: str = "text"  # JSONL field / Parquet column holding the text
    doc_separator: str | None = None  # split plain text files into documents at this string
    on_bad_record: OnBadRecord = "error"  # a bad JSONL line or Parquet row: stop, or count and skip
    eot: str | None = "<|endoftext|>"  # special token ending every document; null: none
    shard_tokens: int = 100_000_000  # tokens per shard file (DATA_DIR/train_000000.bin, ...)
    workers: int | None = None  # processes that tokenize; null: one per CPU core
    tokenizer_train_bytes: int | None = None  # train the tokenizer on a sample this big; null: all
    kind: DataKind = "text"  # text: a token stream | examples: a line each | chat: conversations
    answer_sep: str = "="  # examples: loss only on the tokens after this separator
    messages_field: str = "messages"  # chat: the JSONL field / Parquet column of the messages
    pack: bool = False  # chat: several whole conversations per row (docs/chat.md)
    # chat + train.init_from: "<|assistant|>=" starts that new token's rows as a copy of the
    # rows of the token "=" (one token of the base's); a turn token not named: the mean row
    chat_init: tuple[str, ...] = ()

    def resolved(self, out_dir: str | Path) -> DataConfig:
        """A copy with the paths that are not set filled in below the run directory."""
        out = Path(out_dir)
        tokenizer = self.tokenizer or str(out / "tok" / "bpe.json")
        return dataclasses.replace(
            self, tokenizer=tokenizer, data_dir=self.data_dir or str(out / "data")
        )


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer (AdamW, or Muon with AdamW) and the learning-rate schedule."""

    name: OptimName = "adamw"  # muon: Muon on the blocks' matrices, AdamW (lr) on the rest
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # floor of the cosine / wsd decay
    schedule: Schedule = "cosine"
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: decay until train.max_iters
    decay_fraction: float = 0.2  # wsd: fraction of the steps spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    fused: bool | None = None  # one fused AdamW kernel for all parameters; None: on CUDA only
    label_smoothing: float = 0.0  # training loss only; evaluation is always the plain loss
    muon_lr: float = 0.02  # Muon's peak learning rate; the schedule scales it like lr
    muon_momentum: float = 0.95  # Muon's (Nesterov) momentum
    muon_weight_decay: float = 0.0  # Muon's decoupled weight decay (times its lr)
    muon_dtype: MuonDtype = "auto"  # its orthogonalisation; auto: float32 on CPU, else bfloat16

    def decay_iters(self, max_iters: int) -> int:
        """Step at which the decay reaches `min_lr`: `lr_decay_iters`, else `max_iters`."""
        return max_iters if self.lr_decay_iters is None else self.lr_decay_iters


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: budget, batches, evaluation, checkpoints and runtime."""

    out_dir: str = "out/tiny"
    max_iters: int = 1000
    max_seconds: float | None = None  # wall time of the loop, its evaluations and end included
    batch_size: int = 16  # sequences per micro-batch (per process)
    grad_accum_steps: int = 1
    eval_interval: int = 250
    eval_at_start: bool = True  # also evaluate before the first step (the untrained baseline)
    # Batches per evaluation during training, spread over the validation split (the same ones
    # each time); the end of the run scores the whole split too when the budget allows
    # (`train.budget`). null: always the whole split.
    eval_iters: int | None = 16
    eval_batch_size: int = 32
    # Tasks scored at evaluations (bundled names, "suite", or JSONL files; docs/eval.md):
    eval_tasks: tuple[str, ...] = ()
    eval_tasks_interval: int | None = None  # a multiple of eval_interval; null: eval_interval
    eval_tasks_n: int = 50  # rows per bundled task
    log_interval: int = 10
    log_dynamics: bool = False  # weight norms and update ratios per matrix -> dynamics.csv
    profile_steps: int = 0  # profile this many steps after warm-up -> profile.txt, trace.json
    ckpt_interval: int = 250
    device: Device = "auto"
    dtype: Dtype = "float32"
    compile: bool = False
    seed: int = 1337
    threads: int | None = None  # torch intra-op threads; None: the torch default
    resume: Resume = "never"
    init_from: str | None = None  # start from these weights (run dir or .pt): new optimizer, step 0
    overwrite: bool = False  # a new run may replace the checkpoints of an old one in out_dir
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row
    tensorboard: bool = False
    sample_at_end: bool = True  # print a short sample when training ends
    peak_flops: float | None = None  # accelerator peak FLOP/s for MFU; None: look up by name


@dataclass(frozen=True)
class SampleConfig:
    """Defaults for generation."""

    # null: the start of the run's own text (`infer.sample.run_prompt`): a new document after
    # the end-of-text token, or the first line of the validation text.
    prompt: str | None = None
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = 0.95
    num_samples: int = 1
    seed: int = 1337
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the text; 1 = off
    no_repeat_ngram: int = 0  # never repeat an n-gram of this many tokens; 0 = off


@dataclass(frozen=True)
class LoraConfig:
    """Parameter-efficient fine-tuning (LoRA, `llm_tiny.model.lora`): rank 0 trains every
    weight; rank r > 0 freezes the weights of `train.init_from` and trains a rank-r update of
    each targeted projection, W + (alpha / r) B A, B starting at zero (docs/finetune.md)."""

    rank: int = 0  # 0: off (full fine-tuning)
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapters' input
    targets: tuple[LoraTarget, ...] = ("q", "k", "v", "o")  # attention; MLP: gate, up, down

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0


@dataclass(frozen=True)
class RunConfig:
    """One training run: the sections together."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    @property
    def tokens_per_iter(self) -> int:
        """Tokens in one optimizer step of one process."""
        return self.train.batch_size * self.train.grad_accum_steps * self.model.block_size

    @property
    def run_data(self) -> DataConfig:
        """The data section with this run's own paths filled in (`DataConfig.resolved`)."""
        return self.data.resolved(self.train.out_dir)

    @property
    def lr_decay_iters(self) -> int:
        """Step at which the decay reaches `min_lr` (defaults to `max_iters`)."""
        return self.optim.decay_iters(self.train.max_iters)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "lora": LoraConfig,
}


def choices(tp: Any) -> tuple[str, ...]:
    """The allowed values of a `Literal` field type: `choices(NormPosition) == ("pre", "post")`."""
    return typing.get_args(tp)


def architecture_fields() -> tuple[str, ...]:
    """The `ModelConfig` fields marked `arch`: they fix the parameters' shapes and meaning. The
    others (dropout, attn_impl, grad_checkpointing) only change how the same weights are used."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("architecture"))


# Sampling values are checked in three places (the `sample` section here, the `sample` CLI and
# `sampling.generate`), each naming the value its own way: one rule table for all of them.
SAMPLING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (lambda v: v >= 0, ">= 0 (0 means greedy)"),  # False for NaN too
    "top_k": (lambda v: v is None or (type(v) is int and v >= 1), ">= 1"),
    "top_p": (lambda v: v is None or 0 < v <= 1, "in (0, 1]"),
    "max_new_tokens": (lambda v: v >= 0, ">= 0"),
    "num_samples": (lambda v: v >= 1, ">= 1"),
    "repetition_penalty": (lambda v: v > 0, "> 0 (1 means off)"),
    "no_repeat_ngram": (lambda v: type(v) is int and v >= 0, ">= 0 (0 means off)"),
}


def sampling_problem(name: Callable[[str], str] = str, **values: Any) -> str | None:
    """The first sampling value that breaks its rule, as "NAME must be RULE, got VALUE" (`name`
    spells the key: `sample.top_p`, `--top-p`, ...), or None when all are valid.

    >>> sampling_problem(lambda k: "--" + k.replace("_", "-"), temperature=1.0, top_p=1.5)
    '--top-p must be in (0, 1], got 1.5'
    """
    for key, value in values.items():
        ok, rule = SAMPLING_RULES[key]
        if not ok(value):
            return f"{name(key)} must be {rule}, got {value}"
    return None


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
    check(
        lo.rank == 0 or t.init_from is not None,
        "lora.rank > 0 adapts trained weights: set train.init_from to the base run (or an "
        "imported model)",
    )

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
