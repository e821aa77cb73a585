"""The SeenStore: seen keys and the delivery ledger. The dedupe actor's alone (invariant 1
in docs/architecture.md): no other module may import this package.

    base.py      the SeenStore interface (a Protocol) and the contract every backend keeps
    sqlite.py    SqliteSeenStore: seen.db, one owner, the embedded default
    postgres.py  PostgresSeenStore: one PostgreSQL database shared by several dedupe actors
    sharing.py   which live fetcher each feed belongs to, when several hosts share them

open_seen_store() picks the backend from dedupe.backend; the PostgreSQL one (and psycopg)
is imported only when configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from actors.errors import StoreUnavailableError
from actors.seen_store.base import DueResult, Redelivery, SeenStore, key_hash
from actors.seen_store.sqlite import SqliteSeenStore

if TYPE_CHECKING:
    from catalyst_config import Config

__all__ = ["DueResult", "Redelivery", "SeenStore", "SqliteSeenStore", "key_hash",
           "open_seen_store", "store_label"]


def store_label(config: Config) -> str:
    """How events and logs name the configured ledger."""
    if config.dedupe.backend == "postgres":
        from actors.seen_store.postgres import LABEL

        return LABEL
    return "seen.db"


def open_seen_store(config: Config, *, on_corrupt: Callable[[str], None] | None = None,
                    holder: str | None = None) -> SeenStore:
    """The configured SeenStore, open. Raises StoreLockedError (seen.db has another owner)
    or StoreUnavailableError (the ledger cannot be used now: its owner tries again).
    holder: this store's name in shared leases (PostgreSQL; default host:pid:random)."""
    d = config.dedupe
    feeds = [f.name for f in config.feeds]
    mark_seen = [f.name for f in config.feeds if config.fetch.first_poll_of(f) == "mark_seen"]
    if d.backend == "postgres":
        from actors.seen_store.postgres import LABEL, PostgresSeenStore

        dsn = config.secrets.get(d.postgres.dsn_env)
        if not dsn:  # the loader refuses this; an actor started without it waits, saying so
            raise StoreUnavailableError(f"{LABEL}: ${d.postgres.dsn_env} is not set in the "
                                        "environment", "cant_open")
        return PostgresSeenStore(dsn, pg_cfg=d.postgres, lease_s=d.lease_s,
                                 max_attempts=d.max_attempts, ttl_s=d.ttl_days * 86400.0,
                                 holder=holder, feeds=feeds, mark_seen_first_poll=mark_seen)
    return SqliteSeenStore(config.path(config.data_dir) / "seen.db", sqlite_cfg=d.sqlite,
                           lease_s=d.lease_s, max_attempts=d.max_attempts,
                           ttl_s=d.ttl_days * 86400.0, on_corrupt=on_corrupt, feeds=feeds,
                           mark_seen_first_poll=mark_seen)
