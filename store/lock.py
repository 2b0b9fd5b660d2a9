"""Advisory file locks (flock) on files inside the store's metadata folder.

flock locks belong to an open file description, so they are released by the kernel when the
process dies: a killed pybuild never leaves the store locked.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from pybuild.errors import StoreLocked

__all__ = ["file_lock"]


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], *, shared: bool = False,
              timeout: float = 300.0) -> Iterator[int]:
    """Hold an exclusive (or shared) flock on ``path`` (created if missing) for the ``with`` body.

    Raises StoreLocked when the lock is not obtained within ``timeout`` seconds.
    """
    p = Path(path)
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + timeout
    delay = 0.005
    try:
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreLocked(f"timed out after {timeout:.0f}s waiting for lock {p}",
                                      hint="another pybuild process holds the store; retry when it ends") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        yield fd
    finally:
        os.close(fd)
