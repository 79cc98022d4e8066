"""The run config's schema: eight frozen dataclass sections (model, data, optim, train, sample,
lora, runtime, rl) and the allowed values of each choice (`Literal` types). The rules a valid
config obeys are `llm_tiny.config.rules`; loading YAML and flags into these is
`llm_tiny.config.load`."""

from __future__ import annotations

import dataclasses
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
# decoder: TinyGPT; encoder: bidirectional, MLM + a classifier (BERT); encoder_decoder: T5-style
Arch = Literal["decoder", "encoder", "encoder_decoder"]
DataKind = Literal["text", "examples", "chat"]
OnBadRecord = Literal[ON_BAD_RECORD]  # the choices `tok.sources.iter_documents` implements
Schedule = Literal["cosine", "constant", "wsd"]
OptimName = Literal["adamw", "muon"]
MuonDtype = Literal["auto", "float32", "bfloat16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Dtype = Literal["float32", "bfloat16", "float16", "auto"]
Resume = Literal["never", "auto", "always"]
Parallel = Literal["ddp", "fsdp"]  # how torchrun's processes share the model (`distributed`)
LoraTarget = Literal["q", "k", "v", "o", "gate", "up", "down"]  # gate: SwiGLU models only
RlTask = Literal["digits"]  # the tasks with an answer checker (`llm_tiny.rl.rewards.TASKS`)
RlBaseline = Literal["group", "none"]  # subtract the group's mean reward, or nothing


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
    n_classes: int | None = arch(None)  # encoder: the classifier's answers 0 .. n_classes - 1
    mlm_prob: float = 0.25  # encoder: the share of training rows that are masked-LM rows
    # docs/encoders.md: decoder-only, encoder-only or encoder-decoder. NOTE: the last field, as
    # its name hides the `arch` function from the rest of the class body.
    arch: Arch = arch("decoder")

    # The encoder and encoder-decoder append three token ids to the vocabulary: padding (hidden
    # from attention), [MASK] for the masked-LM rows, and the start token (the encoder's [CLS],
    # the decoder's first input).
    @property
    def pad_id(self) -> int:
        return self.vocab_size

    @property
    def mask_id(self) -> int:
        return self.vocab_size + 1

    @property
    def bos_id(self) -> int:
        return self.vocab_size + 2

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
    # Validation from its own files instead (every document of them, left out of `input`;
    # val_fraction unused):
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
    # Token ids whose embedding and output rows train whole (PEFT's trainable_token_indices);
    # a chat run adds the chat tokens it grows the base's vocabulary by (docs/finetune.md).
    tokens: tuple[int, ...] = ()

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0


@dataclass(frozen=True)
class RuntimeConfig:
    """How several processes (`torchrun`) share the model (`llm_tiny.distributed`,
    docs/training.md): `ddp` keeps a whole copy per process; `fsdp` shards the weights,
    gradients and optimizer state over them (FSDP2) and saves sharded checkpoints."""

    parallel: Parallel = "ddp"
    offload: bool = False  # fsdp on a GPU: keep the sharded weights and optimizer state on the CPU


@dataclass(frozen=True)
class RlConfig:
    """Reinforcement learning on a task whose answers can be checked (`python -m llm_tiny rl`,
    docs/rl.md): each step samples `k` completions for each of `prompts_per_step` prompts,
    rewards them, and pushes up the better ones (REINFORCE with a group baseline)."""

    task: RlTask = "digits"
    prompts: str | None = None  # examples file the prompts are drawn from (the SFT train split)
    eval_prompts: str | None = None  # held-out examples file (the test split)
    eval_n: int = 200  # held-out prompts scored at each evaluation (the first of the file)
    prompts_per_step: int = 16
    k: int = 8  # completions sampled per prompt (the group)
    temperature: float = 1.0  # 1: the samples come from the policy itself (on-policy)
    max_new_tokens: int = 4  # a completion longer than this ends unfinished (no reward)
    baseline: RlBaseline = "group"  # group: advantage = r - mean of the prompt's k rewards
    std_norm: bool = False  # also divide by the group's standard deviation (GRPO)
    updates_per_batch: int = 1  # > 1: PPO-style ratio clipping keeps the later updates close
    clip: float = 0.2  # the ratio is clipped to [1 - clip, 1 + clip]
    kl_coef: float = 0.0  # weight of the KL penalty to the starting model (0: off)
    format_reward: float = 0.0  # added for a well-formed answer (a number, then a newline)


@dataclass(frozen=True)
class RunConfig:
    """One training run: the sections together."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    rl: RlConfig = field(default_factory=RlConfig)

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
    "runtime": RuntimeConfig,
    "rl": RlConfig,
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
