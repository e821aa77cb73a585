"""PostgresSeenStore: the SeenStore in a PostgreSQL database that several dedupe actors, on
several hosts, share (psycopg 3). It keeps the contract of actors/seen_store/base.py.

Everything lives in the database, nothing that matters in memory: membership is the
primary key (the 16-byte BLAKE2b hash of a key or signature, as in seen.db, typed uuid),
and each pending row has a lease (on the server's clock) and the holder that took it, so an
item leased by a dedupe actor that died is handed out by another once the lease runs out.
A claim's new rows share one lease, a row of catalyst_claim_leases; a row held, or handed
out again, has its own (lease_until, in the due index).

- A claim is one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING`:
  the rows that come back are new, and pending, leased to this store; a concurrent claim
  of the same key, from any host, waits on the unique index and then gets nothing. Rows
  go in sorted by hash, so two claims lock in the same order and cannot deadlock. A
  batch with cross-wire signatures or a feed's first poll takes one transaction of two
  such statements: the signatures first (which copy is the first, in claim order, among
  keys not seen before), then the keys with the state that decides.
- due() takes expired leases with `SELECT ... FOR UPDATE SKIP LOCKED` inside one UPDATE
  that counts the send and leases the row to this store (or makes it a dead letter), so
  two stores never hand out the same row. It also looks every `due_poll_s` for leases
  others let lapse. sent() then has nothing to write; unsent() takes the count back.
- purge() deletes in bounded batches (purge_batch rows, purge_max_batches a call, each
  batch its own short transaction, skipping rows others hold); purge_incomplete says more
  is left, and the dedupe actor comes back soon.
- Feed leases: a table of (feed, holder, expires_at) taken with one
  `INSERT ... ON CONFLICT DO UPDATE ... WHERE` that renews the holder's own or takes a
  lapsed one, atomically among concurrent callers; which feeds a fetcher asks for is its
  share among the live fetchers (catalyst_fetchers, sharing.py), in the same transaction.
- Schema: created or migrated at open under an advisory lock (several actors may start at
  once), its version in catalyst_schema; a database from a newer release is refused
  (SchemaTooNewError), as for seen.db.
- Faults: a lost connection, a server that is down or restarting, a full disk, a read-only
  server, a timeout: StoreUnavailableError (reasons unreachable, disk_full, read_only,
  io_error, locked), so the dedupe actor refuses claims with retry, holds acks and tries
  again with backoff. The connection is opened again by the next call (probe() when nothing
  else is waiting). A claim whose commit was cut off is answered as refused; if it did
  commit, the fetcher's resend finds its keys taken and the rows, still leased to this
  store, are sent on when the lease runs out: nothing is lost and nothing claimed twice.
  Deadlocks and serialization failures are retried before counting as a fault. The
  connection, its faults and the schema steps are actors/storage/postgres.py's (PgSession,
  open_schema), shared with the alert journal's PostgreSQL backend.

The DSN comes only from the environment (dedupe.postgres.dsn_env) and is a secret: it is
never logged, and error messages have it, and its password, masked.

Counts for stats are read with the lease scan (PENDING_REFRESH_S, LIVE_REFRESH_S), never
from a heartbeat: pending_count() is the rows leased to this store (its items in flight,
what a drain of this host waits for; other hosts' are theirs), live_keys() the whole
ledger's rows, PostgreSQL's estimate once the table is large. The store holds no key in
memory: expected_memory_bytes() is 0.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import psycopg

from actors.errors import CommandError, StoreUnavailableError
from actors.protocol import Item
from actors.seen_store.base import (DEAD, HASH_BYTES, OUTCOMES, PENDING, SEEN, STATE_NAMES,
                                    UNSENT_RETRY_S, DueResult, FeedGrant, NewItem, Redelivery,
                                    dead_letter, decode_item, encode_item, key_hash)
from actors.seen_store.sharing import owned_by
from actors.storage.pg_arrays import bytea_array, text_array, uuid_array
from actors.storage.postgres import PgSession, open_schema, purge_in_batches

if TYPE_CHECKING:
    from catalyst_config.schema import PostgresConfig

log = logging.getLogger("catalyst.seen_store")

LABEL = "PostgreSQL seen-store"
SCHEMA_VERSION = 3
SCHEMA_COMPONENT = "seen_store"  # its row in catalyst_schema
# Counts for stats, read with a lease scan at most this often: this store's pending rows
# (what the supervisor's drain waits for), and the whole ledger's rows. Counting pending
# rows reads each of them: with a backlog (PENDING_BACKLOG rows and more) it is read less
# often, so the count does not add load when the ledger has the most to do (measured here:
# 150,000 pending rows take 45 ms to count; four actors counting theirs every second is 9%
# of a 2-core machine).
PENDING_REFRESH_S = 1.0
PENDING_BACKLOG = 10_000
PENDING_BACKLOG_REFRESH_S = 15.0
LIVE_REFRESH_S = 30.0
LIVE_EXACT_MAX = 100_000  # below this many rows live_keys() counts them; above, estimates
APPLICATION_NAME = "catalyst-dedupe"

# Version 3. seen_at is wall-clock epoch seconds from the claiming host (a TTL of days
# does not mind clock skew); leases are on the server's clock, so hosts need not agree.
# key_hash is a uuid only for its type: 16 bytes of fixed width that the server compares as
# such, where a bytea's comparison goes through varlena handling. Measured here, batch
# claims of 500 rows from one backend: 10.4 us of backend CPU per row, 11.2 with bytea.
SCHEMA = """
CREATE TABLE IF NOT EXISTS catalyst_ledger (
    key_hash uuid PRIMARY KEY,       -- BLAKE2b-128 of the key or 'sig:' + signature
    key text NOT NULL,
    state smallint NOT NULL,         -- 0 seen, 1 pending, 2 delivered, 3 filtered, 4 dead
    attempts integer NOT NULL DEFAULT 0,
    seen_at double precision NOT NULL,
    lease_until timestamptz,         -- pending: when it is handed out again
    holder text,                     -- pending: the store that holds its lease
    payload bytea                    -- pending and dead: the msgpack item
);
CREATE INDEX IF NOT EXISTS catalyst_ledger_due ON catalyst_ledger (lease_until)
    WHERE state = 1 AND lease_until IS NOT NULL;
