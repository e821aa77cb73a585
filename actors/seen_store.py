"""SeenStore: seen keys and the delivery ledger, in one SQLite file owned by one process.

The file is an append-only ledger: one row per claimed key (or cross-wire signature), in
arrival order, with its state; a pending row keeps its item, so it is sent again after
any crash (Titanic). Membership is answered from memory: the owner holds the 128-bit
hashes of every live key (bounded by the TTL purge, which forgets them with their rows)
and the row number of every pending one, rebuilt from the file at start. A claim then
costs an append and no random B-tree insert: measured here 295k keys/s raw, against 141k
with a UNIQUE hash index and ~37k with text keys (DESIGN section 9). The single owner (an
exclusive flock, invariant 1) is what makes the in-memory index the truth.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import msgspec

from actors.errors import StoreLockedError
from actors.protocol import Item
from actors.sqlite_files import open_checked, transaction

log = logging.getLogger("catalyst.seen_store")

SEEN, PENDING, DELIVERED, FILTERED, DEAD = 0, 1, 2, 3, 4
STATE_NAMES = {SEEN: "seen", PENDING: "pending", DELIVERED: "delivered", FILTERED: "filtered",
               DEAD: "dead"}
OUTCOMES = {"delivered": DELIVERED, "filtered": FILTERED}
UNSENT_RETRY_S = 0.1  # an item the next stage could not take yet is tried again this soon
# Fewer, larger checkpoints: a page rewritten by many commits is copied back once.
WAL_AUTOCHECKPOINT_PAGES = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    hh BLOB NOT NULL,
    key TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    seen_at REAL NOT NULL,
    payload BLOB
);
CREATE INDEX IF NOT EXISTS ledger_pending ON ledger(lease_until) WHERE state = 1;
"""

_item_encoder = msgspec.msgpack.Encoder()
_item_decoder = msgspec.msgpack.Decoder(Item)


