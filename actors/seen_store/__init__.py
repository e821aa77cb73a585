"""The SeenStore: seen keys and the delivery ledger. The dedupe actor's alone (invariant 1
in docs/architecture.md): no other module may import this package."""

from actors.seen_store.sqlite import DueResult, Redelivery, SqliteSeenStore, key_hash

__all__ = ["DueResult", "Redelivery", "SqliteSeenStore", "key_hash"]
