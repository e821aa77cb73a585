"""PostgreSQL as the actors that share state through one database use it (dedupe.backend:
postgres): the dedupe actors' ledger (actors/seen_store/postgres.py) and the alert actors'
delivery journal (actors/sinks/journal_postgres.py). psycopg 3, one connection per user.

- PgSession: the DSN with our session settings (statement and lock timeouts, keepalives,
  connect timeout, application name), one autocommit connection opened on first use and
  again after a fault, storage faults as StoreUnavailableError (the DSN and its password
  masked in the message), a deadlock or serialization failure tried again.
- open_schema(): creates or migrates one component's tables under an advisory lock (several
  actors may start at once), its version a row in catalyst_schema; a database written by a
  newer release is refused (SchemaTooNewError) and left as it is.
- fault_reason(): which psycopg errors are storage faults, and why.

The DSN comes only from the environment (dedupe.postgres.dsn_env) and is a secret.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from actors.errors import StoreUnavailableError
from actors.storage import pg_arrays
from actors.storage.sqlite import SchemaTooNewError

if TYPE_CHECKING:
    from catalyst_config.schema import PostgresConfig

log = logging.getLogger("catalyst.storage")

CONFLICT_RETRIES = 3  # a deadlock or serialization failure: tried again this often
# Libpq's TCP keepalives: a peer that vanished (host down, network cut) is noticed within
# about idle + interval x count seconds instead of the kernel's two hours. Unix sockets
# ignore them.
KEEPALIVE = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
             "keepalives_count": "3"}
SCHEMA_LOCK_KEY = 0x6361745F7365656E  # pg_advisory_xact_lock: one start creates or migrates

# One row per component (seen_store, alert_journal): the schema version its tables have.
SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS catalyst_schema (
    component text PRIMARY KEY,
    version integer NOT NULL
)"""
# probe(): one small committed write, so a read-only or full server shows as such.
PROBE_TABLE = """
CREATE TABLE IF NOT EXISTS catalyst_probe (
    id integer PRIMARY KEY CHECK (id = 1),
    at timestamptz NOT NULL
)"""
PROBE = ("INSERT INTO catalyst_probe (id, at) VALUES (1, now()) "
         "ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at")

# SQLSTATEs that are storage faults (the database cannot be used now), by reason; any other
# OperationalError (a connection refused or lost: no SQLSTATE, class 08, 57P0x) is
# "unreachable". Anything else (a syntax error, a constraint) is a bug and goes through.
_REASONS = {"53100": "disk_full", "25006": "read_only", "58030": "io_error",
            "55P03": "locked", "57014": "locked", "40001": "locked", "40P01": "locked"}

# Another transaction won (a deadlock broken by the server, a serialization failure): the
# statement had no effect and may simply run again.
CONFLICTS = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure,
             pg_errors.TransactionRollback)


def fault_reason(exc: BaseException) -> str | None:
    """The StoreUnavailableError reason a psycopg error means; None: not a storage fault."""
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return "read_only"
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return _REASONS.get(getattr(exc, "sqlstate", None) or "", "unreachable")
    return None


