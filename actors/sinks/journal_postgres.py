"""PostgresAlertJournal: the alert delivery journal in the PostgreSQL database a deployment
shares (dedupe.backend: postgres), so that alert actors on several hosts never alert an item
twice (invariant 4 in docs/architecture.md). Same interface and verdicts as AlertJournal
(actors/sinks/journal.py): GO, ALREADY, BUSY, UNSURE, and StoreUnavailableError for every
storage fault, so the alert actor's journal outage (alerts held, their ledger leases renewed
with "held" acks) applies unchanged.

One row per (item key, sink). What differs from alerts.db is how a delivery in progress is
known to be someone else's: a process on another host cannot be asked whether it lives, so
a "sending" row carries its holder (host/actor/pid/random part: one process incarnation,
since pids are reused) and a lease, expires_at, on the server's clock (hosts need not agree
on the time).

- begin() is atomic across hosts. A new (key, sink) is one INSERT ... ON CONFLICT DO
  NOTHING RETURNING: of two at once, the second waits on the primary key and gets nothing.
  A row there already is taken over (UNSURE, the old mark kept so the sink is asked whether
  the key was written after it) by an UPDATE ... WHERE (the row is ours, or its lease ran
  out) RETURNING: of two at once, the second re-checks the row after the first commits and
  matches nothing. Else the row answers ALREADY (done) or BUSY (another holder's lease runs).
- The lease (dedupe.postgres.delivery_lease_s, 120 s by default) is renewed every third of
  it, on a thread of this journal with its own connection, for the deliveries this process
  began and has not yet recorded done or released. A sink's delivery has no useful upper
  bound (Discord waits out rate limits and retries an outage without end), so a fixed lease
  would let another instance take over a post still under way and send it again; renewed, a
  delivery stays BUSY to the others however long it takes. What the lease bounds is how
  long a holder that died (SIGKILL, its host lost) keeps its rows: then renewal stops, the
  item, never acked, is sent again by dedupe (dedupe.lease_s, also 120 s by default), and
  the first instance to get it after the lease ran out answers UNSURE and asks the sink. A
  shorter lease would not bring that item back sooner (dedupe's lease decides when it
  returns); a longer one lets a database blip of up to two thirds of it pass without a live
  holder's lease running out.
- done() is final: ALREADY from then on, written even if the row had gone (an upsert).
- release() forgets only this holder's attempt, never a row another holder took over.
- purge() deletes done rows older than the TTL in bounded batches (dedupe.postgres
  purge_batch, purge_max_batches), each its own short transaction; purge_incomplete says
  rows were left for the next run.
- The schema is created at open (catalyst_schema row "alert_journal", version 1) through
  actors/storage/postgres.py, as the PostgreSQL seen-store does.

A sink's mark is a position in that sink as its holder saw it (a JSONL file's size): when
the holder was on another host with a file of its own, asking this host's file after that
mark answers "not written" and the alert is delivered again, once, after a crash: the
at-least-once edge the journal allows, as for a Discord post whose answer was lost.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from actors.errors import CommandError, StoreUnavailableError
from actors.storage.postgres import PgSession, open_schema, purge_in_batches

if TYPE_CHECKING:
    from catalyst_config.schema import PostgresConfig

log = logging.getLogger("catalyst.alert")

LABEL = "PostgreSQL alert journal"
APPLICATION_NAME = "catalyst-alert"
SCHEMA_VERSION = 1
SCHEMA_COMPONENT = "alert_journal"  # its row in catalyst_schema
RENEW_FRACTION = 3  # the lease is renewed every delivery_lease_s / 3
RENEW_JOIN_S = 2.0  # close() waits this long for the renewal thread (a daemon) to end
BEGIN_TRIES = 3  # the row changed between begin's statements: read it again this often

SENDING, DONE = 0, 1
GO, ALREADY, BUSY, UNSURE = "go", "already", "busy", "unsure"  # as in journal.py

# Version 1. at is wall-clock epoch seconds from the writing host (a TTL of days does not
# mind clock skew); leases are on the server's clock.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS catalyst_alert_journal (
    key text NOT NULL,
    sink text NOT NULL,
    state smallint NOT NULL,         -- {SENDING} sending, {DONE} done
    holder text,                     -- sending: the process delivering it
    expires_at timestamptz,          -- sending: the holder's lease
    mark bigint,                     -- the sink's position before the first attempt
    at double precision NOT NULL,    -- the last change: the TTL counts from it
    PRIMARY KEY (key, sink)
);
CREATE INDEX IF NOT EXISTS catalyst_alert_journal_done ON catalyst_alert_journal (at)
    WHERE state = {DONE}"""
