"""Atomic file writes: a temporary file beside the target, flushed and fsynced, then renamed over it.

A reader sees the old file or the new one, never a part of one, whatever kills the writer (crash, kill -9, a full
disk). The temporary name ends in `.tmp` so globs for `*.jsonl` / `*.json` never pick up a leftover one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: str | Path) -> None:
    """Make a rename in `path` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PendingFile:
    """A temporary file beside `path`; `commit()` fsyncs it and renames it over `path`, `discard()` removes it.
    For writers that decide only at the end whether (or in which order) their files land."""

    def __init__(self, path: str | Path, mode: str = "w", encoding: str | None = "utf-8"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        text = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        self.file: IO[Any] = os.fdopen(fd, mode, **text)

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        self.file.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """`with atomic_open(p) as f: f.write(...)`: `p` is replaced only when the block ends without an exception;
    on an exception the temporary file is removed and `p` is left as it was."""
    pending = PendingFile(path, mode, encoding)
    try:
        yield pending.file
        pending.commit()
    except BaseException:
        pending.discard()
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | Path, value: Any, **dumps: Any) -> None:
    write_text(path, json.dumps(value, **({"indent": 2} | dumps)) + "\n")
