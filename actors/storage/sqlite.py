"""The one way this project opens its SQLite files and writes to them.

Every file gets the pragmas of its own settings block (`dedupe.sqlite`, `llm.sqlite`,
`alerts.sqlite`: WAL, synchronous, busy_timeout...). Two kinds of failure are told apart,
because taking one for the other destroys data:

- Corruption: SQLite says the file is corrupt or not a database (SQLITE_CORRUPT,
  SQLITE_NOTADB), or quick_check fails at start. The file (with its -wal and -shm) is
  moved aside under a name no file has yet, never over an earlier one, a fresh file
  takes its place, and its owner is told, so the service goes on.
- A storage fault: disk full (SQLITE_FULL, ENOSPC), I/O errors (SQLITE_IOERR_*),
  read-only (SQLITE_READONLY_*, EROFS), cannot open (SQLITE_CANTOPEN) and locks held by
  another program (SQLITE_BUSY, SQLITE_LOCKED: a backup tool). The file is fine: it stays
  where it is and StoreUnavailableError says why; the owner keeps running and tries again
  (actors/storage/outage.py). A ledger once moved aside for a full disk lost every
  pending item and the whole seen set.

Files are created 0600 in directories made 0700 (actors/storage/private.py).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from actors.errors import StoreUnavailableError
from actors.storage.private import private_dir, private_file, tighten

if TYPE_CHECKING:
    from catalyst_config import SqliteConfig

log = logging.getLogger("catalyst.sqlite")

# Primary result codes (the low byte of an extended code) that are storage faults.
_SQLITE_FAULTS = {
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_IOERR: "io_error",
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_CANTOPEN: "cant_open",
    sqlite3.SQLITE_BUSY: "locked",
    sqlite3.SQLITE_LOCKED: "locked",
    sqlite3.SQLITE_PROTOCOL: "locked",  # a lock race SQLite gave up on
}
_SQLITE_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_OS_FAULTS = {
    errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EIO: "io_error",
    errno.EROFS: "read_only", errno.EACCES: "cant_open", errno.EPERM: "cant_open",
}

# An I/O error where less than this is free is a full disk: SQLite reports a failed -shm
# or -wal extension as SQLITE_IOERR_SHMSIZE or _WRITE, without the ENOSPC underneath.
DISK_FULL_FREE_BYTES = 1024 * 1024

# A table every file may get, for the one write that asks "do writes work again?".
PROBE_SCHEMA = ("CREATE TABLE IF NOT EXISTS storage_probe "
                "(id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL)")


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_corrupt(exc: BaseException) -> bool:
    """SQLite says the file itself is damaged or not a database."""
    return _primary_code(exc) in _SQLITE_CORRUPT


def fault_reason(exc: BaseException) -> str | None:
    """disk_full, io_error, read_only, cant_open or locked for a storage fault; else None."""
    if isinstance(exc, StoreUnavailableError):
        return exc.reason
    if isinstance(exc, sqlite3.Error):
        return _SQLITE_FAULTS.get(_primary_code(exc))
    if isinstance(exc, OSError):
        return _OS_FAULTS.get(exc.errno)
    return None


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno)
        return f"{exc.strerror or exc} ({name})"
    return f"{exc} ({name})" if name else str(exc)


def _nearly_full(path: Path | None) -> bool:
    if path is None:
        return False
    try:
        st = os.statvfs(path if path.is_dir() else path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < DISK_FULL_FREE_BYTES


def unavailable(exc: BaseException, what: str, path: Path | None = None
                ) -> StoreUnavailableError | None:
    """The StoreUnavailableError a storage fault means (None: exc is no storage fault);
    path, when given, tells an I/O error on a full disk from other I/O errors."""
    if isinstance(exc, StoreUnavailableError):
        return exc
    reason = fault_reason(exc)
    if reason is None:
        return None
    detail = _describe(exc)
    if reason == "io_error" and _nearly_full(path):
        reason, detail = "disk_full", f"{detail}, with the disk full"
    return StoreUnavailableError(f"{what}: {detail}", reason)


@contextlib.contextmanager
def faults_as_unavailable(what: str, path: Path | None = None) -> Iterator[None]:
    """Turns a storage fault raised inside into StoreUnavailableError naming `what`;
    anything else (a constraint, a bug) goes through unchanged."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        error = unavailable(exc, what, path)
        if error is None:
            raise
        raise error from None


