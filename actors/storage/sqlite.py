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

Schema versions: each file records its schema's version in PRAGMA user_version (Schema
below). A fresh file gets the current version; an older one runs its migrations, one
transaction per step, at open; a file from a newer version of the service is refused
(SchemaTooNewError, a StoreUnavailableError: the file stays where it is, never moved aside
as corrupt, and its owner stays up with the store away, as for a locked file, until a
file it can read is there). A file with no user_version but with tables is version 1,
the schema of every file before versions were recorded.

Backups (backup()): the owner copies its open file with SQLite's online backup API to a
temporary name in the backup directory and renames it into place.
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Union

from actors.errors import CommandError, StoreUnavailableError
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


# A migration step: SQL run as one script, or a function given the connection, inside the
# step's transaction (BEGIN IMMEDIATE ... COMMIT, the new user_version with it).
Step = Union[str, Callable[[sqlite3.Connection], None]]
LEGACY_VERSION = 1  # a file with tables and no user_version: from before versions


class SchemaTooNewError(StoreUnavailableError):
    """The file was written by a newer version of the service: its schema version is
    higher than this code knows. Not corruption: the file is left exactly where it is."""

    def __init__(self, message: str):
        super().__init__(message, "schema_too_new")

    @property
    def event(self) -> str:
        return "store_schema_too_new"


@dataclass(frozen=True)
class Schema:
    """A file's schema: the current version, the script that makes it (idempotent: CREATE
    ... IF NOT EXISTS, run on every open after the migrations), and the migrations, by the
    version they start from: migrations[n] takes a file from version n to n + 1."""

    version: int
    script: str
    migrations: dict[int, Step] = field(default_factory=dict)

    def __post_init__(self):
        missing = [n for n in range(LEGACY_VERSION, self.version) if n not in self.migrations]
        if self.version < LEGACY_VERSION or missing:
            raise ValueError(f"schema version {self.version} lacks migrations from {missing}")


def _user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _step(db: sqlite3.Connection, step: Step, version: int) -> None:
    """One step in one transaction, recording version with it."""
    if isinstance(step, str):
        # executescript commits what is open first, so the transaction is in the script.
        try:
            db.executescript(f"BEGIN IMMEDIATE;\n{step}\n;PRAGMA user_version = {int(version)};"
                             "\nCOMMIT;")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return
    with transaction(db):
        step(db)
        db.execute(f"PRAGMA user_version = {int(version)}")


def refuse_newer(db: sqlite3.Connection, schema: Schema, path: Path, what: str) -> int:
    """The file's schema version; SchemaTooNewError when it is newer than schema's."""
    found = _user_version(db)
    if found > schema.version:
        raise SchemaTooNewError(
            f"{what} {path} has schema version {found}, newer than version {schema.version} "
            "that this version of catalyst-supervisor supports: it was written by a newer "
            "release. Run that release, or restore a backup made by this one; the file is "
            "left as it is")
    return found


def migrate(db: sqlite3.Connection, schema: Schema, path: Path, what: str) -> int:
    """Brings the file to schema.version: creates a fresh one, migrates an older one step by
    step; refuses a newer one (SchemaTooNewError). Returns the version the file had."""
    found = refuse_newer(db, schema, path, what)
    if found == 0:
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if not tables:  # a fresh file: today's schema at once
            _step(db, schema.script, schema.version)
            return 0
        found = LEGACY_VERSION
    for version in range(found, schema.version):
        log.info("%s %s: migrating schema from version %d to %d", what, path.name, version,
                 version + 1)
        _step(db, schema.migrations[version], version + 1)
    if _user_version(db) != schema.version:  # a legacy file already at the current one
        _step(db, "", schema.version)
    db.executescript(schema.script)
    return found


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


