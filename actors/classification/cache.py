"""The analysis cache: what the model said of an item, so it is never paid for twice.

Keyed by item key and content hash. A bounded in-memory TTL cache sits in front of a
SQLite file in data_dir that only llm actors open (WAL and busy_timeout let several llm
instances share it through SQLite's own locking). Rows expire after a TTL and are purged
on a schedule; an amended filing (8-K/A) drops the analyses of the same company's
earlier filings of that form.

The file is a cache: when it cannot be used (disk full, I/O error, locked:
StoreUnavailableError) the cache goes on in memory alone, raises one admin event, and
tries the file again with backoff (StoreOutage); a redelivered item is still answered
from memory within cache_size and cache_ttl_s.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import cachetools
import msgspec

from actors.errors import StoreUnavailableError
from actors.protocol import Analysis, Item
from actors.storage import StoreOutage, faults_as_unavailable, open_checked, transaction
from actors.storage.sqlite import Schema

if TYPE_CHECKING:
    from catalyst_config import SqliteConfig

log = logging.getLogger("catalyst.llm")

CACHE_FILE = "llm_cache.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS analyses (
    key TEXT NOT NULL,
    content TEXT NOT NULL,
    cik TEXT,
    form TEXT,
    published REAL,
    analysis BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key, content)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS analyses_filer ON analyses(cik, form) WHERE cik IS NOT NULL;
CREATE INDEX IF NOT EXISTS analyses_expiry ON analyses(expires);
"""
# Version 2 added per-feed daily spend (the usage monitor, gemini/usage.py, which owns the
# rest of its tables and makes them itself).
FEED_USAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS feed_usage (
    day TEXT NOT NULL,
    feed TEXT NOT NULL,
    actor TEXT NOT NULL,
    items INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, feed, actor)
) WITHOUT ROWID;
"""
# PRAGMA user_version of llm_cache.db (actors/storage/sqlite.py, Schema).
LLM_SCHEMA = Schema(2, SCHEMA + FEED_USAGE_SCHEMA, {1: FEED_USAGE_SCHEMA})

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Analysis)


def content_hash(item: Item) -> str:
    """What the analysis depends on: a changed title or summary is a new analysis."""
    text = f"{item.title}\x00{item.summary}\x00{item.form or ''}".encode()
    return hashlib.blake2b(text, digest_size=12).hexdigest()


def normal_form(form: str | None) -> str:
    """ "8-k / a" -> "8-K/A": upper case, no spaces around the slash."""
    return "".join((form or "").upper().split())


def amended_form(item: Item) -> str | None:
    """The form an amendment amends ("8-K" for an "8-K/A"), or None."""
    form = normal_form(item.form)
    return form[:-2] if item.kind == "sec" and item.cik and form.endswith("/A") else None


def open_llm_db(path: Path, sqlite_cfg: SqliteConfig, on_corrupt: Callable[[str], None] | None = None
                ) -> sqlite3.Connection:
    """Opens (or creates) the llm actors' database; a corrupt one is moved aside, and a
    storage fault (disk full, locked...) raises StoreUnavailableError, the file kept."""
    return open_checked(path, sqlite_cfg, LLM_SCHEMA, what="llm cache", on_corrupt=on_corrupt)


class AnalysisCache:
    """Analyses by (item key, content hash): memory first, then the SQLite file.

    db None: the file is not open (it was away at start); opener, when given, opens it,
    tried again with backoff. admin(event, message, reason=, level=) hears of outages."""

    def __init__(self, db: sqlite3.Connection | None, *, ttl_s: float, memory_size: int,
                 clock: Callable[[], float] = time.time,
                 opener: Callable[[], sqlite3.Connection] | None = None,
                 admin: Callable[..., None] | None = None):
        self.db = db
        self.opener = opener
        self.ttl_s = ttl_s
        self.clock = clock
        self.memory: cachetools.TTLCache = cachetools.TTLCache(maxsize=memory_size, ttl=ttl_s)
        self.hits = self.misses = self.invalidated = self.purged = 0
        self.skipped_writes = 0  # analyses kept in memory only: the file was away
        self.outage = StoreOutage(CACHE_FILE, notify=admin,
                                  effect="analyses are cached in memory only meanwhile")
        if db is None and opener is None:
            raise ValueError("AnalysisCache needs a connection or an opener")

    def _file(self) -> sqlite3.Connection | None:
        """The connection when the file may be used now: open and up, or a try is due
        (opening it, when it never opened)."""
        now = time.monotonic()
        self.outage.settle(now)
        if not self.outage.usable(now):
            return None
        if self.db is None:
            try:
                self.db = self.opener()
            except StoreUnavailableError as exc:
                self.outage.failed(exc, now)
                return None
        return self.db

    def _use(self, work: Callable[[sqlite3.Connection], object], default=None, *,
             writes: bool = True):
        """work(connection), or default when the file is away (a failure starts or
        continues the outage). Only a write that works ends one: a full disk still reads."""
        db = self._file()
        if db is None:
            return default
        try:
            with faults_as_unavailable(CACHE_FILE):
                result = work(db)
        except StoreUnavailableError as exc:
            self.outage.failed(exc)
            return default
        if writes:
            self.outage.ok()
        return result

    def get(self, key: str, content: str) -> Analysis | None:
        analysis = self.memory.get((key, content))
        if analysis is None:
            row = self._use(lambda db: db.execute(
                "SELECT analysis FROM analyses WHERE key = ? AND content = ? AND expires > ?",
                (key, content, self.clock())).fetchone(), writes=False)
            if row is None:
                self.misses += 1
                return None
            analysis = _decoder.decode(row[0])
            self.memory[(key, content)] = analysis
        self.hits += 1
        self._use(lambda db: db.execute(
            "UPDATE analyses SET hits = hits + 1 WHERE key = ? AND content = ?", (key, content)))
        return analysis

    def put_many(self, entries: list[tuple[Item, str, Analysis]]) -> None:
        """Stores analyses in one transaction (in memory alone while the file is away)."""
        if not entries:
            return
        now = self.clock()
        rows = []
        for item, content, analysis in entries:
            self.memory[(item.key, content)] = analysis
            rows.append((item.key, content, item.cik, normal_form(item.form) or None,
                         item.published, _encoder.encode(analysis), now, now + self.ttl_s))

        def write(db: sqlite3.Connection) -> bool:
            with transaction(db):
                db.executemany(
                    "INSERT OR REPLACE INTO analyses (key, content, cik, form, published,"
                    " analysis, created, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return True
        if not self._use(write, default=False):
            self.skipped_writes += len(rows)

    def invalidate_amended(self, amendment: Item) -> int:
        """Drops the cached analyses of the filer's earlier filings of the amended form.

        An 8-K/A replaces what the 8-K said: an analysis of the 8-K (or of an earlier
        8-K/A) answered from the cache would repeat what the amendment corrected. (While
        the file is away nothing is dropped: memory does not know filers.)
        """
        base = amended_form(amendment)
        if base is None:
            return 0
        published = amendment.published
        where = ("cik = ? AND form IN (?, ?) AND key != ?"
                 " AND (? IS NULL OR published IS NULL OR published <= ?)")
        args = (amendment.cik, base, base + "/A", amendment.key, published, published)

        def drop(db: sqlite3.Connection) -> list:
            with transaction(db):
                gone = db.execute(f"SELECT key, content FROM analyses WHERE {where}",
                                  args).fetchall()
                db.execute(f"DELETE FROM analyses WHERE {where}", args)
            return gone
        gone = self._use(drop, default=[])
        for key, content in gone:
            self.memory.pop((key, content), None)
        self.invalidated += len(gone)
        if gone:
            log.info("%s invalidated %d cached analyses of earlier %s filings of CIK %s",
                     amendment.key, len(gone), base, amendment.cik)
        return len(gone)

    def purge_expired(self) -> int:
        def purge(db: sqlite3.Connection) -> int:
            with transaction(db):
                return db.execute("DELETE FROM analyses WHERE expires <= ?",
                                  (self.clock(),)).rowcount
        removed = self._use(purge, default=0)
        self.purged += removed
        return removed

    def stats(self) -> dict:
        return {"cache_hits": self.hits, "cache_misses": self.misses,
                "cache_size": len(self.memory), "cache_invalidated": self.invalidated,
                "cache_purged": self.purged, "cache_store": self.outage.state,
                "cache_writes_skipped": self.skipped_writes}