class PgSession:
    """One connection to the shared database for one user (an actor's store, or one of its
    threads): opened on first use, dropped on a fault and opened again by the next call."""

    def __init__(self, dsn: str, cfg: PostgresConfig, *, label: str, application_name: str):
        """dsn: libpq connection string (a secret). label names the store in messages.
        Raises StoreUnavailableError (cant_open) for a DSN libpq cannot parse."""
        self.cfg = cfg
        self.label = label
        self.conn: psycopg.Connection | None = None
        self._masked: list[str] = [dsn]
        self.conninfo = self._conninfo(dsn, application_name)

    def _conninfo(self, dsn: str, application_name: str) -> str:
        """The DSN with our session settings added: statement and lock timeouts (nothing
        waits forever, invariant 6 in docs/architecture.md), keepalives, connect timeout."""
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:  # the loader checks the DSN; its text is never shown
            raise StoreUnavailableError(f"{self.label}: the DSN in ${self.cfg.dsn_env} is not "
                                        "a valid libpq connection string", "cant_open") from None
        if params.get("password"):
            self._masked.append(str(params["password"]))
        timeout_ms = int(self.cfg.statement_timeout_s * 1000)
        options = f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
        params["options"] = f"{params.get('options', '')} {options}".strip()
        params.setdefault("connect_timeout", str(self.cfg.connect_timeout_s))
        params.setdefault("application_name", application_name)
        for key, value in KEEPALIVE.items():
            params.setdefault(key, value)
        return make_conninfo(**params)

    def connection(self) -> psycopg.Connection:
        """The open connection, or a new one (one try, connect_timeout_s at most)."""
        conn = self.conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self.drop()
        self.conn = psycopg.connect(self.conninfo, autocommit=True)
        pg_arrays.register(self.conn)
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    close = drop

    def describe(self, exc: BaseException) -> str:
        """The error's first line with the DSN and its password masked, and its SQLSTATE."""
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        for secret in self._masked:
            if secret:
                text = text.replace(secret, "***")
        state = getattr(exc, "sqlstate", None)
        return f"{text} ({state})" if state else text

    @contextlib.contextmanager
    def faults(self) -> Iterator[None]:
        """Storage faults inside become StoreUnavailableError; a broken connection is
        dropped, so the next call opens a new one."""
        try:
            yield
        except psycopg.Error as exc:
            reason = fault_reason(exc)
            if self.conn is not None and (self.conn.closed or self.conn.broken):
                self.drop()
            if reason is None:
                raise
            raise StoreUnavailableError(f"{self.label}: {self.describe(exc)}", reason) from None

    def run(self, work: Callable[[psycopg.Connection], Any]) -> Any:
        """work(connection) with faults as StoreUnavailableError; a deadlock or a
        serialization failure (another transaction won) is tried again."""
        with self.faults():
            for attempt in range(1, CONFLICT_RETRIES + 1):
                try:
                    return work(self.connection())
                except CONFLICTS:
                    if attempt == CONFLICT_RETRIES:
                        raise
                    log.info("%s: a conflicting transaction won; trying again", self.label)

    def probe(self) -> None:
        """Connects again if need be, and writes one row (the tables of open_schema)."""
        self.run(lambda conn: conn.execute(PROBE))


def purge_in_batches(delete_batch: Callable[[], int], batch: int,
                     max_batches: int) -> tuple[int, bool]:
    """Runs delete_batch (one transaction deleting at most `batch` rows) until a batch
    comes back short or max_batches ran; returns (rows deleted, whether more is left), so
    a large backlog never holds one long transaction."""
    total = 0
    for _ in range(max_batches):
        gone = delete_batch()
        total += gone
        if gone < batch:
            return total, False
    return total, True


def open_schema(conn: psycopg.Connection, *, label: str, component: str, version: int,
                schema: str, migrations: dict[int, str]) -> None:
    """Creates component's tables (schema, at version) or migrates them (migrations[n]
    takes version n to n + 1), in one transaction under an advisory lock, with the shared
    catalyst_schema and catalyst_probe tables; refuses a database from a newer release
    (SchemaTooNewError, left as it is)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        conn.execute(SCHEMA_TABLE)
        conn.execute(PROBE_TABLE)
        row = conn.execute("SELECT version FROM catalyst_schema WHERE component = %s",
                           (component,)).fetchone()
        found = row[0] if row else 0
        if found > version:
            raise SchemaTooNewError(
                f"{label} has schema version {found}, newer than version {version} "
                "that this version of catalyst-supervisor supports: it was written by a "
                "newer release. Run that release, or restore a dump made by this one; the "
                "database is left as it is")
        if found == 0:  # a new database: the schema as this release writes it
            conn.execute(schema)
            found = version
        for v in range(found, version):
            log.info("%s: migrating schema from version %d to %d", label, v, v + 1)
            conn.execute(migrations[v])
        conn.execute("INSERT INTO catalyst_schema (component, version) VALUES (%s, %s) "
                     "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                     (component, version))
