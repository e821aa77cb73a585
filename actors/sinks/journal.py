"""The alert side's delivery journal: one row per (item key, sink), so redelivery never
alerts twice (invariant 4 in docs/architecture.md). A SQLite file owned by the alert
actor kind; its instances coordinate through SQLite's own locking.

Before a sink is tried the row says "sending" with the owner process and a sink mark; a
row left "sending" by a dead owner is settled by asking the sink whether the key was
written after the mark.

The file is checked at start like every SQLite file (actors/storage/sqlite.py): a corrupt
one is moved aside, a storage fault (disk full, locked...) raises StoreUnavailableError,
and so does every method here; the alert actor then holds its alerts until it works again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import psutil

from actors.storage import faults_as_unavailable, open_checked, probe, transaction
from actors.storage.sqlite import Schema, backup

if TYPE_CHECKING:
    from catalyst_config import SqliteConfig

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

    def purge(self) -> int:
        with faults_as_unavailable(self.label, self.path):
            return self.db.execute("DELETE FROM sent WHERE state=? AND at < ?",
                                   (DONE, time.time() - self.ttl_s)).rowcount

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