CREATE TABLE IF NOT EXISTS catalyst_claim_leases (  -- one lease for a claim's new rows
    holder text NOT NULL,
    lease_until timestamptz NOT NULL,
    hashes uuid[] NOT NULL
) WITH (toast_tuple_target = 8160);
CREATE INDEX IF NOT EXISTS catalyst_claim_leases_due ON catalyst_claim_leases (lease_until);
CREATE INDEX IF NOT EXISTS catalyst_ledger_finished ON catalyst_ledger (seen_at)
    WHERE state <> 1;
CREATE INDEX IF NOT EXISTS catalyst_ledger_dead ON catalyst_ledger (seen_at)
    WHERE state = 4;
CREATE TABLE IF NOT EXISTS catalyst_feeds_polled (
    name text PRIMARY KEY,
    first_polled_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS catalyst_feed_leases (
    feed text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS catalyst_fetchers (  -- the live fetchers: sharing.py
    holder text PRIMARY KEY,
    feeds text[] NOT NULL,
    paused text[] NOT NULL,          -- of its feeds, those paused on its host
    expires_at timestamptz NOT NULL
)"""
# MIGRATIONS[n] takes a database from version n to n + 1, in the opening transaction.
MIGRATIONS: dict[int, str] = {
    # 1 -> 2: key_hash bytea -> uuid, the same 16 bytes (rewrites the table and its indexes).
    # And the live fetchers, among which the feeds are shared.
    1: "ALTER TABLE catalyst_ledger ALTER COLUMN key_hash TYPE uuid "
       "USING encode(key_hash, 'hex')::uuid; "
       "CREATE TABLE IF NOT EXISTS catalyst_fetchers (holder text PRIMARY KEY, "
       "feeds text[] NOT NULL, paused text[] NOT NULL, expires_at timestamptz NOT NULL)",
    # 2 -> 3: a claim's new rows share one lease (catalyst_claim_leases) instead of an
    # entry each in the due index. Rows leased now keep their own lease.
    2: "DROP INDEX catalyst_ledger_due; "
       "CREATE INDEX catalyst_ledger_due ON catalyst_ledger (lease_until) "
       "WHERE state = 1 AND lease_until IS NOT NULL; "
       "CREATE TABLE catalyst_claim_leases (holder text NOT NULL, "
       "lease_until timestamptz NOT NULL, hashes uuid[] NOT NULL) "
       "WITH (toast_tuple_target = 8160); "
       "CREATE INDEX catalyst_claim_leases_due ON catalyst_claim_leases (lease_until)",
}

_LEASE = "now() + %(lease)s * interval '1 second'"
# A claim's new pending rows have no lease of their own (lease_until NULL, so no entry in
# the due index): one row of catalyst_claim_leases per 500 of them holds their lease,
# written in the same statement. Measured here, server CPU a row over batches of 500 from
# one backend: a due-index entry per row 10.4 us against 9.5 with none; the lease rows
# then cost 0.2 (10.3 against 10.1, in a later run). When that lease runs out,
# SWEEP_CLAIMS gives the rows still waiting the claim's lease, and DUE hands them out.
CLAIM_LEASE_HASHES = 500  # hashes per row: 8 KB, kept in the row (toast_tuple_target)
_CLAIM_LEASE = f"""
lease AS (
    INSERT INTO catalyst_claim_leases (holder, lease_until, hashes)
    SELECT %(holder)s, {_LEASE}, hashes[i:i + {CLAIM_LEASE_HASHES - 1}]
    FROM (SELECT array_agg(key_hash) AS hashes FROM new WHERE state = {PENDING}) AS a,
         generate_series(1, cardinality(hashes), {CLAIM_LEASE_HASHES}) AS i)"""
# Every new row pending: the claim of a batch without signatures or first polls. The new
# rows' hashes come back as one value, their concatenation (HASH_BYTES each): one row to
# send and read rather than one per new item. The arrays come sorted by hash, and unnest
# inserts in array order, so concurrent claims lock keys in one order; sorting here rather
# than in SQL saves the server 1.1 us of CPU a row (12.2 against 11.1, measured here over
# batches of 500; Python's sort costs the actor 0.2).
CLAIM_PENDING = f"""
WITH new AS (
    INSERT INTO catalyst_ledger (key_hash, key, state, attempts, seen_at, holder, payload)
    SELECT h, k, {PENDING}, 1, %(now)s, %(holder)s, p
    FROM unnest(%(h)b::uuid[], %(k)b::text[], %(p)b::bytea[]) AS t(h, k, p)
    ON CONFLICT DO NOTHING
    RETURNING key_hash, state),{_CLAIM_LEASE}
SELECT string_agg(uuid_send(key_hash), ''::bytea) FROM new"""
# Each row with its own state (pending, or seen: a copy, or a feed's first poll).
CLAIM_MIXED = f"""
WITH new AS (
    INSERT INTO catalyst_ledger (key_hash, key, state, attempts, seen_at, holder, payload)
    SELECT h, k, s, CASE WHEN s = {PENDING} THEN 1 ELSE 0 END, %(now)s,
           CASE WHEN s = {PENDING} THEN %(holder)s END,
           CASE WHEN s = {PENDING} THEN p END
    FROM unnest(%(h)b::uuid[], %(k)b::text[], %(s)b::int2[], %(p)b::bytea[]) AS t(h, k, s, p)
    ORDER BY h
    ON CONFLICT DO NOTHING
    RETURNING key_hash, state),{_CLAIM_LEASE}
SELECT uuid_send(key_hash), state FROM new"""
# Claim leases run out: their rows still waiting (not finished, held or sent again since:
# those have a lease of their own) take the claim's lease, now past, so DUE hands them out.
SWEEP_CLAIMS = f"""
WITH lapsed AS (
    DELETE FROM catalyst_claim_leases c USING (
        SELECT ctid FROM catalyst_claim_leases WHERE lease_until <= now()
        ORDER BY lease_until LIMIT %(limit)s FOR UPDATE SKIP LOCKED) x
    WHERE c.ctid = x.ctid
    RETURNING c.holder, c.lease_until, c.hashes),
moved AS (
    UPDATE catalyst_ledger l SET lease_until = lapsed.lease_until
    FROM lapsed, unnest(lapsed.hashes) AS h(key_hash)
    WHERE l.key_hash = h.key_hash AND l.state = {PENDING} AND l.lease_until IS NULL
      AND l.holder = lapsed.holder)
SELECT count(*) FROM lapsed"""
SWEEP_CLAIMS_LIMIT = 20  # claim leases a lease scan takes at most (DUE then hands out 500)
# Signatures of the batch's items whose keys were not seen before: the first item in
# claim order with a signature owns it; a signature recorded now makes its owner new.
# Returns the owners' positions.
CLAIM_SIGNATURES = f"""
WITH inp AS (
    SELECT * FROM unnest(%(o)b::int4[], %(h)b::uuid[], %(sh)b::uuid[], %(sig)b::text[])
        AS t(o, h, sh, sig)),
owners AS (
    SELECT DISTINCT ON (sh) o, sh, sig FROM inp
    WHERE NOT EXISTS (SELECT 1 FROM catalyst_ledger l WHERE l.key_hash = inp.h)
    ORDER BY sh, o),
recorded AS (
    INSERT INTO catalyst_ledger (key_hash, key, state, attempts, seen_at)
    SELECT sh, sig, {SEEN}, 0, %(now)s FROM owners ORDER BY sh
    ON CONFLICT DO NOTHING
    RETURNING key_hash)
SELECT owners.o FROM owners JOIN recorded ON recorded.key_hash = owners.sh"""
RECORD_POLLED = """
INSERT INTO catalyst_feeds_polled (name, first_polled_at)
SELECT name, %(now)s FROM unnest(%(names)b::text[]) AS name ORDER BY name
ON CONFLICT DO NOTHING"""
# Expired leases: out of attempts -> dead (its TTL starts again); else counted as a send
# and leased to this store. SKIP LOCKED: rows another store is taking are left to it.
DUE = f"""
UPDATE catalyst_ledger l SET
    state = CASE WHEN l.attempts >= %(max)s THEN {DEAD} ELSE {PENDING} END,
    attempts = CASE WHEN l.attempts >= %(max)s THEN l.attempts ELSE l.attempts + 1 END,
    seen_at = CASE WHEN l.attempts >= %(max)s THEN %(wall)s ELSE l.seen_at END,
    lease_until = CASE WHEN l.attempts >= %(max)s THEN NULL ELSE {_LEASE} END,
    holder = CASE WHEN l.attempts >= %(max)s THEN NULL ELSE %(holder)s END
FROM (SELECT key_hash FROM catalyst_ledger
      WHERE state = {PENDING} AND lease_until <= now()
      ORDER BY lease_until LIMIT %(limit)s
      FOR UPDATE SKIP LOCKED) due
WHERE l.key_hash = due.key_hash
RETURNING l.state, l.attempts, l.payload"""
FINISH = f"""
UPDATE catalyst_ledger SET state = %(state)s, payload = NULL, lease_until = NULL, holder = NULL
WHERE key_hash = ANY(%(h)b::uuid[]) AND state = {PENDING}"""
CONDEMN = f"""
UPDATE catalyst_ledger SET state = {DEAD}, seen_at = %(wall)s, lease_until = NULL, holder = NULL
WHERE key_hash = ANY(%(h)b::uuid[]) AND state = {PENDING}"""
HOLD = f"""
UPDATE catalyst_ledger SET lease_until = {_LEASE}, holder = %(holder)s
WHERE key_hash = ANY(%(h)b::uuid[]) AND state = {PENDING}"""
UNSENT = f"""
UPDATE catalyst_ledger SET attempts = greatest(attempts - 1, 0), lease_until = {_LEASE}
WHERE key_hash = ANY(%(h)b::uuid[]) AND state = {PENDING} AND holder = %(holder)s"""
RESUME = f"""
UPDATE catalyst_ledger SET lease_until = lease_until + %(pause)s * interval '1 second'
WHERE holder = %(holder)s AND state = {PENDING} AND lease_until IS NOT NULL"""
RESUME_CLAIMS = """
UPDATE catalyst_claim_leases SET lease_until = lease_until + %(pause)s * interval '1 second'
WHERE holder = %(holder)s"""
# This store's pending rows: those with a lease of their own, and its claims' rows still
# waiting under the claim's lease.
PENDING_ROWS = f"""
SELECT (SELECT count(*) FROM catalyst_ledger
        WHERE state = {PENDING} AND lease_until IS NOT NULL AND holder = %(holder)s)
     + (SELECT count(*) FROM catalyst_claim_leases c, unnest(c.hashes) AS h(key_hash),
                             catalyst_ledger l
        WHERE c.holder = %(holder)s AND l.key_hash = h.key_hash AND l.state = {PENDING}
          AND l.lease_until IS NULL AND l.holder = c.holder)"""
REPLAY = f"""
UPDATE catalyst_ledger SET state = {PENDING}, attempts = 0, lease_until = {_LEASE}, holder = NULL
WHERE state = {DEAD}"""
PURGE = f"""
DELETE FROM catalyst_ledger WHERE key_hash IN (
    SELECT key_hash FROM catalyst_ledger
    WHERE state <> {PENDING} AND seen_at < %(cutoff)s
    LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"""
TAKE_FEEDS = """
INSERT INTO catalyst_feed_leases (feed, holder, expires_at)
SELECT feed, %(holder)s, now() + %(ttl)s * interval '1 second'
FROM unnest(%(feeds)b::text[]) AS feed ORDER BY feed
ON CONFLICT (feed) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
WHERE catalyst_feed_leases.holder = EXCLUDED.holder
   OR catalyst_feed_leases.expires_at <= now()
RETURNING feed"""
FETCHER_LIVE = """
INSERT INTO catalyst_fetchers (holder, feeds, paused, expires_at)
VALUES (%(holder)s, %(feeds)s::text[], %(paused)s::text[],
        now() + %(ttl)s * interval '1 second')
ON CONFLICT (holder) DO UPDATE SET feeds = EXCLUDED.feeds, paused = EXCLUDED.paused,
    expires_at = EXCLUDED.expires_at"""
LIVE_FETCHERS = "SELECT holder, feeds, paused FROM catalyst_fetchers WHERE expires_at > now()"
# A feed a live fetcher holds and has paused stays its own (sharing.owned_by).
PINNED_FEEDS = """
SELECT l.feed, l.holder FROM catalyst_feed_leases l
JOIN catalyst_fetchers f ON f.holder = l.holder AND l.feed = ANY(f.paused)
WHERE l.expires_at > now() AND f.expires_at > now()"""
# Leases this holder gives up: feeds shared to another fetcher now.
GIVE_UP_FEEDS = """
DELETE FROM catalyst_feed_leases
WHERE holder = %(holder)s AND NOT (feed = ANY(%(keep)s::text[]))"""
FETCHERS_GONE_S = 86_400  # purge() forgets fetchers that have not asked for this long


_signature = attrgetter("signature")


def default_holder() -> str:
    """This store's name in leases: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class PostgresSeenStore:
    """The shared SeenStore backend. Each dedupe actor opens one, with one connection (the
    actor is single-threaded: a pool would only hold idle connections)."""

    label = LABEL

    def __init__(self, dsn: str, *, pg_cfg: PostgresConfig, lease_s: float, max_attempts: int,
                 ttl_s: float, holder: str | None = None, feeds: Iterable[str] = (),
                 mark_seen_first_poll: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic):
        """dsn: libpq connection string (a secret). feeds, mark_seen_first_poll: as for
        SqliteSeenStore. Raises StoreUnavailableError when the server cannot be used."""
        self.cfg = pg_cfg
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.ttl_s = ttl_s
        self.holder = holder or default_holder()
        self.feeds = frozenset(feeds)
        self.mark_seen_first_poll = frozenset(mark_seen_first_poll)
        self.clock = clock
        self.marked_seen = 0
        self.purge_incomplete = False
        self.suspended_at: float | None = None
        self.next_scan = 0.0  # monotonic: when due() next looks at the database
        self.pending_at = self.live_at = float("-inf")
        self.pending = 0
        self.live = 0
        self.polled_feeds: set[str] = set()
        self.session = PgSession(dsn, pg_cfg, label=LABEL, application_name=APPLICATION_NAME)
        self._run = self.session.run
        try:
            self._run(lambda conn: open_schema(
                conn, label=LABEL, component=SCHEMA_COMPONENT, version=SCHEMA_VERSION,
                schema=SCHEMA, migrations=MIGRATIONS))
            self._load_polled()
            self._run(lambda conn: self._refresh_counts(conn, force=True))
        except BaseException:
            self.close()
            raise

    # Claiming -------------------------------------------------------------------

    def claim(self, items: Iterable[Item], now: float | None = None, *,
              polled: Iterable[str] = ()) -> list[Item]:
        return [item for item, _ in self.claim_group([(items, polled)], now)]

    def claim_group(self, claims: Iterable[tuple[Iterable[Item], Iterable[str]]],
                    now: float | None = None) -> list[NewItem]:
        now = time.time() if now is None else now
        claims = [(list(items), list(polled)) for items, polled in claims]
        items = [item for group, _ in claims for item in group]
        unpolled = self.mark_seen_first_poll - self.polled_feeds
        first_polls = bool(unpolled) and any(item.source in unpolled for item in items)
        if first_polls:
            self._load_polled()  # another store may have completed that poll
            unpolled = self.mark_seen_first_poll - self.polled_feeds
            first_polls = any(item.source in unpolled for item in items)
        hashes = [key_hash(item.key) for item in items]
        if not (first_polls or any(map(_signature, items))
                or any(name in self.feeds and name not in self.polled_feeds
                       for _, polled in claims for name in polled)
                or len(set(hashes)) < len(hashes)):
            # The common claim: every row pending, no feed's poll to record, no key twice.
            new, payloads = self._run(lambda conn: self._claim_simple(conn, hashes, items, now))
            if new:
                self.next_scan = min(self.next_scan, self.clock() + self.lease_s)
            if len(new) == len(hashes):
                return list(zip(items, payloads))
            return [(item, payload) for item, payload, hk in zip(items, payloads, hashes)
                    if hk in new]
        return self._claim_group_mixed(claims, hashes, now)

    def _claim_group_mixed(self, claims: list[tuple[list[Item], list[str]]],
                           hashes: list[bytes], now: float) -> list[NewItem]:
        """A claim with signatures, first polls, polled feeds or a key twice."""
        hash_of = iter(hashes)
        # The batch in claim order, one entry per key: (hash, item, first poll marks it)
        batch: dict[bytes, tuple[Item, bool]] = {}
        polled_now: dict[str, None] = {}
        for items, polled in claims:
            for item in items:
                hk = next(hash_of)
                if hk not in batch:
                    first = (item.source in self.mark_seen_first_poll
                             and item.source not in self.polled_feeds
                             and item.source not in polled_now)
                    batch[hk] = (item, first)
            for name in polled:
                if name in self.feeds and name not in self.polled_feeds:
                    polled_now[name] = None
        if not batch and not polled_now:
            return []
        new, payloads, marked = self._run(
            lambda conn: self._claim_mixed(conn, batch, list(polled_now), now))
        # Memory follows the database, once committed.
        self.polled_feeds.update(polled_now)
        self.marked_seen += marked
        if new:
            self.next_scan = min(self.next_scan, self.clock() + self.lease_s)
        return [(item, payload) for (hk, (item, _)), payload in zip(batch.items(), payloads)
                if hk in new]

    def _claim_simple(self, conn: psycopg.Connection, hashes: list[bytes], items: list[Item],
                      now: float) -> tuple[set[bytes], list[bytes]]:
        """Returns the new rows' hashes and the items' payloads (in the items' order)."""
        payloads = [encode_item(item) for item in items]
        order = sorted(range(len(hashes)), key=hashes.__getitem__)
        joined = conn.execute(CLAIM_PENDING, {
            "h": uuid_array([hashes[i] for i in order]),
            "k": text_array([items[i].key for i in order]),
            "p": bytea_array([payloads[i] for i in order]), "now": now, "lease": self.lease_s,
            "holder": self.holder}).fetchone()[0] or b""
        return {joined[i:i + HASH_BYTES] for i in range(0, len(joined), HASH_BYTES)}, payloads

    def _claim_mixed(self, conn: psycopg.Connection, batch: dict[bytes, tuple[Item, bool]],
                     polled: list[str], now: float
                     ) -> tuple[set[bytes], list[bytes | None], int]:
        """One transaction: the feeds whose poll completes, the signatures, then the keys
        with the state the signatures and first polls decide (as SqliteSeenStore's
        claim_group decides it, item by item). Returns the new pending rows' hashes, the
        batch's payloads (None where not pending), and how many rows a first poll marked
        seen."""
        entries = list(batch.items())
        with conn.transaction():
            if polled:
                conn.execute(RECORD_POLLED, {"names": sorted(polled), "now": now})
            signed = [(o, hk, item) for o, (hk, (item, _)) in enumerate(entries)
                      if item.signature]
            owners: set[int] = set()
            if signed:
                sigs = ["sig:" + item.signature for _, _, item in signed]
                owners = {o for (o,) in conn.execute(CLAIM_SIGNATURES, {
                    "o": [o for o, _, _ in signed], "h": uuid_array([hk for _, hk, _ in signed]),
                    "sh": uuid_array([key_hash(sig) for sig in sigs]), "sig": text_array(sigs),
                    "now": now})}
            states, payloads, marks = [], [], set()
            for o, (hk, (item, first)) in enumerate(entries):
                eligible = not item.signature or o in owners  # not a copy of a seen one
                pending = eligible and not first
                states.append(PENDING if pending else SEEN)
                payloads.append(encode_item(item) if pending else None)
                if eligible and first:
                    marks.add(hk)
            rows = conn.execute(CLAIM_MIXED, {
                "h": uuid_array([hk for hk, _ in entries]),
                "k": text_array([item.key for _, (item, _) in entries]),
                "s": states, "p": bytea_array(payloads), "now": now, "lease": self.lease_s,
                "holder": self.holder}).fetchall()
        new = {bytes(h) for h, state in rows if state == PENDING}
        return new, payloads, sum(1 for h, state in rows if bytes(h) in marks)

    def _load_polled(self) -> None:
        rows = self._run(lambda conn: conn.execute(
            "SELECT name FROM catalyst_feeds_polled").fetchall())
        self.polled_feeds.update(name for (name,) in rows)

    # The ledger -------------------------------------------------------------------

    def _update(self, sql: str, keys: list[str], **params: Any) -> int:
        if not keys:
            return 0
        hashes = uuid_array(sorted({key_hash(k) for k in keys}))
        return self._run(lambda conn: conn.execute(sql, {"h": hashes, **params}).rowcount)

    def finish(self, keys: list[str], outcome: str) -> int:
        return self._update(FINISH, keys, state=OUTCOMES[outcome])

    def condemn(self, keys: list[str]) -> int:
        return self._update(CONDEMN, keys, wall=time.time())

    def sent(self, keys: list[str]) -> None:
        """Nothing to write: due() counted the send and took the lease in the database
        when it handed the item out (a crash before the send counts one send too many,
        as for a first send in SqliteSeenStore)."""

    def unsent(self, keys: list[str]) -> None:
        if self._update(UNSENT, keys, lease=UNSENT_RETRY_S, holder=self.holder):
            self.next_scan = min(self.next_scan, self.clock() + UNSENT_RETRY_S)

    def hold(self, keys: list[str]) -> int:
        if self.suspended_at is not None:  # the lease clock stands still: nothing runs out
            return 0
        return self._update(HOLD, keys, lease=self.lease_s, holder=self.holder)

    # Leases while the database is away ---------------------------------------------

    def suspend_leases(self) -> None:
        if self.suspended_at is None:
            self.suspended_at = self.clock()

    def resume_leases(self) -> None:
        """Moves this store's leases on by the pause (a lease another store took after it
        ran out stays with that store). Should the database fail again right now, the
        leases are not moved: they may run out early and be sent once more, never lost."""
        if self.suspended_at is None:
            return
        pause = max(0.0, self.clock() - self.suspended_at)
        self.suspended_at = None
        self.next_scan = self.clock()
        try:
            self._run(lambda conn: self._resume(conn, pause))
        except StoreUnavailableError as exc:
            log.warning("%s: leases not moved on after the outage: %s", LABEL, exc)

    def _resume(self, conn: psycopg.Connection, pause: float) -> None:
        params = {"pause": pause, "holder": self.holder}
        with conn.transaction():
            conn.execute(RESUME, params)
            conn.execute(RESUME_CLAIMS, params)

    @property
    def leases_suspended(self) -> bool:
        return self.suspended_at is not None

    def next_due(self) -> float:
        return float("inf") if self.suspended_at is not None else self.next_scan

    def due(self, now: float | None = None, limit: int = 500) -> DueResult:
        """Expired leases, on the server's clock (now is ignored): see the Protocol."""
        if self.suspended_at is not None:
            return DueResult([], [])
        # Committed before DUE runs: should DUE fail, the rows wait in the due index.
        (claims,) = self._run(lambda conn: conn.execute(
            SWEEP_CLAIMS, {"limit": SWEEP_CLAIMS_LIMIT}).fetchone())
        rows = self._run(lambda conn: conn.execute(DUE, {
            "max": self.max_attempts, "wall": time.time(), "lease": self.lease_s,
            "holder": self.holder, "limit": limit}).fetchall())
        more = len(rows) >= limit or claims >= SWEEP_CLAIMS_LIMIT
        self.next_scan = self.clock() + (0.0 if more else self.cfg.due_poll_s)
        try:  # the rows taken above are committed and must go out whatever this does
            self._run(self._refresh_counts)
        except StoreUnavailableError as exc:
            log.debug("%s: counts not refreshed: %s", LABEL, exc)
        resend, dead = [], []
        for state, attempts, payload in rows:
            item = decode_item(payload)
            if state == DEAD:
                dead.append(item)
            else:
                resend.append(Redelivery(item, attempts, payload))
        return DueResult(resend, dead)

    # Dead letters -------------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> tuple[int, list[dict]]:
        def read(conn: psycopg.Connection) -> tuple[int, list[tuple]]:
            total = conn.execute(f"SELECT count(*) FROM catalyst_ledger WHERE state = {DEAD}"
                                 ).fetchone()[0]
            rows = conn.execute(f"SELECT attempts, seen_at, payload FROM catalyst_ledger "
                                f"WHERE state = {DEAD} ORDER BY seen_at DESC LIMIT %s",
                                (limit,)).fetchall()
            return total, rows

        total, rows = self._run(read)
        return total, [dead_letter(*row) for row in rows]

    def replay_dead(self, keys: list[str] | None = None) -> int:
        params: dict[str, Any] = {"lease": UNSENT_RETRY_S}
        sql = REPLAY
        if keys is not None:
            if not keys:
                return 0
            sql += " AND key_hash = ANY(%(h)b::uuid[])"
            params["h"] = uuid_array(sorted({key_hash(k) for k in keys}))
        replayed = self._run(lambda conn: conn.execute(sql, params).rowcount)
        if replayed:
            self.next_scan = min(self.next_scan, self.clock() + UNSENT_RETRY_S)
        return replayed

    # Upkeep and numbers --------------------------------------------------------------

    def purge(self, now: float | None = None) -> int:
        """Deletes finished rows and dead letters older than the TTL in batches of
        purge_batch rows, each its own transaction, at most purge_max_batches a call."""
        cutoff = (time.time() if now is None else now) - self.ttl_s
        params = {"cutoff": cutoff, "batch": self.cfg.purge_batch}
        total, self.purge_incomplete = purge_in_batches(
            lambda: self._run(lambda conn: conn.execute(PURGE, params).rowcount),
            self.cfg.purge_batch, self.cfg.purge_max_batches)
        self._run(lambda conn: conn.execute(
            "DELETE FROM catalyst_fetchers WHERE expires_at < now() - %s * interval '1 second'",
            (FETCHERS_GONE_S,)))
        return total

    def probe(self) -> None:
        """Connects again if need be, and writes one row."""
        self.session.probe()

    def backup(self, directory: Path) -> dict:
        raise CommandError(f"the {LABEL} is not a file to copy: back it up on the database "
                           "side with pg_dump (its tables are catalyst_*), or the server's "
                           "own backups")

    def _refresh_counts(self, conn: psycopg.Connection, force: bool = False) -> None:
        now = self.clock()
        every = PENDING_REFRESH_S if self.pending < PENDING_BACKLOG else PENDING_BACKLOG_REFRESH_S
        if force or now - self.pending_at >= every:
            self.pending = conn.execute(PENDING_ROWS, {"holder": self.holder}).fetchone()[0]
            self.pending_at = now
        if force or now - self.live_at >= LIVE_REFRESH_S:
            estimate = conn.execute("SELECT reltuples::bigint FROM pg_class "
                                    "WHERE oid = 'catalyst_ledger'::regclass").fetchone()[0]
            if estimate < LIVE_EXACT_MAX:  # -1 before the first vacuum or analyze
                estimate = conn.execute("SELECT count(*) FROM catalyst_ledger").fetchone()[0]
            self.live = int(estimate)
            self.live_at = now

    def pending_count(self) -> int:
        """Pending rows leased to this store, as of the last lease scan (PENDING_REFRESH_S)."""
        return self.pending

    def live_keys(self) -> int:
        """Rows of the whole ledger, as of the last lease scan (estimated when large)."""
        return self.live

    def counts(self) -> dict[str, int]:
        rows = self._run(lambda conn: conn.execute(
            "SELECT state, count(*) FROM catalyst_ledger GROUP BY state").fetchall())
        return {STATE_NAMES[s]: n for s, n in rows}

    def expected_memory_bytes(self) -> int:
        """No key is held in memory: the database answers membership."""
        return 0

    # Feed leases ----------------------------------------------------------------------

    def take_feed_leases(self, holder: str, feeds: list[str], ttl_s: float,
                         paused: Iterable[str] = ()) -> FeedGrant:
        names = sorted(set(feeds))

        def grant(conn: psycopg.Connection) -> tuple[set[str], list[str]]:
            with conn.transaction():
                conn.execute(FETCHER_LIVE, {"holder": holder, "feeds": names,
                                            "paused": sorted(set(paused)), "ttl": ttl_s})
                live = {h: f for h, f, _ in conn.execute(LIVE_FETCHERS).fetchall()}
                pinned = dict(conn.execute(PINNED_FEEDS).fetchall())
                mine = owned_by(holder, live, pinned)
                conn.execute(GIVE_UP_FEEDS, {"holder": holder, "keep": mine})
                rows = conn.execute(TAKE_FEEDS, {"holder": holder, "feeds": mine,
                                                 "ttl": ttl_s}).fetchall() if mine else []
            return {feed for (feed,) in rows}, mine

        held, mine = self._run(grant)
        return FeedGrant([feed for feed in dict.fromkeys(feeds) if feed in held],
                         len(mine) - len(held))

    def release_feed_leases(self, holder: str, feeds: list[str]) -> int:
        names = sorted(set(feeds))

        def release(conn: psycopg.Connection) -> int:
            with conn.transaction():
                conn.execute("DELETE FROM catalyst_fetchers WHERE holder = %s", (holder,))
                if not names:
                    return 0
                return conn.execute(
                    "DELETE FROM catalyst_feed_leases WHERE holder = %(holder)s "
                    "AND feed = ANY(%(feeds)s::text[])",
                    {"holder": holder, "feeds": names}).rowcount

        return self._run(release)

    def close(self) -> None:
        self.session.close()
