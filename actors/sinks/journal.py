"""The alert side's delivery journal: one row per (item key, sink), so redelivery never
alerts twice (invariant 4 in docs/architecture.md). A SQLite file owned by the alert
actor kind; its instances coordinate through SQLite's own locking.

Before a sink is tried the row says "sending" with the owner process and a sink mark; a
row left "sending" by a dead owner is settled by asking the sink whether the key was
written after the mark.

The file is checked at start like every SQLite file (actors/storage/sqlite.py): a corrupt
one is moved aside, a storage fault (disk full, locked...) raises StoreUnavailableError,
and so does every method here; the alert actor then holds its alerts until it works again.

open_journal() picks the backend: this file, or, when the deployment shares its state
through PostgreSQL (dedupe.backend: postgres), the shared journal of journal_postgres.py,
which alert actors on several hosts use at once (psycopg imported only then).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psutil

from actors.errors import StoreUnavailableError
from actors.storage import faults_as_unavailable, open_checked, probe, transaction
from actors.storage.sqlite import Schema, backup

if TYPE_CHECKING:
    from catalyst_config import Config, SqliteConfig

SENDING, DONE = 0, 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    key TEXT NOT NULL,
    sink TEXT NOT NULL,
    state INTEGER NOT NULL,
    owner_pid INTEGER,
    owner_started REAL,
    mark INTEGER,
    at REAL NOT NULL,
    PRIMARY KEY (key, sink)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sent_at ON sent(at);
"""
# PRAGMA user_version of alerts.db: version 1, the schema above, has no migration yet.
JOURNAL_SCHEMA = Schema(1, SCHEMA)

GO, ALREADY, BUSY, UNSURE = "go", "already", "busy", "unsure"


class DeliveryJournal(Protocol):
    """What the alert actor asks of its journal (AlertJournal, PostgresAlertJournal).
    Every method raises StoreUnavailableError while the journal cannot be used."""

    def begin(self, key: str, sink: str, mark: int | None) -> tuple[str, int | None]: ...
    def done(self, key: str, sink: str) -> None: ...
    def release(self, key: str, sink: str) -> None: ...
    def purge(self, now: float | None = None) -> int: ...
    def probe(self) -> None: ...
    def backup(self, directory: Path) -> dict: ...
    def close(self) -> None: ...


def journal_label(config: Config) -> str:
    """How events and logs name the configured journal."""
    if config.dedupe.backend == "postgres":
        from actors.sinks.journal_postgres import LABEL

        return LABEL
    return "alerts.db"


def open_journal(config: Config, *, name: str,
                 on_corrupt: Callable[[str], None] | None = None) -> DeliveryJournal:
    """The configured delivery journal, open: data_dir/alerts.db, or the PostgreSQL one
    when dedupe.backend is postgres (the one switch for a deployment that shares its state
    through PostgreSQL). name: the alert actor's, in the shared journal's holder ids.
    Raises StoreUnavailableError while it cannot be used (the actor tries again)."""
    ttl_s = config.dedupe.ttl_days * 86400.0
    if config.dedupe.backend == "postgres":
        from actors.sinks.journal_postgres import LABEL, PostgresAlertJournal

        pg = config.dedupe.postgres
        dsn = config.secrets.get(pg.dsn_env)
        if not dsn:  # the loader refuses this; an actor started without it waits, saying so
            raise StoreUnavailableError(f"{LABEL}: ${pg.dsn_env} is not set in the "
                                        "environment", "cant_open")
        return PostgresAlertJournal(dsn, pg_cfg=pg, ttl_s=ttl_s, name=name)
    return AlertJournal(config.path(config.data_dir) / "alerts.db",
                        sqlite_cfg=config.alerts.sqlite, ttl_s=ttl_s, on_corrupt=on_corrupt)


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.01
    except psutil.Error:
        return False


class AlertJournal:
    def __init__(self, path: Path, *, sqlite_cfg: SqliteConfig, ttl_s: float,
                 on_corrupt: Callable[[str], None] | None = None):
        self.label = path.name
        self.path = path
        self.db = open_checked(path, sqlite_cfg, JOURNAL_SCHEMA, what="alert journal",
                               on_corrupt=on_corrupt)
        self.ttl_s = ttl_s
        self.pid = os.getpid()
        self.started = psutil.Process(self.pid).create_time()

    def begin(self, key: str, sink: str, mark: int | None) -> tuple[str, int | None]:
        """Takes (key, sink) for this process: GO, or ALREADY delivered, or BUSY with a live
        owner, or UNSURE (a dead owner may have delivered; the old mark is returned)."""
        now = time.time()
        with faults_as_unavailable(self.label, self.path), transaction(self.db):
            row = self.db.execute(
                "SELECT state, owner_pid, owner_started, mark FROM sent WHERE key=? AND sink=?",
                (key, sink)).fetchone()
            verdict, old_mark = GO, None
            if row is not None:
                state, pid, started, old_mark = row
                if state == DONE:
                    verdict = ALREADY
                elif pid != self.pid and _alive(pid, started):
                    verdict = BUSY
                else:
                    verdict = UNSURE
            if verdict in (GO, UNSURE):
                self.db.execute(
                    "INSERT OR REPLACE INTO sent VALUES (?,?,?,?,?,?,?)",
                    (key, sink, SENDING, self.pid, self.started,
                     old_mark if verdict == UNSURE else mark, now))
        return verdict, old_mark

    def done(self, key: str, sink: str) -> None:
        with faults_as_unavailable(self.label, self.path):
            self.db.execute("UPDATE sent SET state=?, at=? WHERE key=? AND sink=?",
                            (DONE, time.time(), key, sink))

    def release(self, key: str, sink: str) -> None:
        """The sink failed before anything was written: forget the attempt."""
        with faults_as_unavailable(self.label, self.path):
            self.db.execute("DELETE FROM sent WHERE key=? AND sink=? AND state=?",
                            (key, sink, SENDING))

    def purge(self, now: float | None = None) -> int:
        """Deletes done rows older than the TTL (now: the wall clock, for tests)."""
        cutoff = (time.time() if now is None else now) - self.ttl_s
        with faults_as_unavailable(self.label, self.path):
            return self.db.execute("DELETE FROM sent WHERE state=? AND at < ?",
                                   (DONE, cutoff)).rowcount

    def probe(self) -> None:
        """One small committed write: raises StoreUnavailableError while the file cannot
        take writes."""
        with faults_as_unavailable(self.label, self.path):
            probe(self.db)

    def backup(self, directory: Path) -> dict:
        """A consistent copy of the journal in directory, made while alerts go on
        (actors/storage/sqlite.py, backup)."""
        return backup(self.db, self.path.name, directory, what="alert journal")

    def close(self) -> None:
        self.db.close()
