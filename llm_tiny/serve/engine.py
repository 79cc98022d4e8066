"""Continuous batching: one background thread steps the decoding engine for every request.

The decoding itself is `infer.engine.Decoder`, the loop the sample CLI runs too (a request is
one `Row` with its own `SamplingParams` and generator, seeded as the CLI seeds its own). This
module only drives it from a thread: requests are `submit`ted from the web server's event loop,
join the batch between steps, report each step's `Event` through their callback, and leave it
when they finish or are `cancel`led. Other work that needs the model (`call`) runs between two
steps, so that only this thread ever uses the model.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

import torch

from llm_tiny.infer.engine import Decoder, Event, Row
from llm_tiny.infer.params import SamplingParams
from llm_tiny.model import TinyGPT, decode_layout


class Engine:
    """Owns the model; `submit` sequences, which are decoded together by a background thread."""

    def __init__(self, model: TinyGPT, device: torch.device, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        self.device = device
        self.decoder = Decoder(self.model, max_rows=max_batch)
        self._incoming: collections.deque[Row] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = (
            collections.deque()
        )
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._live: set[Row] = set()  # submitted and not finished

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
        self, tokens: list[int], params: SamplingParams, emit: Callable[[Event], None]
    ) -> Row:
        """Queue a sequence that draws from its own generator seeded with `params.seed`;
        `emit` is called from the engine thread with each `Event`."""
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        row = Row(tokens, params, generator, tag=emit)
        with self._wake:
            self._live.add(row)
            self._incoming.append(row)
            self._wake.notify()
        return row

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
            waiting = len(self._incoming) + len(self.decoder.waiting)
            return {"active": len(self._live) - waiting, "waiting": waiting,
                    **self.decoder.counters}  # fmt: skip

    # ------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        decoder = self.decoder
        with torch.inference_mode(), decode_layout(self.model):
            while True:
                with self._wake:
                    while not (self._stopping or self._calls or self._incoming or decoder.busy):
                        self._wake.wait()
                    if self._stopping:
                        break
                    calls, self._calls = list(self._calls), collections.deque()
                    for row in self._incoming:
                        decoder.add(row)
                    self._incoming.clear()
                for fn, future in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn())
                        except Exception as e:  # the caller sees it; the loop goes on
                            future.set_exception(e)
                try:
                    events = decoder.step()
                except Exception as e:  # a bug must not take the server down: fail the batch
                    events = decoder.abort(f"error: {type(e).__name__}: {e}")
                self._emit(events)
        with self._wake:
            for row in self._incoming:
                decoder.add(row)
            self._incoming.clear()
        self._emit(decoder.abort("cancelled", waiting=True))

    def _emit(self, events: list[tuple[Row, Event]]) -> None:
        for row, event in events:
            if event.finish is not None:
                with self._wake:
                    self._live.discard(row)
            row.tag(event)
