"""A micro-batcher in front of each model: concurrent requests' generations run as one batch.

Used through umi.inference.sharing by the service (requests in worker threads) and by live evaluation (entries rolled
out in threads). Requests run in worker threads, each an α-UMi episode or turn that needs one generation at a time.
Without batching they queue on the model's lock and the model decodes one sequence at a time, which on a CPU leaves most
of its arithmetic unused (decoding is memory-bound: 8 sequences cost little more per step than one). With batching, a
request's generation is put in the model's queue; one worker thread per model takes what is queued (after waiting
`wait_s` for company when the queue holds a single generation) and decodes it with `ModelBackend.decode_together`
(umi.inference.continuous_batching): continuous batching, up to `max_batch` sequences of one role backend at a time; a
generation queued while the batch runs joins it at the next step (so an episode's next generation does not wait for the
whole batch), and one that stops leaves it at once. Each prompt is prefilled with its KV-cache reuse, then decoded in
the left-padded batch with its own max_new_tokens, stop strings, temperature and seed. Another backend's generations (a
LoRA role on the same base) wait until the running batch drains.

Deadlines: a request waits no longer than its deadline; a request whose deadline passes (or whose client went away)
while queued is never run, and one whose deadline passes during the batch is dropped from it at the next decode step
(the others go on); the waiting request raises RequestTimeout / RequestCancelled either way.

BentoML's adaptive batching was the other choice: it batches calls of a `@bentoml.api(batchable=True)` method, but the
service serves one ASGI app whose requests each need several dependent generations (planner, caller, summarizer)
from inside one thread, so the batching has to sit under the agent loop, in front of the model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from umi.inference.deadlines import Deadline, RequestTimeout
from umi.inference.protocol import Generation, GenerationRequest, ModelBackend

log = logging.getLogger(__name__)

__all__ = ["BatchStats", "MicroBatcher"]


@dataclass(eq=False)
class _Item:
    backend: ModelBackend
    request: GenerationRequest
    deadline: Deadline | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    abandoned: bool = False  # the waiting request gave up (deadline): drop it

    def gone(self) -> bool:
        d = self.deadline
        return self.abandoned or (d is not None and (d.cancelled or d.remaining <= 0))


@dataclass
class BatchStats:
    batches: int = 0  # decode sessions: one runs while generations keep joining it
    generations: int = 0
    largest: int = 0  # the most generations decoding at once
    dropped: int = 0


class MicroBatcher:
    """Batches generations on one model (see the module doc). `lock` is the model's lock (umi.inference.sharing),
    held while a batch runs."""

    def __init__(self, lock: threading.Lock, max_batch: int = 8, wait_s: float = 0.005, name: str = "model"):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.lock = lock
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.stats = BatchStats()
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._running = False  # a batch is decoding (new generations of its backend join it)
        self._thread = threading.Thread(target=self._work, name=f"umi-batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, backend: ModelBackend, request: GenerationRequest, deadline: Deadline | None = None) -> Generation:
        """Generate `request` with `backend` in the model's next batch; raises what the generation raised."""
        if deadline is not None:
            deadline.check(f"the {request.record_id} generation")
        item = _Item(backend, request, deadline)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model's batcher is closed")
            self._queue.append(item)
            self._cond.notify_all()
        finished = item.done.wait(None if deadline is None else max(deadline.remaining, 0.0))
        if not finished:
            item.abandoned = True
            item.done.wait(0.0)
        if item.done.is_set() and item.result is not None:
            if isinstance(item.result, BaseException):
                raise item.result
            return item.result
        if deadline is not None:
            deadline.check(f"the {request.record_id} generation finished")
        assert deadline is not None
        raise RequestTimeout(f"the request ran past its time limit of {deadline.seconds:g} s during a generation")

    def close(self) -> None:
        """Stop the worker; generations still queued fail (RuntimeError) rather than wait for ever."""
        with self._cond:
            self._closed = True
            while self._queue:
                item = self._queue.popleft()
                item.result = RuntimeError("the model's batcher was closed before this generation ran")
                item.done.set()
            self._cond.notify_all()

    # --- the worker -------------------------------------------------------------------------------------------------
    def _first(self) -> list[_Item] | None:
        """Block until generations are queued; then those of the head's backend (up to max_batch), None when closed."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            if len(self._queue) == 1 and self.wait_s > 0:  # alone: give concurrent requests a moment to join
                until = time.monotonic() + self.wait_s
                while len(self._queue) < self.max_batch and (left := until - time.monotonic()) > 0:
                    self._cond.wait(left)
            return self._more(self._queue[0].backend, self.max_batch)  # the condition's lock is reentrant

    def _more(self, backend: ModelBackend, room: int) -> list[_Item]:
        """Up to `room` queued generations of `backend` (dropping the expired). None once another backend waits, so a
        running batch drains and the other adapter gets the model. The queue keeps arrival order: the next batch is
        the oldest waiting generation's backend, so a busy adapter cannot keep another from the model for ever."""
        with self._cond:
            waiting = []
            for item in self._queue:
                if item.gone():
                    self.stats.dropped += 1
                    item.done.set()  # result None: the waiter raises its timeout
                else:
                    waiting.append(item)
            if self._running and any(item.backend is not backend for item in waiting):
                self._queue = deque(waiting)
                return []
            taken = [item for item in waiting if item.backend is backend][:room]
            chosen = set(taken)
            self._queue = deque(item for item in waiting if item not in chosen)
            return taken

    def _work(self) -> None:
        while True:
            first = self._first()
            if first is None:
                return
            if not first:
                continue
            backend = first[0].backend
            pending = list(first)
            running: set[_Item] = set()  # taken into the batch, not finished yet
            self._running = True

            def take(room: int) -> list[tuple[_Item, Any]]:
                nonlocal pending
                items, pending = pending[:room], pending[room:]
                if len(items) < room:
                    items += self._more(backend, room - len(items))
                self.stats.generations += len(items)
                running.update(items)
                self.stats.largest = max(self.stats.largest, len(running))
                return [(item, item.request) for item in items]

            def finish(item: _Item, result: Any) -> None:
                running.discard(item)
                if result is None:
                    self.stats.dropped += 1
                item.result = result
                item.done.set()

            self.stats.batches += 1
            try:
                with self.lock:
                    backend.decode_together(take, finish, lambda item: item.gone(), max_rows=self.max_batch)
            except BaseException as e:  # a failure of the forward pass: every request in the batch gets it
                log.exception("a batch of generations failed")
                for item in [*pending, *running]:
                    finish(item, e)
            finally:
                self._running = False