def connect(path: Path, cfg: SqliteConfig, schema: str) -> sqlite3.Connection:
    """Opens path in autocommit mode with cfg's pragmas and makes sure schema exists.

    Raises what SQLite raises; open_checked() tells corruption from storage faults."""
    private_dir(path.parent)
    private_file(path)  # 0600 before SQLite creates it: its -wal and -shm take its mode
    for suffix in ("-wal", "-shm"):
        companion = Path(str(path) + suffix)
        if companion.exists():
            tighten(companion)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout={int(cfg.busy_timeout_ms)}")
        mode = db.execute(f"PRAGMA journal_mode={cfg.journal_mode}").fetchone()[0]
        if mode.upper() != cfg.journal_mode:
            # SQLite keeps the old mode when it cannot create the -wal: a read-only place.
            raise StoreUnavailableError(
                f"{path}: journal_mode stays {mode}, wanted {cfg.journal_mode} "
                "(is the file or its directory read-only?)", "read_only")
        db.execute(f"PRAGMA synchronous={cfg.synchronous}")
        db.execute(f"PRAGMA cache_size={int(cfg.cache_size)}")
        db.execute(f"PRAGMA temp_store={cfg.temp_store}")
        db.execute(f"PRAGMA mmap_size={int(cfg.mmap_size)}")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


def _link_unique(src: Path, name_of: Callable[[int], Path]) -> Path:
    """Gives src the first free name of name_of(1), name_of(2)... and removes the old one.
    A hard link fails when its name is taken, so nothing is ever replaced."""
    for n in itertools.count(1):
        dst = name_of(n)
        try:
            os.link(src, dst)
        except FileExistsError:
            continue
        except OSError as exc:  # a file system without hard links
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if dst.exists():
                continue
            os.rename(src, dst)
            return dst
        os.unlink(src)
        return dst
    raise AssertionError("unreachable")


def move_aside(path: Path) -> Path:
    """Renames path (and its -wal and -shm) to path.corrupt-<timestamp>-<n>, with n the
    first number no earlier aside file of that second uses."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = _link_unique(path, lambda n: path.with_name(f"{path.name}.corrupt-{stamp}-{n}"))
    for suffix in ("-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():  # must go too: a fresh file would read the old file's WAL
            _link_unique(src, lambda n: Path(str(aside) + suffix + ("" if n == 1 else f".{n}")))
    return aside


def open_checked(path: Path, cfg: SqliteConfig, schema: str, *, what: str,
                 on_corrupt: Callable[[str], None] | None = None) -> sqlite3.Connection:
    """connect() and quick_check. A corrupt file is moved aside and started fresh (and
    on_corrupt told); a storage fault raises StoreUnavailableError and leaves the file
    where it is; any other error goes through."""
    label = f"{what} {path.name}"
    try:
        try:
            db = connect(path, cfg, schema)
            try:
                result = db.execute("PRAGMA quick_check").fetchone()[0]
            except BaseException:
                db.close()
                raise
            if result == "ok":
                return db
            db.close()
            problem = f"quick_check: {result}"
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            problem = f"{exc} ({exc.sqlite_errorname})"
        aside = move_aside(path)
        message = f"{what} {path} was corrupt ({problem}); moved to {aside.name} and started fresh"
        log.error(message)
        if on_corrupt:
            on_corrupt(message)
        return connect(path, cfg, schema)
    except (sqlite3.Error, OSError) as exc:
        error = unavailable(exc, label, path)
        if error is None:
            raise
        raise error from None


def probe(db: sqlite3.Connection) -> None:
    """One small committed write: raises while the file cannot take writes."""
    with transaction(db):
        db.execute(PROBE_SCHEMA)
        db.execute("INSERT OR REPLACE INTO storage_probe (id, at) VALUES (1, ?)", (time.time(),))


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (the connection autocommits).

    A failed COMMIT (disk full, busy) is rolled back too. SQLite may already have rolled
    back on its own after SQLITE_FULL or SQLITE_IOERR; a ROLLBACK then would fail and hide
    the error that matters, so it is issued only inside a transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("rollback failed after an error: %s", exc)
        raise
