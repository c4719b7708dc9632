"""Atomic file writes: readers (a worker, a download, the model loader) see a whole file or none.

One helper for every writer: a temporary name beside the target (same directory, so the rename stays on one
file system), fsync, then `os.replace`, which is atomic on POSIX. A writer that fails or is killed leaves at
most its temporary file, never a half-written target.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temporary_beside(path: Path) -> Path:
    """A name no other writer (process or thread) picks for the same target."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """For writers that take a path (an exporter, a library's `save`): they write the yielded path, which
    replaces `path` when the block ends without an error; on an error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: Path, binary: bool = False) -> Iterator[IO[Any]]:
    """`with atomic_open(path) as f:` writes f (text: UTF-8, newlines as written) to a file that replaces
    `path` when the block ends without an error."""
    with atomic_path(path) as tmp:
        if binary:
            with open(tmp, "wb") as f:
                yield f
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                yield f


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write all of `data` to `path` atomically."""
    with atomic_open(path, binary=isinstance(data, bytes)) as f:
        f.write(data)