def connect(path: Path, cfg: SqliteConfig, schema: Schema | str, *,
            what: str = "SQLite file") -> sqlite3.Connection:
    """Opens path in autocommit mode with cfg's pragmas and makes sure schema exists: a
    Schema is migrated to its version (migrate()), a plain script just run.

    Raises what SQLite raises (and SchemaTooNewError); open_checked() tells corruption
    from storage faults."""
    private_dir(path.parent)
    private_file(path)  # 0600 before SQLite creates it: its -wal and -shm take its mode
    for suffix in ("-wal", "-shm"):
        companion = Path(str(path) + suffix)
        if companion.exists():
            tighten(companion)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout={int(cfg.busy_timeout_ms)}")
        if isinstance(schema, Schema):  # before any pragma writes to a file not ours to change
            refuse_newer(db, schema, path, what)
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
        if isinstance(schema, Schema):
            migrate(db, schema, path, what)
        else:
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


def open_checked(path: Path, cfg: SqliteConfig, schema: Schema | str, *, what: str,
                 on_corrupt: Callable[[str], None] | None = None) -> sqlite3.Connection:
    """connect() and quick_check. A corrupt file is moved aside and started fresh (and
    on_corrupt told); a storage fault raises StoreUnavailableError and leaves the file
    where it is; any other error goes through."""
    label = f"{what} {path.name}"
    try:
        try:
            db = connect(path, cfg, schema, what=what)
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
        return connect(path, cfg, schema, what=what)
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


# Backups ------------------------------------------------------------------------------

MAX_BACKUP_PATH_CHARS = 1024  # a backup directory's path; PATH_MAX is 4096, file names add


def backup_dir(text: object, data_dir: Path | None = None) -> Path:
    """The backup directory an operator named, or a CommandError-worthy ValueError saying
    why not: it must be an absolute path of sane length, and not the data_dir itself (the
    copies would replace the live files)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"the backup directory must be a path, got {type(text).__name__}")
    if len(text) > MAX_BACKUP_PATH_CHARS or "\x00" in text:
        raise ValueError(f"the backup directory must be a path of at most "
                         f"{MAX_BACKUP_PATH_CHARS} characters without NUL")
    path = Path(os.path.normpath(text))
    if not path.is_absolute():
        raise ValueError(f"the backup directory must be an absolute path, got {text[:80]!r}")
    if data_dir is not None and path.resolve() == Path(data_dir).resolve():
        raise ValueError(f"the backup directory {path} is the data_dir: the copies would "
                         "replace the live files; name another directory")
    return path


def backup(db: sqlite3.Connection, name: str, directory: Path, *, what: str) -> dict:
    """Copies the open database db to directory/name with SQLite's online backup API, in
    one step, so the copy is one consistent snapshot (a read transaction, which in WAL
    mode never blocks writers), written to a temporary name in directory, synced, and
    renamed into place (an earlier copy is replaced only by a complete one). The
    directory is made 0700, the copy 0600. Returns {file, path, bytes, pages}; raises
    StoreUnavailableError for a storage fault of either side (disk full, read-only...)."""
    directory = Path(directory)
    final = directory / name
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    try:
        with faults_as_unavailable(f"backup of {what} to {directory}", directory):
            private_dir(directory)
            if not directory.is_dir():
                raise StoreUnavailableError(f"backup of {what}: {directory} is not a "
                                            "directory", "cant_open")
            private_file(tmp)
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.backup(dst, pages=-1)
                pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
            finally:
                dst.close()
            for suffix in ("-wal", "-shm", "-journal"):  # none should be left; never copied
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(tmp) + suffix)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename itself survives a crash
            finally:
                os.close(fd)
            return {"file": name, "path": str(final), "bytes": final.stat().st_size,
                    "pages": pages}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def backup_command(args: dict, data_dir: Path, copy: Callable[[Path], dict]) -> dict:
    """An owner's side of the operator's backup command ({"dir": absolute path}): checks
    the directory and runs copy(directory); every failure is a CommandError that says why
    (a bad directory, a full disk, a read-only place...)."""
    unknown = sorted(str(k)[:80] for k in args if k != "dir")
    if unknown:
        raise CommandError(f"backup takes only dir (got {', '.join(unknown)})")
    try:
        directory = backup_dir(args.get("dir"), data_dir)
    except ValueError as exc:
        raise CommandError(f"backup: {exc}") from None
    try:
        return copy(directory)
    except StoreUnavailableError as exc:
        raise CommandError(f"backup failed ({exc.reason}): {exc}") from None
