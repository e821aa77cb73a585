"""SeenStore: seen keys and the delivery ledger, in one SQLite file owned by one process.

The file is an append-only ledger: one row per claimed key (or cross-wire signature), in
arrival order, with its state; a pending row keeps its item and how often it was sent, so it
is sent again after any crash (Titanic). Membership is answered from memory: the owner holds
the 128-bit hashes of every live key (bounded by the TTL purge, which forgets them with
their rows) and, for every pending one, its row and lease, rebuilt from the file at start. A
claim then costs an append and no random B-tree insert: measured here 295k keys/s raw,
against 141k with a UNIQUE hash index and ~37k with text keys (docs/architecture.md,
Performance targets). The single owner (an exclusive flock, invariant 1 in
docs/architecture.md) is what makes memory the truth.

Leases live only in memory, on the monotonic clock: every pending item is due at start
anyway, and a lease index in the file cost a quarter of a one-key claim. While the file
cannot be written (disk full, locked: StoreUnavailableError) the owner suspends the leases,
so an outage sends nothing again and counts no attempt; memory changes only once the file
has the change, so a failed write leaves them agreeing.

First poll of a feed (fetch.first_poll): a small table names the feeds that have completed
a poll. Until a feed has, its items are recorded as seen and finished, not pending, when
its policy is mark_seen, so a new feed does not flood the sinks with its back catalogue.

Feed leases (which fetcher polls which feed) live in memory: this store serves the fetchers
of one host through its one dedupe actor, so memory is the whole truth while it runs. A
dedupe restart forgets them; each fetcher takes its feeds again at its next renewal (a
free lease is taken at once), so two fetchers may poll one feed until then, which costs
requests, never an alert twice (claims are atomic). Keeping them in seen.db would add a
schema version and a write per renewal for nothing a single host needs.

This is the embedded backend of the SeenStore interface (actors/seen_store/base.py).
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import msgspec

from actors.protocol import Item
from actors.seen_store.base import (DEAD, OUTCOMES, PENDING, SEEN, STATE_NAMES, UNSENT_RETRY_S,
                                    DueResult, FeedGrant, NewItem, Redelivery, dead_letter,
                                    decode_item, encode_item, key_hash)
from actors.seen_store.sharing import owned_by
from actors.storage import FileLock, faults_as_unavailable, open_checked, probe, transaction
from actors.storage.sqlite import Schema, backup

if TYPE_CHECKING:
    from catalyst_config import SqliteConfig

log = logging.getLogger("catalyst.seen_store")

# Fewer, larger checkpoints: a page rewritten by many commits is copied back once.
WAL_AUTOCHECKPOINT_PAGES = 10_000
# Memory the key index holds per live key, by design (a 16-byte hash in a set, plus the
# set's growth): measured 102 B a key over 1,000,000 claims through a real SeenStore
# (tests/test_memory_trend.py re-measures it). The supervisor judges leaks net of it.
LIVE_KEY_BYTES = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    hh BLOB NOT NULL,
    key TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- sends; counted at claim for the first one
    seen_at REAL NOT NULL,
    payload BLOB
);
DROP INDEX IF EXISTS ledger_pending;  -- files from before leases moved to memory
"""
# Feeds that have completed a poll (fetch.first_poll): schema version 2.
FEEDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS feeds_polled (
    name TEXT PRIMARY KEY,
    first_polled_at REAL NOT NULL
) WITHOUT ROWID;
"""
SCHEMA_VERSION = 2  # PRAGMA user_version of seen.db (actors/storage/sqlite.py, Schema)


def schema(feeds: Iterable[str]) -> Schema:
    """seen.db's schema; feeds: the configured feed names, for the step to version 2."""
    names = sorted(feeds)

    def add_feeds_polled(db: sqlite3.Connection) -> None:
        """Version 1 to 2: the feeds_polled table. A ledger from before it has polled its
        configured feeds already, and its first poll after the upgrade must alert what is
        new, not mark it seen: those feeds are recorded as polled."""
        db.execute(FEEDS_SCHEMA.strip())
        if db.execute("SELECT 1 FROM ledger LIMIT 1").fetchone():
            db.executemany(
                "INSERT OR IGNORE INTO feeds_polled (name, first_polled_at) VALUES (?, ?)",
                [(name, time.time()) for name in names])

    return Schema(SCHEMA_VERSION, SCHEMA + FEEDS_SCHEMA, {1: add_feeds_polled})