def key_hash(key: str) -> bytes:
    """128 bits of a key: no collision is to be expected among billions of keys."""
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


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
            self.db = open_checked(self.path, sqlite_cfg, SCHEMA, what="SeenStore",
                                   on_corrupt=on_corrupt)
            self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            self._load()
        except BaseException:
            self.lock.release()
            raise

    def _load(self) -> None:
        """The in-memory index, from the file: live keys, and pending keys' rows."""
        self.live: set[bytes] = set()
        self.pending_rows: dict[bytes, int] = {}
        for seq, hh, state in self.db.execute("SELECT seq, hh, state FROM ledger"):
            self.live.add(hh)
            if state == PENDING:
                self.pending_rows[hh] = seq
        row = self.db.execute("SELECT max(seq) FROM ledger").fetchone()
        self.next_seq = (row[0] or 0) + 1

    # Claiming -----------------------------------------------------------

    def claim(self, items: Iterable[Item], now: float | None = None) -> list[Item]:
        """Claims items atomically; returns those that were new, now pending (attempt 1).

        An item is a duplicate when its key or its cross-wire signature was seen before.
        """
        now = time.time() if now is None else now
        lease_until = now + self.lease_s
        new: list[Item] = []
        rows: list[tuple] = []
        added: dict[bytes, int] = {}  # hash -> seq, or 0 for a seen-only mark
        seq = self.next_seq
        for item in items:
            hk = key_hash(item.key)
            if hk in self.live or hk in added:
                continue
            if item.signature:
                sig = "sig:" + item.signature
                hs = key_hash(sig)
                if hs in self.live or hs in added:  # a copy already seen on another wire
                    rows.append((seq, hk, item.key, SEEN, 0, None, now, None))
                    added[hk], seq = 0, seq + 1
                    continue
                rows.append((seq, hs, sig, SEEN, 0, None, now, None))
                added[hs], seq = 0, seq + 1
            rows.append((seq, hk, item.key, PENDING, 1, lease_until, now,
                         _item_encoder.encode(item)))
            added[hk], seq = seq, seq + 1
            new.append(item)
        if rows:
            with transaction(self.db):
                self.db.executemany("INSERT INTO ledger VALUES (?,?,?,?,?,?,?,?)", rows)
            self.next_seq = seq  # only once the rows are committed
            self.live.update(added)
            self.pending_rows.update((h, s) for h, s in added.items() if s)
        return new

    # The ledger ----------------------------------------------------------

    def _pending_seqs(self, keys: list[str]) -> list[tuple[bytes, int]]:
        found = []
        for key in keys:
            hk = key_hash(key)
            seq = self.pending_rows.get(hk)
            if seq is not None:
                found.append((hk, seq))
        return found

    def finish(self, keys: list[str], outcome: str, now: float | None = None) -> int:
        """Marks pending keys delivered or filtered; returns how many were pending."""
        rows = self._pending_seqs(keys)
        if rows:
            with transaction(self.db):
                self.db.executemany(
                    "UPDATE ledger SET state = ?, payload = NULL, lease_until = NULL "
                    "WHERE seq = ?", [(OUTCOMES[outcome], seq) for _, seq in rows])
            for hk, _ in rows:
                self.pending_rows.pop(hk, None)
        return len(rows)

    def unsent(self, keys: list[str], now: float | None = None) -> None:
        """The next stage did not take these: try again soon, without counting an attempt."""
        now = time.time() if now is None else now
        with transaction(self.db):
            self.db.executemany(
                "UPDATE ledger SET attempts = max(attempts - 1, 0), lease_until = ? "
                "WHERE seq = ?", [(now + UNSENT_RETRY_S, seq)
                                  for _, seq in self._pending_seqs(keys)])

    def due(self, now: float | None = None, limit: int = 500) -> DueResult:
        """Leases that expired: the items to send again, and those that go dead."""
        now = time.time() if now is None else now
        resend, dead, updates, deaths = [], [], [], []
        rows = self.db.execute(
            "SELECT seq, hh, attempts, payload FROM ledger WHERE state = 1 AND lease_until <= ? "
            "ORDER BY lease_until LIMIT ?", (now, limit)).fetchall()
        if not rows:
            return DueResult([], [])
        for seq, hh, attempts, payload in rows:
            item = _item_decoder.decode(payload)
            if attempts >= self.max_attempts:
                dead.append((hh, item))
                deaths.append((now, seq))
            else:
                resend.append(Redelivery(item, attempts + 1))
                updates.append((now + self.lease_s, seq))
        with transaction(self.db):
            self.db.executemany(
                "UPDATE ledger SET attempts = attempts + 1, lease_until = ? WHERE seq = ?",
                updates)
            # A dead letter keeps its item for inspection; seen_at restarts its TTL.
            self.db.executemany(
                "UPDATE ledger SET state = 4, lease_until = NULL, seen_at = ? WHERE seq = ?",
                deaths)
        for hh, _ in dead:
            self.pending_rows.pop(hh, None)
        return DueResult(resend, [item for _, item in dead])

    def expire_all_leases(self) -> int:
        """At start: every pending item is due now, so it is sent again at once."""
        with transaction(self.db):
            return self.db.execute("UPDATE ledger SET lease_until = 0 WHERE state = 1").rowcount

    def pending_count(self) -> int:
        return len(self.pending_rows)

    def live_keys(self) -> int:
        return len(self.live)

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, count(*) FROM ledger GROUP BY state")
        return {STATE_NAMES[s]: n for s, n in rows}

    def purge(self, now: float | None = None) -> int:
        """Forgets finished keys and dead letters older than the TTL; never pending ones."""
        cutoff = (time.time() if now is None else now) - self.ttl_s
        with transaction(self.db):
            gone = self.db.execute("DELETE FROM ledger WHERE state != 1 AND seen_at < ? "
                                   "RETURNING hh", (cutoff,)).fetchall()
        self.live.difference_update(hh for (hh,) in gone)
        return len(gone)

    def integrity_check(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            self.lock.release()
