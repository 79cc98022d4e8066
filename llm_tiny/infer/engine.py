"""The one decoding engine: every prompt-to-tokens path in llm_tiny runs through `Decoder`.

A `Decoder` holds rows (`Row`: a prompt, the tokens generated so far, its `SamplingParams` and
its random generator), each with its own position in one batched KV cache (`KVCache` with
per-row lengths). One `step` does, for every live row at once:

    admit    waiting rows join the batch (up to `max_rows`); their prompt windows are processed
             in one forward pass per window length, into a cache appended to the batch's
    slide    a row whose next token would not fit in `block_size` leaves the batch and joins
             again with its window moved on (`slide_start`)
    decode   one forward pass over the newest token of every other row
    sample   the logits processors, then one draw per row from its own generator
    stop     a row ends after a stop token or `max_new_tokens`; its cache row is dropped

The window. The model only ever sees the last `block_size` tokens at most; when the next token
would not fit, the window jumps forward to keep the last `block_size // 2` tokens and the row's
cache is rebuilt from them in one forward pass. Every position in the window then moves, so
cached keys cannot be reused (their learned or rotary positions and their dependence on dropped
tokens are both stale). Sliding by one token per step instead would mean a full recomputation
every step, the very cost the cache exists to avoid. Without a cache (`use_cache=False`, the
reference the cache is checked against) every row's window is recomputed each step.

Callers: `run` (batch work: evaluation, chat, RL), `generate` / `generate_stream` (thin public
wrappers: the sample CLI and the end-of-training sample), `beam.beam_search` (its beams are
rows) and the server's threaded driver `serve.engine.Engine` (continuous batching: rows join
and leave between steps).

Reproducibility. A row alone runs the same computation whatever the caller, so a request
served alone gives the sample CLI's tokens bit for bit. NOTE: rows decoded together share
matrix products, whose float results can differ from one row's in the last bits; a sampled
token only changes if such a difference crosses a decision boundary (tests at these sizes
never see one), so batched rows match the CLI in practice, not by guarantee.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm_tiny.infer.params import SamplingParams
from llm_tiny.infer.processors import discourage_repeats, filtered
from llm_tiny.model import TinyGPT, decode_layout
from llm_tiny.model.kvcache import KVCache
from llm_tiny.train.checkpoint import unwrap_model

_arrivals = itertools.count()


def slide_start(start: int, length: int, block_size: int) -> int:
    """Where the visible window of a sequence of `length` tokens begins, given that it began at
    `start` before the newest token: unchanged while it fits in `block_size`, else moved to
    keep the last `block_size // 2` tokens (at least one).

    slide_start(0, 8, 8) -> 0;  slide_start(0, 9, 8) -> 5;  slide_start(5, 12, 8) -> 5.
    """
    if length - start <= block_size:
        return start
    return length - max(1, block_size // 2)


@dataclass
class Event:
    """What a row reports after a step: a new token (with its log-probability and the
    `logprobs` most likely tokens when asked), and/or the reason it finished."""

    token: int | None = None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    finish: str | None = None  # "stop" | "length" | "cancelled" | "error: ..."


@dataclass(eq=False)
class Row:
    """One prompt being continued. `generator` None draws from torch's global generator;
    rows sharing one generator draw from it together, in the order they were made."""

    tokens: list[int]  # the prompt, then every token generated
    params: SamplingParams
    generator: torch.Generator | None = None
    tag: Any = None  # the caller's (the server keeps the row's event callback here)
    prompt_len: int = 0
    start: int = 0  # first token of the visible window (`slide_start`)
    produced: int = 0
    finish: str | None = None
    cancelled: bool = False
    order: int = field(default_factory=lambda: next(_arrivals))
    # A one-row cache holding the first `cache.length` tokens' keys (a conversation's earlier
    # turns): only the rest is computed when the row joins. With `keep_cache` the row gets its
    # cache back when it finishes (all but its newest token).
    cache: KVCache | None = None
    keep_cache: bool = False

    def __post_init__(self) -> None:
        self.tokens = list(self.tokens)
        if not self.tokens:
            raise ValueError("a row needs at least one prompt token")
        self.prompt_len = len(self.tokens)

    @property
    def done(self) -> bool:
        return self.finish is not None

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    def cancel(self) -> None:
        """Stop generating (a client went away); takes effect at the next step."""
        self.cancelled = True

    def fork(self) -> Row:
        """A copy that grows on its own (a beam that two children continue)."""
        twin = copy.copy(self)
        twin.tokens = list(self.tokens)
        return twin


class Decoder:
    """Rows decoded together in one KV cache; `add` rows, then `step` until not `busy`.

    Must run in generation mode (`generating`, or inference mode and `decode_layout` as the
    server's thread does); `max_rows` bounds the batch (None: no bound).
    """

    def __init__(self, model: TinyGPT, max_rows: int | None = None, use_cache: bool = True):
        self.model = model
        self.device = next(model.parameters()).device
        self.block_size = model.config.block_size
        self.max_rows = max_rows
        self.use_cache = use_cache
        self.rows: list[Row] = []  # row i of the cache belongs to rows[i]
        self.joining: list[Row] = []  # taken from `waiting` by the step under way
        self.waiting: collections.deque[Row] = collections.deque()
        self.cache: KVCache | None = None
        self.counters = {"generated_tokens": 0, "finished": 0, "cancelled": 0, "steps": 0}
        self.counters |= {"batched_rows": 0, "max_rows": 0}

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def add(self, row: Row) -> Row:
        """Queue a row; a prompt longer than the context is seen through its last block."""
        row.start = max(0, len(row.tokens) - self.block_size)
        self.waiting.append(row)
        return row

    # ------------------------------------------------------------------------- one step

    def step(self) -> list[tuple[Row, Event]]:
        """Advance every live row by one token; the events of this step, row by row."""
        events = self._retire()
        if not self.busy:
            return events
        logits = self.logits()  # (B, V)
        rows = self.rows
        if any(r.params.discourages_repeats for r in rows):
            for i, r in enumerate(rows):
                if r.params.discourages_repeats:
                    history = torch.tensor([r.tokens], device=self.device)  # (1, L)
                    p = r.params
                    logits[i : i + 1] = discourage_repeats(
                        logits[i : i + 1], history, p.repetition_penalty, p.no_repeat_ngram
                    )
        tokens = self._draw(logits)
        self.push(tokens)
        self.counters["steps"] += 1
        self.counters["generated_tokens"] += len(rows)
        want_logprobs = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        logp = F.log_softmax(logits[want_logprobs], dim=-1) if want_logprobs else None
        for i, (row, token) in enumerate(zip(rows, tokens)):
            event = Event(token=token)
            if token in row.params.stop_tokens:
                event.finish = "stop"
            elif row.produced >= row.params.max_new_tokens:
                event.finish = "length"
            if logp is not None and row.params.logprobs is not None:
                self._log(event, logp[want_logprobs.index(i)], row.params.logprobs)
            if event.finish is not None:
                self._end(row, event.finish)
            events.append((row, event))
        return events + self._retire()

    def logits(self) -> Tensor:
        """Next-token logits (B, V) in float32 for `rows`, after admitting waiting rows and
        re-admitting those whose window slides (decoded rows first, then the joined ones)."""
        joining = self.joining = []
        if not self.use_cache:  # the reference: every window recomputed, nothing cached
            joining += self.rows
            self.rows, self.cache = [], None
        else:
            sliding = [r for r in self.rows if self._slides(r)]
            if sliding:
                self.keep([i for i, r in enumerate(self.rows) if r not in sliding])
                joining += sliding
        while self.waiting and (
            self.max_rows is None or len(self.rows) + len(joining) < self.max_rows
        ):
            joining.append(self.waiting.popleft())
        parts = []
        if self.rows:
            last = torch.tensor([[r.tokens[-1]] for r in self.rows], device=self.device)  # (B, 1)
            out, _ = self.model(last, cache=self.cache)
            parts.append(out[:, -1])
            self.counters["batched_rows"] += len(self.rows)
            self.counters["max_rows"] = max(self.counters["max_rows"], len(self.rows))
        for r in joining:
            r.start = slide_start(r.start, len(r.tokens), self.block_size)
        by_length: dict[int, list[Row]] = {}
        for r in joining:
            if r.cache is not None and r.start == 0 and self.use_cache:
                parts.append(self._resume(r))
                continue
            r.cache = None  # a window that slid moved every position: nothing to reuse
            by_length.setdefault(len(r.tokens) - r.start, []).append(r)
        for group in by_length.values():  # one prefill per window length
            window = torch.tensor([r.tokens[r.start :] for r in group], device=self.device)
            cache = self.model.new_cache(len(group)) if self.use_cache else None
            out, _ = self.model(window, cache=cache)  # (G, L, V)
            parts.append(out[:, -1])
            if cache is not None:
                if self.cache is None:
                    self.cache = cache
                else:
                    self.cache.append(cache)
            self.rows += group
        self.joining = []
        return torch.cat(parts).float()

    def _resume(self, row: Row) -> Tensor:
        """Join a row whose cache holds its first tokens: compute only the others."""
        cache, row.cache = row.cache, None
        assert cache is not None and 0 < cache.length < len(row.tokens)
        new = torch.tensor([row.tokens[cache.length :]], device=self.device)  # (1, L)
        out, _ = self.model(new, cache=cache)
        if self.cache is None:
            self.cache = cache
        else:
            self.cache.append(cache)
        self.rows.append(row)
        return out[:, -1]

    def push(self, tokens: Sequence[int]) -> None:
        """Append one token to each row, in batch order."""
        for row, token in zip(self.rows, tokens):
            row.tokens.append(token)
            row.produced += 1

    def keep(self, index: Sequence[int]) -> None:
        """Keep rows `index` of the batch (and of the cache), in that order; a row kept twice
        is forked (beam search continues one beam in two ways)."""
        if list(index) == list(range(len(self.rows))):
            return
        seen: set[int] = set()
        rows = []
        for i in index:
            rows.append(self.rows[i].fork() if i in seen else self.rows[i])
            seen.add(i)
        self.rows = rows
        if rows and self.cache is not None:
            self.cache.reorder(torch.tensor(list(index), device=self.device))
        else:
            self.cache = None

    def abort(self, reason: str, waiting: bool = False) -> list[tuple[Row, Event]]:
        """Finish every row in the batch (and the waiting ones too if `waiting`) with `reason`
        (a failed step must not keep half-updated rows)."""
        rows = [*self.rows, *self.joining, *(self.waiting if waiting else ())]
        self.rows, self.joining, self.cache = [], [], None
        if waiting:
            self.waiting.clear()
        events = []
        for row in rows:
            if not row.done:
                self._end(row, reason)
                events.append((row, Event(finish=reason)))
        return events

    # ------------------------------------------------------------------------- helpers

    def _slides(self, row: Row) -> bool:
        return slide_start(row.start, len(row.tokens), self.block_size) != row.start

    def _draw(self, logits: Tensor) -> list[int]:
        """One token per row of logits (B, V): argmax for greedy rows; for the others the
        filters of their params (one call per distinct setting), then one draw per row from
        its generator (rows sharing a generator draw together, in the order they were made,
        as `torch.multinomial` on their stacked rows would)."""
        rows = self.rows
        settings: dict[tuple, list[int]] = {}
        for i, p in enumerate(r.params for r in rows):
            if not p.greedy:
                settings.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
        if not settings:
            return logits.argmax(dim=-1).tolist()
        probs = logits  # greedy rows keep their logits here and are never drawn from
        for (t, k, p), index in settings.items():
            if len(index) == len(rows):
                probs = F.softmax(filtered(logits, t, k, p), dim=-1)
            else:
                probs = probs.clone() if probs is logits else probs
                probs[index] = F.softmax(filtered(logits[index], t, k, p), dim=-1)
        # NOTE: torch.multinomial(p, 1, generator=g) is argmax(p / q), q ~ Exp(1) drawn from g
        # in p's shape (its "exponential race" path for one sample). Drawing q row by row and
        # dividing once for the whole batch gives its tokens with one op per row instead of
        # several, which is most of the step's work outside the forward pass at 16 rows.
        # tests/unit/test_engine.py holds it to torch.multinomial on every torch upgrade.
        q = torch.ones_like(probs)
        q_rows = q.unbind(0)  # every row's view in one op, not one indexing op per row
        draws: dict[Any, list[int]] = {}
        for index in settings.values():
            for i in index:
                draws.setdefault(rows[i].generator, []).append(i)
        for generator, index in draws.items():
            if len(index) == 1:
                q_rows[index[0]].exponential_(1, generator=generator)
            else:
                index.sort(key=lambda i: rows[i].order)
                q[index] = torch.empty(len(index), q.size(1), device=q.device).exponential_(
                    1, generator=generator
                )
        tokens = (probs / q).argmax(dim=-1)  # (B,)
        if len(settings) == 1 and len(next(iter(settings.values()))) == len(rows):
            return tokens.tolist()
        greedy = [i for i, r in enumerate(rows) if r.params.greedy]
        tokens[greedy] = logits[greedy].argmax(dim=-1)
        return tokens.tolist()

    @staticmethod
    def _log(event: Event, logp: Tensor, n: int) -> None:
        """The model's log-probability of the token (after the repetition rules, before
        temperature and filtering) and the n most likely alternatives."""
        event.logprob = float(logp[event.token])
        if n:
            top = logp.topk(min(n, logp.numel()))
            event.top = list(zip(top.indices.tolist(), top.values.tolist()))

    def _end(self, row: Row, reason: str) -> None:
        if row.done:
            return
        row.finish = reason
        self.counters["cancelled" if reason == "cancelled" else "finished"] += 1

    def _retire(self) -> list[tuple[Row, Event]]:
        """Drop finished rows from the batch; finish cancelled rows (batch and queue) and
        queued rows with nothing to generate."""
        events = []
        for row in [*self.rows, *self.waiting]:
            if row.done:
                continue
            if row.cancelled or row.params.max_new_tokens == 0:
                reason = "cancelled" if row.cancelled else "length"
                self._end(row, reason)
                events.append((row, Event(finish=reason)))
        if any(r.done for r in self.waiting):
            self.waiting = collections.deque(r for r in self.waiting if not r.done)
        if any(r.done for r in self.rows):
            for i, r in enumerate(self.rows):
                if r.done and r.keep_cache and self.cache is not None:
                    r.cache = self.cache.take(i)
            self.keep([i for i, r in enumerate(self.rows) if not r.done])
        return events


# ----------------------------------------------------------------------------- callers


@contextlib.contextmanager
def generating(model: TinyGPT) -> Iterator[None]:
    """Generation mode: dropout off, inference mode, and on CPU the faster weight layout for
    token-by-token products (`model.decode_layout`); the previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), decode_layout(model):
            yield
    finally:
        model.train(was_training)


