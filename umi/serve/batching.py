"""A micro-batcher in front of each model: concurrent requests' generations run as one batch.

Requests run in worker threads, each an α-UMi episode or turn that needs one generation at a time. Without batching
they queue on the model's lock and the model decodes one sequence at a time, which on a CPU leaves most of its
arithmetic unused (decoding is memory-bound: 8 sequences cost little more per step than one). With batching, a
request's generation is put in the model's queue; one worker thread per model takes what is queued (after waiting
`wait_s` for company when the queue holds a single generation), up to `max_batch` generations of one role backend,
and runs them through `TransformersBackend.generate_many`: each prompt prefilled with its KV-cache reuse, then one
batched decode, left-padded, each request with its own max_new_tokens, stop strings, temperature and seed.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from umi.agent.backend import Generation, GenerationRequest, TransformersBackend
    from umi.serve.backends import Deadline

log = logging.getLogger(__name__)

__all__ = ["MicroBatcher", "BatchStats"]


@dataclass
class _Item:
    backend: Any
    request: "GenerationRequest"
    deadline: "Deadline | None"
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    abandoned: bool = False  # the waiting request gave up (deadline): drop it

    def gone(self) -> bool:
        d = self.deadline
        return self.abandoned or (d is not None and (d.cancelled or d.remaining <= 0))


@dataclass
class BatchStats:
    batches: int = 0
    generations: int = 0
    largest: int = 0
    dropped: int = 0


class MicroBatcher:
    """Batches generations on one model (see the module doc). `lock` is the model's lock (umi.serve.backends
    SharedModel.lock), held while a batch runs."""

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
        self._thread = threading.Thread(target=self._work, name=f"umi-batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, backend: "TransformersBackend", request: "GenerationRequest",
               deadline: "Deadline | None" = None) -> "Generation":  # fmt: skip
        """Generate `request` with `backend` in the model's next batch; raises what the generation raised."""
        from umi.serve.backends import RequestTimeout

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
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- the worker -------------------------------------------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            if len(self._queue) == 1 and self.wait_s > 0:  # alone: give concurrent requests a moment to join
                until = time.monotonic() + self.wait_s
                while len(self._queue) < self.max_batch and (left := until - time.monotonic()) > 0:
                    self._cond.wait(left)
            head = self._queue[0].backend
            batch, rest = [], deque()
            while self._queue:
                item = self._queue.popleft()
                if item.gone():
                    self.stats.dropped += 1
                    item.done.set()  # result None: the waiter raises its timeout
                elif item.backend is head and len(batch) < self.max_batch:
                    batch.append(item)
                else:
                    rest.append(item)  # another role's adapter, or beyond max_batch: the next batch
            self._queue.extendleft(reversed(rest))
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            try:
                with self.lock:
                    results = batch[0].backend.generate_many(
                        [item.request for item in batch], dropped=lambda i: batch[i].gone()
                    )
            except BaseException as e:  # a failure of the forward pass: every request of the batch gets it
                log.exception("a batch of %d generations failed", len(batch))
                results = [e] * len(batch)
            self.stats.batches += 1
            self.stats.generations += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            for item, result in zip(batch, results):
                if result is None:
                    self.stats.dropped += 1
                item.result = result
                item.done.set()
