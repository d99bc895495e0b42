"""A request's time budget, and the two ways a request ends early: it ran out of time, or its client went away.

Checked before every generation (umi.inference.sharing), while a generation waits in the micro-batcher, and by the
tool sandbox before each tool call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Deadline", "RequestCancelled", "RequestTimeout"]


class RequestTimeout(Exception):
    """The request ran past its time limit (waiting for a model included)."""


class RequestCancelled(Exception):
    """The client went away; the request stops at its next generation."""


@dataclass
class Deadline:
    """A request's time budget. `cancel()` (the client disconnected) makes the next check raise."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def cancel(self) -> None:
        self.cancelled = True

    def check(self, doing: str) -> None:
        if self.cancelled:
            raise RequestCancelled(f"the client went away before {doing}")
        if self.remaining <= 0:
            raise RequestTimeout(f"the request ran past its time limit of {self.seconds:g} s before {doing}")
