"""Continuous batching: one background thread decodes every active request together.

Each step of the loop runs one forward pass over all the sequences being decoded, each with its
own position in a batched KV cache (`kvcache.KVCache` with per-row lengths), then samples each
row's next token with that request's own settings and random generator. Requests join the
batch between steps (their prompt is processed alone, into a one-row cache that is appended to
the batch) and leave it when they finish or are cancelled (their row is dropped).

Every request reproduces `python -m llm_tiny sample`: the same prompt window, the same sliding
of the window past `block_size` (`sampling.slide_start`; a sequence that slides is processed
alone again, as the CLI rebuilds its cache), the same logits processing and the same
`torch.Generator` seeded the same way. A batch of one row runs exactly the CLI's computation,
so a request served alone gives the CLI's text bit for bit. NOTE: with several rows the
matrix products see a larger batch, and their results can differ from one row's in the last
bits of a float; a sampled token only changes if such a difference crosses a decision
boundary, which tests at these sizes never see, but it is not a guarantee.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_tiny.infer.sampling import discourage_repeats, sample_next, slide_start
from llm_tiny.model import TinyGPT, decode_layout
from llm_tiny.model.kvcache import KVCache


@dataclass(frozen=True)
class Settings:
    """How one sequence is sampled (checked by the caller: `config.sampling_problem`)."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram: int = 0
    seed: int = 0
    stop_tokens: tuple[int, ...] = ()
    logprobs: int | None = None  # how many alternatives to report per token (None: no logprobs)


@dataclass
class Event:
    """What a sequence reports after a step: a new token (with its log-probability and the
    `logprobs` most likely tokens when asked), and/or the reason it finished."""

    token: int | None = None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    finish: str | None = None  # "stop" | "length" | "cancelled" | "error: ..."


@dataclass(eq=False)
class Sequence:
    """One request's token sequence as the engine decodes it."""

    tokens: list[int]  # prompt (already cut to block_size) + generated tokens
    settings: Settings
    emit: Callable[[Event], None]
    generator: torch.Generator | None = None
    start: int = 0  # first token of the visible window (`sampling.slide_start`)
    produced: int = 0
    cancelled: bool = False
    done: bool = False

    def cancel(self) -> None:
        """Stop generating (a client went away); takes effect at the next step."""
        self.cancelled = True


