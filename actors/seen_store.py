"""SeenStore: seen keys and the delivery ledger, in one SQLite file owned by one process.

Keys are found through a 64-bit hash of the item key (the full key is kept and compared;
a collision probes the next slot), in a narrow UNIQUE index, while the rows themselves are
appended in arrival order. A new key then costs one small index entry on a random page
plus an append, instead of a wide row on a random page: measured here 141k claims/s raw
against 59k for rows keyed by the hash itself, and ~37k for text keys (DESIGN section 9).

Two tables, split by temperature. ``pending`` is the ledger of items in flight: small and
hot, so a claim of new items writes to a few pages that stay cached. ``seen`` holds every
finished key (delivered, filtered, a cross-wire copy) and grows to the TTL; an insert into
it lands on a random page, so rows move there when acknowledged, in batches. A key is seen
when it is in either table. Pending rows keep the item, so it is sent again after any crash
(Titanic); dead letters stay in ``pending`` with their item until the TTL.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import msgspec

from actors.errors import StoreLockedError
from actors.protocol import Item

log = logging.getLogger("catalyst.seen_store")

SEEN, PENDING, DELIVERED, FILTERED, DEAD = 0, 1, 2, 3, 4
STATE_NAMES = {SEEN: "seen", PENDING: "pending", DELIVERED: "delivered", FILTERED: "filtered",
               DEAD: "dead"}
OUTCOMES = {"delivered": DELIVERED, "filtered": FILTERED}
UNSENT_RETRY_S = 1.0  # an item the next stage could not take yet is tried again this soon
MAX_PROBES = 16
SQL_CHUNK = 900  # host parameters per IN (...) list
# Fewer, larger checkpoints: a page rewritten by many commits is copied back once.
WAL_AUTOCHECKPOINT_PAGES = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    seq INTEGER PRIMARY KEY,
    h INTEGER NOT NULL UNIQUE,
    key TEXT NOT NULL,
    state INTEGER NOT NULL,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY,
    h INTEGER NOT NULL UNIQUE,
    key TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    lease_until REAL,
    seen_at REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_lease ON pending(lease_until) WHERE state = 1;
"""

_item_encoder = msgspec.msgpack.Encoder()
_item_decoder = msgspec.msgpack.Decoder(Item)


def key_hash(key: str, probe: int = 0) -> int:
    """Signed 64-bit hash of a key; probe > 0 gives the next slot after a collision."""
    data = key.encode() if not probe else f"{key}\x00{probe}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


@dataclass
class Redelivery:
    item: Item
    attempt: int


@dataclass
class DueResult:
    resend: list[Redelivery]
    dead: list[Item]


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


