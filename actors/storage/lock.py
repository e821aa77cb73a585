"""The single-owner file lock (invariant 1 in docs/architecture.md): the dedupe actor holds
one on its store, the supervisor one on its data_dir."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from actors.errors import StoreLockedError
from actors.storage.private import private_dir
from actors.storage.sqlite import unavailable


class FileLock:
    """An exclusive flock held for the owner's lifetime; the kernel drops it on death."""

    def __init__(self, path: Path):
        self.path = path
        try:
            private_dir(path.parent)
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a full disk or a read-only place: not "locked"
            error = unavailable(exc, f"lock file {path}", path)
            if error is None:
                raise
            raise error from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise StoreLockedError(f"{path} is locked by another process (pid {holder}); "
                                   "is a second supervisor running on this data_dir?") from None
        try:  # the pid only names the holder in the message above: best effort
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
