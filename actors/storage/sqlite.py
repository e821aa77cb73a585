"""The one way this project opens its SQLite files and writes to them.

Every file gets the pragmas of its own settings block (`dedupe.sqlite`, `llm.sqlite`, `alerts.sqlite`) (WAL, synchronous,
busy_timeout...); a file that fails quick_check at start is moved aside with a timestamp
and replaced by a fresh one, and whoever owns it is told, so the service goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from catalyst_config import SqliteConfig

log = logging.getLogger("catalyst.sqlite")


def connect(path: Path, cfg: SqliteConfig, schema: str) -> sqlite3.Connection:
    """Opens path in autocommit mode with cfg's pragmas and makes sure schema exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={int(cfg.busy_timeout_ms)}")
    mode = db.execute(f"PRAGMA journal_mode={cfg.journal_mode}").fetchone()[0]
    if mode.upper() != cfg.journal_mode:
        db.close()
        raise sqlite3.DatabaseError(f"journal_mode is {mode}, wanted {cfg.journal_mode}")
    db.execute(f"PRAGMA synchronous={cfg.synchronous}")
    db.execute(f"PRAGMA cache_size={int(cfg.cache_size)}")
    db.execute(f"PRAGMA temp_store={cfg.temp_store}")
    db.execute(f"PRAGMA mmap_size={int(cfg.mmap_size)}")
    db.executescript(schema)
    return db


def move_aside(path: Path) -> Path:
    """Renames path (and its -wal and -shm) to path.corrupt-<timestamp>."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    return aside


def open_checked(path: Path, cfg: SqliteConfig, schema: str, *, what: str,
                 on_corrupt: Callable[[str], None] | None = None) -> sqlite3.Connection:
    """connect(), after quick_check; a corrupt file is moved aside and started fresh."""
    try:
        db = connect(path, cfg, schema)
        result = db.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            db.close()
            raise sqlite3.DatabaseError(f"quick_check: {result}")
        return db
    except sqlite3.DatabaseError as exc:
        aside = move_aside(path)
        message = f"{what} {path} was corrupt ({exc}); moved to {aside.name} and started fresh"
        log.error(message)
        if on_corrupt:
            on_corrupt(message)
        return connect(path, cfg, schema)


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (the connection autocommits)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