@dataclass
class Completion:
    """What `run` made of one prompt: the new tokens (a stop token, if one ended it, last),
    why it ended ("stop" | "length"), and the tokens' log-probabilities if asked."""

    tokens: list[int]
    finish: str
    logprobs: list[float] | None = None


def run(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    generators: Sequence[torch.Generator | None] | None = None,
    max_batch: int | None = None,
    use_cache: bool = True,
) -> list[Completion]:
    """Continue every prompt (token ids) with `params`, decoded together in batches of up to
    `max_batch` rows (None: all at once). Prompt i draws from `generators[i]`, by default its
    own generator seeded with `params.seed + i` (as the server's choice i of a request).
    """
    model = unwrap_model(model)
    device = next(model.parameters()).device
    if generators is None:
        generators = [
            torch.Generator(device=device).manual_seed(params.seed + i) for i in range(len(prompts))
        ]
    logprobs: dict[int, list[float]] = collections.defaultdict(list)
    with generating(model):
        decoder = Decoder(model, max_batch, use_cache)
        rows = [decoder.add(Row(p, params, g)) for p, g in zip(prompts, generators, strict=True)]
        while decoder.busy:
            for row, event in decoder.step():
                if event.logprob is not None:
                    logprobs[id(row)].append(event.logprob)
    want = params.logprobs is not None
    return [Completion(r.generated, str(r.finish), logprobs[id(r)] if want else None) for r in rows]