# MIGRATIONS[n] takes the journal from version n to n + 1, in the opening transaction.
MIGRATIONS: dict[int, str] = {}

_LEASE = "now() + %(lease)s * interval '1 second'"
START = f"""
INSERT INTO catalyst_alert_journal (key, sink, state, holder, expires_at, mark, at)
VALUES (%(key)s, %(sink)s, {SENDING}, %(holder)s, {_LEASE}, %(mark)s, %(at)s)
ON CONFLICT (key, sink) DO NOTHING
RETURNING 1"""
TAKE_OVER = f"""
UPDATE catalyst_alert_journal SET holder = %(holder)s, expires_at = {_LEASE}, at = %(at)s
WHERE key = %(key)s AND sink = %(sink)s AND state = {SENDING}
  AND (holder = %(holder)s OR expires_at <= now())
RETURNING mark"""
READ = """
SELECT state, holder = %(holder)s OR expires_at <= now(), mark
FROM catalyst_alert_journal WHERE key = %(key)s AND sink = %(sink)s"""
FINISH = f"""
INSERT INTO catalyst_alert_journal (key, sink, state, at)
VALUES (%(key)s, %(sink)s, {DONE}, %(at)s)
ON CONFLICT (key, sink) DO UPDATE
SET state = {DONE}, holder = NULL, expires_at = NULL, at = EXCLUDED.at"""
RELEASE = f"""
DELETE FROM catalyst_alert_journal
WHERE key = %(key)s AND sink = %(sink)s AND state = {SENDING} AND holder = %(holder)s"""
RENEW = f"""
UPDATE catalyst_alert_journal j SET expires_at = {_LEASE}
FROM unnest(%(keys)s::text[], %(sinks)s::text[]) AS t(key, sink)
WHERE j.key = t.key AND j.sink = t.sink AND j.state = {SENDING} AND j.holder = %(holder)s"""
PURGE = f"""
DELETE FROM catalyst_alert_journal WHERE (key, sink) IN (
    SELECT key, sink FROM catalyst_alert_journal
    WHERE state = {DONE} AND at < %(cutoff)s
    LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"""


def default_holder(name: str) -> str:
    """This process's name on its rows: host, actor, pid and a random part."""
    return f"{socket.gethostname()}/{name}/{os.getpid()}/{secrets.token_hex(3)}"