# Named, so a file from before keeps working (its lease_until column is left NULL).
INSERT = "INSERT INTO ledger (seq, hh, key, state, attempts, seen_at, payload) VALUES (?,?,?,?,?,?,?)"


class _Lease(msgspec.Struct, gc=False):  # one per pending item; untracked, like Item
    hh: bytes
    attempts: int  # sends accepted by the next stage
    due_at: float  # store clock (monotonic): when the item is sent again


class SqliteSeenStore:
    """The embedded SeenStore backend. Only the dedupe actor constructs one.

    Every method that touches the file raises StoreUnavailableError for a storage fault
    (disk full, I/O error, read-only, locked) and then leaves memory as it was."""

    purge_incomplete = False  # purge() always finishes: one transaction

    def __init__(self, path: Path, *, sqlite_cfg: SqliteConfig, lease_s: float, max_attempts: int,
                 ttl_s: float, on_corrupt: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, feeds: Iterable[str] = (),
                 mark_seen_first_poll: Iterable[str] = ()):
        """feeds: the configured feed names, the only ones recorded as polled.
        mark_seen_first_poll: those whose first poll marks its items seen (fetch.first_poll)."""
        self.path = Path(path)
        self.label = self.path.name
        self.sqlite_cfg = sqlite_cfg
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.ttl_s = ttl_s
        self.clock = clock
        self.feeds = frozenset(feeds)
        self.mark_seen_first_poll = frozenset(mark_seen_first_poll)
        self.marked_seen = 0  # items recorded seen on their feed's first poll, since opened
        self.suspended_at: float | None = None  # leases paused (store clock), see suspend_leases
        self.feed_leases: dict[str, tuple[str, float]] = {}  # feed -> (holder, until: clock)
        # The live fetchers: holder -> (its feeds, those paused on its host, until: clock)
        self.fetchers: dict[str, tuple[list[str], set[str], float]] = {}
        # Raises StoreLockedError (another owner) or StoreUnavailableError (a full disk).
        self.lock = FileLock(self.path.with_name(self.path.name + ".lock"))
        self.db: sqlite3.Connection | None = None
        try:
            self.db = open_checked(self.path, sqlite_cfg, schema(self.feeds), what="SeenStore",
                                   on_corrupt=on_corrupt)
            with self._faults():
                self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
                self._load()
        except BaseException:
            if self.db is not None:
                self.db.close()
            self.lock.release()
            raise

    def _faults(self):
        """Storage faults inside become StoreUnavailableError naming this file."""
        return faults_as_unavailable(self.label, self.path)

    def _load(self) -> None:
        """The in-memory index, from the file: live keys, and pending keys' rows and leases.

        Pending items from an earlier run are all due at once."""
        self.live: set[bytes] = set()
        self.pending_rows: dict[bytes, int] = {}
        # Two queues in due order, since each adds a fixed delay to the same clock.
        self.leased: collections.OrderedDict[int, _Lease] = collections.OrderedDict()
        self.retry: collections.OrderedDict[int, _Lease] = collections.OrderedDict()
        for seq, hh, state, attempts in self.db.execute(
                "SELECT seq, hh, state, attempts FROM ledger"):
            self.live.add(hh)
            if state == PENDING:
                self.pending_rows[hh] = seq
                self.retry[seq] = _Lease(hh, attempts, 0.0)
        row = self.db.execute("SELECT max(seq) FROM ledger").fetchone()
        self.next_seq = (row[0] or 0) + 1
        self.polled_feeds = {name for (name,) in self.db.execute("SELECT name FROM feeds_polled")}

    def backup(self, directory: Path) -> dict:
        """A consistent copy of the file in directory, made while claims go on
        (actors/storage/sqlite.py, backup)."""
        return backup(self.db, self.path.name, directory, what="SeenStore")

    # Claiming -----------------------------------------------------------

    def claim(self, items: Iterable[Item], now: float | None = None, *,
              polled: Iterable[str] = ()) -> list[Item]:
        """Claims items atomically; returns those that were new, now pending (attempt 1).

        An item is a duplicate when its key or its cross-wire signature was seen before.
        An item of a feed that has not completed a poll yet and whose first poll marks
        seen (mark_seen_first_poll) is recorded as seen and finished instead: not
        returned, never sent. polled: the feeds whose poll this claim completes, recorded
        with it. now is wall-clock time, for the TTL.
        """
        return [item for item, _ in self.claim_group([(items, polled)], now)]

    def claim_group(self, claims: Iterable[tuple[Iterable[Item], Iterable[str]]],
                    now: float | None = None) -> list[NewItem]:
        """Several claims (items, polled) in one transaction, in their order (group commit):
        a feed one claim completes the poll of is a polled feed for the claims after it.
        Returns the new items of all of them."""
        now = time.time() if now is None else now
        new: list[NewItem] = []
        rows: list[tuple] = []
        added: dict[bytes, int] = {}  # hash -> seq, or 0 for a seen-only mark
        polled_now: dict[str, None] = {}  # feeds polled for the first time, in order
        marked = 0
        seq = self.next_seq
        for items, polled in claims:
            for item in items:
                hk = key_hash(item.key)
                if hk in self.live or hk in added:
                    continue
                if item.signature:
                    sig = "sig:" + item.signature
                    hs = key_hash(sig)
                    if hs in self.live or hs in added:  # a copy already seen on another wire
                        rows.append((seq, hk, item.key, SEEN, 0, now, None))
                        added[hk], seq = 0, seq + 1
                        continue
                    rows.append((seq, hs, sig, SEEN, 0, now, None))
                    added[hs], seq = 0, seq + 1
                if (item.source in self.mark_seen_first_poll
                        and item.source not in self.polled_feeds and item.source not in polled_now):
                    rows.append((seq, hk, item.key, SEEN, 0, now, None))  # first poll: seen
                    added[hk], seq = 0, seq + 1
                    marked += 1
                    continue
                payload = encode_item(item)
                rows.append((seq, hk, item.key, PENDING, 1, now, payload))
                added[hk], seq = seq, seq + 1
                new.append((item, payload))
            for name in polled:
                if name in self.feeds and name not in self.polled_feeds:
                    polled_now[name] = None
        if not rows and not polled_now:
            return new
        with self._faults():
            if len(rows) == 1 and not polled_now:  # one statement is its own transaction
                self.db.execute(INSERT, rows[0])
            else:
                with transaction(self.db):
                    self.db.executemany(INSERT, rows)
                    self.db.executemany(
                        "INSERT OR IGNORE INTO feeds_polled (name, first_polled_at) VALUES (?, ?)",
                        [(name, now) for name in polled_now])
        # Memory follows the file, once written.
        self.next_seq = seq
        self.live.update(added)
        self.polled_feeds.update(polled_now)
        self.marked_seen += marked
        due_at = self.clock() + self.lease_s
        for hk, seq in added.items():
            if seq:
                self.pending_rows[hk] = seq
                self.leased[seq] = _Lease(hk, 1, due_at)
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

    def _queued(self, seq: int) -> _Lease:
        lease = self.leased.get(seq)
        return lease if lease is not None else self.retry[seq]

    def _unqueue(self, seq: int) -> _Lease:
        lease = self.leased.pop(seq, None)
        return lease if lease is not None else self.retry.pop(seq)

    def finish(self, keys: list[str], outcome: str) -> int:
        """Marks pending keys delivered or filtered; returns how many were pending."""
        rows = self._pending_seqs(keys)
        if rows:
            with self._faults(), transaction(self.db):
                self.db.executemany("UPDATE ledger SET state = ?, payload = NULL WHERE seq = ?",
                                    [(OUTCOMES[outcome], seq) for _, seq in rows])
            for hk, seq in rows:
                del self.pending_rows[hk]
                self._unqueue(seq)
        return len(rows)

    def sent(self, keys: list[str]) -> None:
        """The next stage took these redeliveries: write their count, start a new lease."""
        leases = [(seq, self._queued(seq)) for _, seq in self._pending_seqs(keys)]
        if not leases:  # all refused (the llm is away): no empty transaction every retry
            return
        with self._faults(), transaction(self.db):
            self.db.executemany("UPDATE ledger SET attempts = ? WHERE seq = ?",
                                [(lease.attempts, seq) for seq, lease in leases])
        due_at = self.clock() + self.lease_s
        for seq, lease in leases:  # memory follows the file, once written
            self._unqueue(seq)
            lease.due_at = due_at
            self.leased[seq] = lease

    def hold(self, keys: list[str]) -> int:
        """The alert side holds these (its journal is away): renew their leases without
        counting a send. Memory only, like every lease. Returns how many were pending."""
        due_at = self.clock() + self.lease_s
        rows = self._pending_seqs(keys)
        for _, seq in rows:
            lease = self._unqueue(seq)
            lease.due_at = due_at
            self.leased[seq] = lease  # the latest due time: the queue stays in order
        return len(rows)

    def unsent(self, keys: list[str]) -> None:
        """The next stage did not take these (claimed or due): try again soon, and take
        back the send they were counted for. Memory only: the file learns of a resend at
        sent(), and of a first send at claim, so a crash before that first send is
        accepted counts one send too many."""
        due_at = self.clock() + UNSENT_RETRY_S
        for _, seq in self._pending_seqs(keys):
            lease = self._unqueue(seq)
            lease.attempts = max(lease.attempts - 1, 0)
            lease.due_at = due_at
            self.retry[seq] = lease

    def condemn(self, keys: list[str]) -> int:
        """Makes pending items dead letters at once, without waiting out their attempts
        (an item no frame can carry); returns how many were pending."""
        rows = self._pending_seqs(keys)
        if rows:
            wall = time.time()
            with self._faults(), transaction(self.db):
                self.db.executemany("UPDATE ledger SET state = ?, seen_at = ? WHERE seq = ?",
                                    [(DEAD, wall, seq) for _, seq in rows])
            for hk, seq in rows:
                del self.pending_rows[hk]
                self._unqueue(seq)
        return len(rows)

    # Leases while the file is away ---------------------------------------

    def suspend_leases(self) -> None:
        """Stops the lease clock: while the ledger cannot record a send, nothing is due,
        so no item is sent again or counted an attempt, and none dies of the outage."""
        if self.suspended_at is None:
            self.suspended_at = self.clock()

    def resume_leases(self) -> None:
        """Starts the lease clock again where it stopped: every lease moves on by the
        length of the pause, so each keeps what it had left."""
        if self.suspended_at is None:
            return
        shift = max(0.0, self.clock() - self.suspended_at)
        self.suspended_at = None
        for queue in (self.retry, self.leased):
            for lease in queue.values():
                lease.due_at += shift

    @property
    def leases_suspended(self) -> bool:
        return self.suspended_at is not None

    def next_due(self) -> float:
        """When the earliest lease expires (store clock); inf when nothing is pending or
        the leases are suspended."""
        if self.suspended_at is not None:
            return float("inf")
        heads = [next(iter(q.values())).due_at for q in (self.retry, self.leased) if q]
        return min(heads, default=float("inf"))

    def due(self, now: float | None = None, limit: int = 500) -> DueResult:
        """Expired leases: items to send again, counted as sent (pass them to sent() or
        unsent()), and items out of attempts, which are dead letters on return. Nothing
        while the leases are suspended."""
        if self.suspended_at is not None:
            return DueResult([], [])
        now = self.clock() if now is None else now
        picked: list[tuple[int, _Lease]] = []
        for queue in (self.retry, self.leased):
            for seq, lease in queue.items():
                if lease.due_at > now or len(picked) >= limit:
                    break
                picked.append((seq, lease))
        if not picked:
            return DueResult([], [])
        dead, again = [], []
        for seq, lease in picked:
            (dead if lease.attempts >= self.max_attempts else again).append((seq, lease))
        with self._faults():
            payloads = dict(self.db.execute(
                f"SELECT seq, payload FROM ledger WHERE seq IN ({','.join('?' * len(picked))})",
                [seq for seq, _ in picked]))
            if dead:
                wall = time.time()
                with transaction(self.db):
                    # A dead letter keeps its item for inspection; seen_at restarts its TTL.
                    self.db.executemany("UPDATE ledger SET state = ?, seen_at = ? WHERE seq = ?",
                                        [(DEAD, wall, seq) for seq, _ in dead])
        for seq, lease in picked:  # memory follows the file, once written
            self._unqueue(seq)
        for _, lease in dead:
            del self.pending_rows[lease.hh]
        resend = []
        for seq, lease in again:
            lease.attempts += 1
            lease.due_at = now + self.lease_s  # not picked again before an answer comes
            self.leased[seq] = lease
            payload = payloads[seq]
            resend.append(Redelivery(decode_item(payload), lease.attempts, payload))
        return DueResult(resend, [decode_item(payloads[seq]) for seq, _ in dead])

    # Dead letters ---------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> tuple[int, list[dict]]:
        """How many dead letters there are, and the newest `limit` of them."""
        with self._faults():
            total = self.db.execute("SELECT count(*) FROM ledger WHERE state = ?", (DEAD,)
                                    ).fetchone()[0]
            rows = self.db.execute("SELECT attempts, seen_at, payload FROM ledger WHERE state = ? "
                                   "ORDER BY seen_at DESC LIMIT ?", (DEAD, limit)).fetchall()
        return total, [dead_letter(*row) for row in rows]

    def replay_dead(self, keys: list[str] | None = None) -> int:
        """Makes dead letters pending again with a fresh count of attempts, due at once
        (keys None: all of them); returns how many."""
        with self._faults():
            rows = self.db.execute("SELECT seq, hh, key FROM ledger WHERE state = ?",
                                   (DEAD,)).fetchall()
            if keys is not None:
                wanted = set(keys)
                rows = [r for r in rows if r[2] in wanted]
            if rows:
                with transaction(self.db):
                    self.db.executemany("UPDATE ledger SET state = ?, attempts = 0 WHERE seq = ?",
                                        [(PENDING, seq) for seq, _, _ in rows])
        if rows:
            due_at = self.clock() + UNSENT_RETRY_S  # as unsent() does, so retry stays in order
            for seq, hh, _ in rows:
                self.pending_rows[hh] = seq
                self.retry[seq] = _Lease(hh, 0, due_at)
        return len(rows)

    def pending_count(self) -> int:
        return len(self.pending_rows)

    def live_keys(self) -> int:
        return len(self.live)

    def expected_memory_bytes(self) -> int:
        """The key index (LIVE_KEY_BYTES a live key) and what SQLite's page cache may hold
        by design: its configured size, or the whole file when that is smaller (it fills
        as the ledger grows)."""
        cfg = self.sqlite_cfg
        limit = -cfg.cache_size * 1024 if cfg.cache_size < 0 else cfg.cache_size * 4096
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        return len(self.live) * LIVE_KEY_BYTES + min(limit, size)

    # Feed leases (in memory: see the module's docstring) ---------------------

    def take_feed_leases(self, holder: str, feeds: list[str], ttl_s: float,
                         paused: Iterable[str] = ()) -> FeedGrant:
        """See the Protocol. Lapsed leases and fetchers are forgotten here, so the tables
        hold at most the feeds someone holds and the fetchers that are live."""
        now = self.clock()
        for feed in [f for f, (_, until) in self.feed_leases.items() if until <= now]:
            del self.feed_leases[feed]
        self.fetchers[holder] = (list(feeds), set(paused), now + ttl_s)
        for name in [h for h, (*_, until) in self.fetchers.items() if until <= now]:
            del self.fetchers[name]
        pinned = {feed: owner for feed, (owner, _) in self.feed_leases.items()
                  if owner in self.fetchers and feed in self.fetchers[owner][1]}
        mine = set(owned_by(holder, {h: f for h, (f, _, _) in self.fetchers.items()}, pinned))
        for feed, (owner, _) in list(self.feed_leases.items()):
            if owner == holder and feed not in mine:  # its new owner takes it
                del self.feed_leases[feed]
        held, handover = [], 0
        for feed in dict.fromkeys(feeds):
            if feed not in mine:
                continue
            current = self.feed_leases.get(feed)
            if current is None or current[0] == holder:
                self.feed_leases[feed] = (holder, now + ttl_s)
                held.append(feed)
            else:
                handover += 1
        return FeedGrant(held, handover)

    def release_feed_leases(self, holder: str, feeds: list[str]) -> int:
        self.fetchers.pop(holder, None)
        released = 0
        for feed in dict.fromkeys(feeds):
            current = self.feed_leases.get(feed)
            if current is not None and current[0] == holder:
                del self.feed_leases[feed]
                released += 1
        return released

    def counts(self) -> dict[str, int]:
        with self._faults():
            rows = self.db.execute("SELECT state, count(*) FROM ledger GROUP BY state").fetchall()
        return {STATE_NAMES[s]: n for s, n in rows}

    def purge(self, now: float | None = None) -> int:
        """Forgets finished keys and dead letters older than the TTL; never pending ones."""
        cutoff = (time.time() if now is None else now) - self.ttl_s
        with self._faults(), transaction(self.db):
            gone = self.db.execute("DELETE FROM ledger WHERE state != 1 AND seen_at < ? "
                                   "RETURNING hh", (cutoff,)).fetchall()
        self.live.difference_update(hh for (hh,) in gone)
        return len(gone)

    def probe(self) -> None:
        """One small committed write: raises StoreUnavailableError while the file cannot
        take writes."""
        with self._faults():
            probe(self.db)

    def integrity_check(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            self.lock.release()
