"""The single-owner file lock (invariant 1 in docs/architecture.md): the dedupe actor holds
one on its store, the supervisor one on its data_dir."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from actors.errors import StoreLockedError


class FileLock:
    """An exclusive flock held for the owner's lifetime; the kernel drops it on death."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise StoreLockedError(f"{path} is locked by another process (pid {holder}); "
                                   "is a second supervisor running on this data_dir?") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