class Engine:
    """Owns the model; `submit` sequences, which are decoded together by a background thread."""

    def __init__(self, model: TinyGPT, device: torch.device, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        self.device = device
        self.max_batch = max_batch
        self.block_size = model.config.block_size
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = (
            collections.deque()
        )
        self._active: list[Sequence] = []  # row i of the cache belongs to _active[i]
        self._joining: list[Sequence] = []  # taken from the queue by the step under way
        self._cache: KVCache | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._live: set[Sequence] = set()  # submitted and not finished
        self.counters = {"generated_tokens": 0, "finished": 0, "cancelled": 0, "steps": 0}
        self.counters |= {"batched_rows": 0, "max_rows": 0}

    # ------------------------------------------------------------------------- public side

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="llm_tiny-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(
        self, tokens: list[int], settings: Settings, emit: Callable[[Event], None]
    ) -> Sequence:
        """Queue a sequence; `emit` is called from the engine thread with each `Event`."""
        seq = Sequence(list(tokens), settings, emit)
        seq.start = max(0, len(seq.tokens) - self.block_size)
        with self._wake:
            self._live.add(seq)
            self._waiting.append(seq)
            self._wake.notify()
        return seq

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the engine thread between two steps (so that only one thread ever uses
        the model); the future holds its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    def wake(self) -> None:
        """Look at cancellations now rather than after the current step."""
        with self._wake:
            self._wake.notify()

    def stats(self) -> dict[str, int]:
        """Sequences being decoded and waiting, and counters since the start."""
        with self._wake:
            waiting = len(self._waiting)
            return {"active": len(self._live) - waiting, "waiting": waiting, **self.counters}

    # ------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        with torch.inference_mode(), decode_layout(self.model):
            while True:
                with self._wake:
                    while not (self._stopping or self._calls or self._waiting or self._active):
                        self._wake.wait()
                    if self._stopping:
                        break
                    calls, self._calls = list(self._calls), collections.deque()
                for fn, future in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn())
                        except Exception as e:  # the caller sees it; the loop goes on
                            future.set_exception(e)
                try:
                    self._step()
                except Exception as e:  # a bug must not take the server down: fail the batch
                    for seq in [*self._active, *self._joining]:
                        self._finish(seq, f"error: {type(e).__name__}: {e}")
                    self._active, self._joining, self._cache = [], [], None
        for seq in [*self._active, *self._waiting]:
            self._finish(seq, "cancelled")

    def _step(self) -> None:
        """One forward pass for the rows being decoded, one alone for each joining (or
        sliding) sequence; then one token for every sequence."""
        self._drop_finished()
        # A row whose window must slide leaves the batch and is processed alone again.
        sliding = [s for s in self._active if self._slides(s)]
        if sliding:
            self._keep_rows([i for i, s in enumerate(self._active) if s not in sliding])
        rows = list(self._active)  # row i of the cache belongs to rows[i]
        joining = self._joining = sliding
        with self._wake:
            while self._waiting and len(rows) + len(joining) < self.max_batch:
                joining.append(self._waiting.popleft())
        logits: list[tuple[Sequence, Tensor]] = []
        if rows:
            assert self._cache is not None
            last = torch.tensor([[s.tokens[-1]] for s in rows], device=self.device)  # (B, 1)
            out, _ = self.model(last, cache=self._cache)
            batch_logits = out[:, -1].float()  # (B, V)
            logits += [(s, batch_logits[i : i + 1]) for i, s in enumerate(rows)]
            self.counters["batched_rows"] += len(rows)
            self.counters["max_rows"] = max(self.counters["max_rows"], len(rows))
        for seq in joining:  # the CLI's prefill: a fresh one-row cache fed the whole window
            if seq.generator is None:
                generator = torch.Generator(device=self.device)
                seq.generator = generator.manual_seed(seq.settings.seed)
            seq.start = slide_start(seq.start, len(seq.tokens), self.block_size)
            cache = self.model.new_cache(1)
            window = torch.tensor([seq.tokens[seq.start :]], device=self.device)
            out, _ = self.model(window, cache=cache)
            logits.append((seq, out[:, -1].float()))
            if self._cache is None:
                self._cache = cache
            else:
                self._cache.append(cache)
        self._active = [s for s, _ in logits]  # decoded rows first, then the joined ones
        self._joining = []
        self.counters["steps"] += 1
        for seq, row in logits:
            self._sample(seq, row)

    def _slides(self, seq: Sequence) -> bool:
        return slide_start(seq.start, len(seq.tokens), self.block_size) != seq.start

    def _sample(self, seq: Sequence, logits: Tensor) -> None:
        """The CLI's step (`sampling._sample_loop`) for one sequence: logits (1, V)."""
        s = seq.settings
        if s.repetition_penalty != 1 or s.no_repeat_ngram:
            history = torch.tensor([seq.tokens], device=self.device)  # (1, L)
            logits = discourage_repeats(logits, history, s.repetition_penalty, s.no_repeat_ngram)
        token = int(sample_next(logits, s.temperature, s.top_k, s.top_p, seq.generator)[0])
        event = Event(token=token)
        if s.logprobs is not None:
            logp = F.log_softmax(logits[0], dim=-1)  # the model's, before temperature etc.
            event.logprob = float(logp[token])
            if s.logprobs:
                top = logp.topk(min(s.logprobs, logp.numel()))
                event.top = list(zip(top.indices.tolist(), top.values.tolist()))
        seq.produced += 1
        self.counters["generated_tokens"] += 1
        if token in s.stop_tokens:
            event.finish = "stop"
        elif seq.produced >= s.max_tokens:
            event.finish = "length"
        seq.tokens.append(token)
        if event.finish is not None:
            self._mark_done(seq, "finished")
        seq.emit(event)

    def _drop_finished(self) -> None:
        """Remove finished and cancelled rows from the batch (and the cache)."""
        for seq in self._active:
            if seq.cancelled and not seq.done:
                self._finish(seq, "cancelled")
        with self._wake:
            for seq in [s for s in self._waiting if s.cancelled]:
                self._waiting.remove(seq)
                self._finish(seq, "cancelled")
        self._keep_rows([i for i, s in enumerate(self._active) if not s.done])

    def _keep_rows(self, keep: list[int]) -> None:
        """Keep only these rows of the batch (and of the cache)."""
        if len(keep) == len(self._active):
            return
        if keep and self._cache is not None:
            self._cache.reorder(torch.tensor(keep, device=self.device))
        else:
            self._cache = None
        self._active = [self._active[i] for i in keep]

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.done:
            return
        self._mark_done(seq, "cancelled" if reason == "cancelled" else "finished")
        seq.emit(Event(finish=reason))

    def _mark_done(self, seq: Sequence, counter: str) -> None:
        seq.done = True
        self.counters[counter] += 1
        with self._wake:
            self._live.discard(seq)