class SqliteSeenStore:
    """The embedded SeenStore backend. Only the dedupe actor constructs one."""

    def __init__(self, path: Path, *, sqlite_cfg, lease_s: float, max_attempts: int,
                 ttl_s: float, on_corrupt: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.ttl_s = ttl_s
        self.lock = FileLock(self.path.with_name(self.path.name + ".lock"))
        try:
            self.db = self._open_checked(sqlite_cfg, on_corrupt)
        except BaseException:
            self.lock.release()
            raise

    # Opening ------------------------------------------------------------

    def _connect(self, cfg) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        db.execute(f"PRAGMA busy_timeout={int(cfg.busy_timeout_ms)}")
        mode = db.execute(f"PRAGMA journal_mode={cfg.journal_mode}").fetchone()[0]
        if mode.upper() != cfg.journal_mode:
            raise sqlite3.DatabaseError(f"journal_mode is {mode}, wanted {cfg.journal_mode}")
        db.execute(f"PRAGMA synchronous={cfg.synchronous}")
        db.execute(f"PRAGMA cache_size={int(cfg.cache_size)}")
        db.execute(f"PRAGMA temp_store={cfg.temp_store}")
        db.execute(f"PRAGMA mmap_size={int(cfg.mmap_size)}")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        db.executescript(SCHEMA)
        return db

    def _open_checked(self, cfg, on_corrupt) -> sqlite3.Connection:
        try:
            db = self._connect(cfg)
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                db.close()
                raise sqlite3.DatabaseError(f"quick_check: {result}")
            return db
        except sqlite3.DatabaseError as exc:
            aside = self._move_aside()
            message = (f"SeenStore {self.path} was corrupt ({exc}); moved to {aside.name} "
                       "and started fresh")
            log.error(message)
            if on_corrupt:
                on_corrupt(message)
            return self._connect(cfg)

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        return aside

    # Claiming -----------------------------------------------------------

    def _lookup(self, hashes: list[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for i in range(0, len(hashes), SQL_CHUNK):
            chunk = hashes[i:i + SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.execute(
                f"SELECT h, key FROM seen WHERE h IN ({marks}) "
                f"UNION ALL SELECT h, key FROM pending WHERE h IN ({marks})", chunk + chunk))
        return found

    def _slot(self, key: str, found: dict[int, str], taken: dict[int, str],
              h: int | None = None) -> tuple[int, bool]:
        """(slot, already_seen) for key, probing past collisions with other keys."""
        for probe in range(MAX_PROBES):
            if probe or h is None:
                h = key_hash(key, probe)
            other = taken.get(h)
            if other is None:
                other = found.get(h) if not probe else self._lookup([h]).get(h)
            if other is None:
                return h, False
            if other == key:
                return h, True
        raise RuntimeError(f"no free slot for key {key!r} after {MAX_PROBES} probes")

    def claim(self, items: Iterable[Item], now: float | None = None) -> list[Item]:
        """Claims items atomically; returns those that were new, now pending (attempt 1).

        An item is a duplicate when its key or its cross-wire signature was seen before.
        """
        now = time.time() if now is None else now
        items = list(items)
        sig_keys = ["sig:" + it.signature if it.signature else None for it in items]
        hashes = [key_hash(it.key) for it in items]
        new: list[Item] = []
        pending_rows, seen_rows = [], []
        lease_until = now + self.lease_s
        self.db.execute("BEGIN IMMEDIATE")
        try:
            found = self._lookup(hashes + [key_hash(s) for s in sig_keys if s])
            taken: dict[int, str] = {}
            for item, sig, h0 in zip(items, sig_keys, hashes):
                h, seen = self._slot(item.key, found, taken, h0)
                if seen:
                    continue
                taken[h] = item.key
                if sig:
                    hs, sig_seen = self._slot(sig, found, taken)
                    if sig_seen:  # a copy of a release already seen on another wire
                        seen_rows.append((h, item.key, SEEN, now))
                        continue
                    taken[hs] = sig
                    seen_rows.append((hs, sig, SEEN, now))
                pending_rows.append((h, item.key, PENDING, 1, lease_until, now,
                                     _item_encoder.encode(item)))
                new.append(item)
            self.db.executemany(
                "INSERT INTO pending (h, key, state, attempts, lease_until, seen_at, payload) "
                "VALUES (?,?,?,?,?,?,?)", pending_rows)
            self.db.executemany("INSERT INTO seen (h, key, state, seen_at) VALUES (?,?,?,?)",
                                seen_rows)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return new

    # The ledger ----------------------------------------------------------

    def _slots_of(self, keys: list[str]) -> list[int]:
        """Slots of the keys that were claimed before (in either table)."""
        found = self._lookup([key_hash(k) for k in keys])
        slots = []
        for key in keys:
            h, seen = self._slot(key, found, {})
            if seen:
                slots.append(h)
        return slots

    def finish(self, keys: list[str], outcome: str, now: float | None = None) -> int:
        """Moves pending keys to seen as delivered or filtered; returns how many were pending."""
        now = time.time() if now is None else now
        state = OUTCOMES[outcome]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            slots = [(h,) for h in self._slots_of(keys)]
            self.db.executemany(
                "INSERT OR IGNORE INTO seen (h, key, state, seen_at) SELECT h, key, ?, seen_at FROM pending "
                "WHERE h = ? AND state = 1", [(state, h) for (h,) in slots])
            before = self.db.total_changes
            self.db.executemany("DELETE FROM pending WHERE h = ? AND state = 1", slots)
            finished = self.db.total_changes - before
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return finished

    def unsent(self, keys: list[str], now: float | None = None) -> None:
        """The next stage did not take these: try again soon, without counting an attempt."""
        now = time.time() if now is None else now
        with self.db:
            self.db.executemany(
                "UPDATE pending SET attempts = max(attempts - 1, 0), lease_until = ? "
                "WHERE h = ? AND state = 1",
                [(now + UNSENT_RETRY_S, h) for h in self._slots_of(keys)])

    def due(self, now: float | None = None, limit: int = 500) -> DueResult:
        """Leases that expired: the items to send again, and those that go dead."""
        now = time.time() if now is None else now
        resend, dead, updates, deaths = [], [], [], []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            rows = self.db.execute(
                "SELECT h, attempts, payload FROM pending WHERE state = 1 AND lease_until <= ? "
                "ORDER BY lease_until LIMIT ?", (now, limit)).fetchall()
            for h, attempts, payload in rows:
                item = _item_decoder.decode(payload)
                if attempts >= self.max_attempts:
                    dead.append(item)
                    deaths.append((now, h))
                else:
                    resend.append(Redelivery(item, attempts + 1))
                    updates.append((now + self.lease_s, h))
            self.db.executemany(
                "UPDATE pending SET attempts = attempts + 1, lease_until = ? WHERE h = ?", updates)
            # A dead letter keeps its item for inspection; seen_at restarts its TTL.
            self.db.executemany(
                "UPDATE pending SET state = 4, lease_until = NULL, seen_at = ? WHERE h = ?",
                deaths)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return DueResult(resend, dead)

    def expire_all_leases(self) -> int:
        """At start: every pending item is due now, so it is sent again at once."""
        with self.db:
            return self.db.execute("UPDATE pending SET lease_until = 0 WHERE state = 1").rowcount

    def pending_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM pending WHERE state = 1").fetchone()[0]

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, count(*) FROM seen GROUP BY state "
                               "UNION ALL SELECT state, count(*) FROM pending GROUP BY state")
        return {STATE_NAMES[s]: n for s, n in rows}

    def purge(self, now: float | None = None) -> int:
        """Forgets finished keys and dead letters older than the TTL; never pending ones."""
        cutoff = (time.time() if now is None else now) - self.ttl_s
        with self.db:
            purged = self.db.execute("DELETE FROM seen WHERE seen_at < ?", (cutoff,)).rowcount
            purged += self.db.execute("DELETE FROM pending WHERE state = 4 AND seen_at < ?",
                                      (cutoff,)).rowcount
        return purged

    def integrity_check(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            self.lock.release()
