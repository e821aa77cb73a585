"""Files and directories the service writes are private to its user: alerts, ledgers and
caches are the desk's business, not every local account's. Files are created 0600 and
directories 0700, whatever the umask allows beyond that."""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Creates path, and each missing parent, with mode 0700. Directories that already
    exist are left as they are: they are the operator's."""
    missing = []
    p = Path(path)
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:  # another process made it meanwhile
            pass


def private_file(path: Path) -> None:
    """Makes sure path exists with mode 0600 (created so, or tightened if it is wider).

    SQLite gives a database's -wal and -shm files the mode of the database file, so
    creating it 0600 before SQLite opens it keeps all three private."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.close(fd)
    tighten(path)


def tighten(path: Path) -> None:
    """Takes group and other access away from an existing file of ours (best effort: a
    read-only file system or a file owned by someone else is left alone)."""
    try:
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
    except OSError:
        pass