class PostgresAlertJournal:
    """The shared delivery journal of one alert actor: one connection for the actor's loop
    and one for the lease-renewal thread."""

    label = LABEL

    def __init__(self, dsn: str, *, pg_cfg: PostgresConfig, ttl_s: float, name: str = "alert",
                 holder: str | None = None):
        """dsn: libpq connection string (a secret). name: the actor's, for the holder id.
        Raises StoreUnavailableError when the server cannot be used."""
        self.cfg = pg_cfg
        self.ttl_s = ttl_s
        self.lease_s = pg_cfg.delivery_lease_s
        self.holder = holder or default_holder(name)
        self.purge_incomplete = False
        self.renewals = 0  # rows whose lease the thread renewed
        self.renew_faults = 0
        self.session = PgSession(dsn, pg_cfg, label=LABEL, application_name=APPLICATION_NAME)
        self._renew_session = PgSession(dsn, pg_cfg, label=LABEL,
                                        application_name=APPLICATION_NAME)
        self._active: set[tuple[str, str]] = set()  # begun here, not yet done or released
        self._lock = threading.Lock()
        self._stop = threading.Event()
        try:
            with self.session.faults():
                open_schema(self.session.connection(), label=LABEL,
                            component=SCHEMA_COMPONENT, version=SCHEMA_VERSION, schema=SCHEMA,
                            migrations=MIGRATIONS)
        except BaseException:
            self.session.close()
            raise
        self._renewer = threading.Thread(target=self._renew_loop, name="journal-lease",
                                         daemon=True)
        self._renewer.start()

    # Deliveries ---------------------------------------------------------------------

    def begin(self, key: str, sink: str, mark: int | None) -> tuple[str, int | None]:
        """Takes (key, sink) for this process: GO, or ALREADY delivered, or BUSY (another
        holder's lease runs), or UNSURE (a holder whose lease ran out, or this process,
        may have delivered it; the old mark is returned)."""
        params = {"key": key, "sink": sink, "holder": self.holder, "lease": self.lease_s,
                  "mark": mark, "at": time.time()}

        def take(conn: psycopg.Connection) -> tuple[str, int | None]:
            for _ in range(BEGIN_TRIES):
                if conn.execute(START, params).fetchone() is not None:
                    return GO, None
                row = conn.execute(TAKE_OVER, params).fetchone()
                if row is not None:
                    return UNSURE, row[0]
                row = conn.execute(READ, params).fetchone()
                if row is None:  # released meanwhile: start it again
                    continue
                state, takeable, old_mark = row
                if state == DONE:
                    return ALREADY, old_mark
                if not takeable:
                    return BUSY, old_mark
                # its lease ran out between the two statements: take it over again
            return BUSY, None  # changing under us: held, and sent again by the ledger

        verdict, old_mark = self.session.run(take)
        if verdict in (GO, UNSURE):
            with self._lock:
                self._active.add((key, sink))
        return verdict, old_mark

    def done(self, key: str, sink: str) -> None:
        self.session.run(lambda conn: conn.execute(
            FINISH, {"key": key, "sink": sink, "at": time.time()}))
        with self._lock:
            self._active.discard((key, sink))

    def release(self, key: str, sink: str) -> None:
        """The sink failed before anything was written: forget this holder's attempt."""
        try:
            self.session.run(lambda conn: conn.execute(
                RELEASE, {"key": key, "sink": sink, "holder": self.holder}))
        finally:  # not deleted: it is no longer renewed, and its lease runs out
            with self._lock:
                self._active.discard((key, sink))

    # Upkeep -------------------------------------------------------------------------

    def purge(self, now: float | None = None) -> int:
        """Deletes done rows older than the TTL: purge_batch rows a transaction, at most
        purge_max_batches a call (purge_incomplete: more is left)."""
        params = {"cutoff": (time.time() if now is None else now) - self.ttl_s,
                  "batch": self.cfg.purge_batch}
        total, self.purge_incomplete = purge_in_batches(
            lambda: self.session.run(lambda conn: conn.execute(PURGE, params).rowcount),
            self.cfg.purge_batch, self.cfg.purge_max_batches)
        return total

    def probe(self) -> None:
        """Connects again if need be and writes one row: raises StoreUnavailableError
        while the database cannot take writes."""
        self.session.probe()

    def backup(self, directory: Path) -> dict:
        raise CommandError(f"the {LABEL} is not a file to copy: back it up on the database "
                           "side with pg_dump (its tables are catalyst_*), or the server's "
                           "own backups")

    def close(self) -> None:
        """Stops renewing (rows still sending run out after their lease) and disconnects."""
        self._stop.set()
        renewer = getattr(self, "_renewer", None)
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(RENEW_JOIN_S)
        self.session.close()

    # Lease renewal (its own thread and connection) ---------------------------------

    def _renew_loop(self) -> None:
        every = self.lease_s / RENEW_FRACTION
        failing = False
        try:
            while not self._stop.wait(every):
                with self._lock:
                    active = sorted(self._active)
                if not active:
                    continue
                params = {"keys": [k for k, _ in active], "sinks": [s for _, s in active],
                          "holder": self.holder, "lease": self.lease_s}
                try:
                    self.renewals += self._renew_session.run(
                        lambda conn, params=params: conn.execute(RENEW, params).rowcount)
                except StoreUnavailableError as exc:
                    self.renew_faults += 1
                    if not failing:
                        log.warning("%s: delivery leases not renewed (tried again in %.0f s): "
                                    "%s", LABEL, every, exc)
                    failing = True
                    continue
                except Exception:  # a bug: said once a try, never a dead thread in silence
                    self.renew_faults += 1
                    log.exception("%s: renewing delivery leases failed", LABEL)
                    continue
                if failing:
                    log.info("%s: delivery leases renewed again", LABEL)
                    failing = False
        finally:
            self._renew_session.close()
