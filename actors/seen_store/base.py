"""The SeenStore interface: what the dedupe actor asks of a ledger backend.

Two backends keep it: SqliteSeenStore (actors/seen_store/sqlite.py, the embedded default:
one file, one owner, membership and leases in memory) and PostgresSeenStore
(actors/seen_store/postgres.py: one database shared by several dedupe actors on several
hosts, membership and leases in the database). The dedupe actor (actors/dedupe.py) is
written against this Protocol alone and gets its backend from open_seen_store()
(actors/seen_store/__init__.py).

The contract each backend keeps, and what dedupe relies on:

- Claims are atomic (invariant 2 in docs/architecture.md). A key, or an item's cross-wire
  signature, that was ever claimed and not yet purged is never new again: whoever claims
  it first, through whichever store of the same ledger, gets it, and every other claim,
  concurrent or later, gets nothing for it. A claim returns only after the ledger has the
  new items as pending, with their payload and one send counted (invariant 3).
- Leases: a pending item is leased to the store that handed it out (claim, or due()).
  When a lease runs out, due() hands the item out again with its attempt count raised
  (to this store or, on a shared ledger, any other), and an item out of attempts becomes
  a dead letter there, returned once. unsent() takes back the send of an item the next
  stage refused and makes it due again soon; sent() confirms sends; hold() renews leases
  without counting a send.
- Outcomes are idempotent: finish() and condemn() change pending items only and return
  how many were pending; a repeated or late call changes nothing and counts nothing.
- Dead letters keep their item for dead_letters() until purged; replay_dead() makes
  them pending again with a fresh count, due at once; a replayed key is still not new.
- purge() forgets finished keys and dead letters older than the TTL, never pending
  ones; a backend may do it in bounded batches and then says purge_incomplete.
- Storage faults (a full disk, a lock, a lost connection, a server that is down) raise
  actors.errors.StoreUnavailableError and leave the store consistent: the caller may try
  the same call again later. probe() is that try when nothing else is pending; it also
  reconnects. While the caller cannot reach the ledger it suspends the leases, so an
  outage sends nothing again, counts no attempt and kills no item; resume_leases() moves
  them on by the pause.
- pending_count(), live_keys(), expected_memory_bytes() and next_due() never touch the
  storage in a way that can fail: they are read on every heartbeat and loop turn.
"""

from __future__ import annotations

import hashlib

import msgspec
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Protocol

from actors.protocol import Item

_item_decoder = msgspec.msgpack.Decoder(Item)
encode_item = msgspec.msgpack.Encoder().encode  # an item as every ledger keeps it
decode_item = _item_decoder.decode


def dead_letter(attempts: int, died_at: float, payload: bytes) -> dict:
    """A dead letter as the operator sees it (dead-letters, the console), from its row."""
    item = _item_decoder.decode(payload)
    return {"key": item.key, "title": item.title, "source": item.source, "link": item.link,
            "attempts": attempts, "died_at": died_at}

# An item the next stage could not take yet (the llm inbox not there) is tried again this
# soon, by every backend.
UNSENT_RETRY_S = 0.1

# A ledger row's state, the same numbers in every backend.
SEEN, PENDING, DELIVERED, FILTERED, DEAD = 0, 1, 2, 3, 4
STATE_NAMES = {SEEN: "seen", PENDING: "pending", DELIVERED: "delivered", FILTERED: "filtered",
               DEAD: "dead"}
OUTCOMES = {"delivered": DELIVERED, "filtered": FILTERED}


HASH_BYTES = 16
# Copying a hasher made once costs a quarter less than making one with its digest size,
# per key (measured here: 0.30 against 0.40 us).
_BLAKE2B = hashlib.blake2b(digest_size=HASH_BYTES)


def key_hash(key: str) -> bytes:
    """128 bits of a key (BLAKE2b): no collision is to be expected among billions of keys."""
    hasher = _BLAKE2B.copy()
    hasher.update(key.encode())
    return hasher.digest()


@dataclass
class Redelivery:
    item: Item
    attempt: int
    payload: bytes  # the item as the ledger keeps it (encode_item): forwarded as it is


# A claimed item and its payload in the ledger (encode_item(item)), which the dedupe actor
# forwards as it is rather than encoding the item a second time. A plain tuple: a named
# one cost a claim of 500 items more than its hashing (benchmarks/dedupe_backends.py).
NewItem = tuple[Item, bytes]


class FeedGrant(NamedTuple):
    held: list[str]  # the feeds the holder holds now, in the order asked
    handover: int  # feeds shared to it that another live fetcher holds still


@dataclass
class DueResult:
    resend: list[Redelivery]
    dead: list[Item]


class SeenStore(Protocol):
    """A ledger backend for the dedupe actor (see the module's docstring for the contract)."""

    label: str  # names the store in events and errors ("seen.db", "PostgreSQL seen-store")
    marked_seen: int  # items recorded seen on their feed's first poll, since opened
    purge_incomplete: bool  # the last purge() stopped at its bound: call it again soon

    # Claiming

    def claim(self, items: Iterable[Item], now: float | None = None, *,
              polled: Iterable[str] = ()) -> list[Item]:
        """Claims items atomically; returns those that were new, now pending (attempt 1)
        and leased to this store. A key or signature seen before is a duplicate; an item of
        a feed whose first poll marks seen (fetch.first_poll) and that has not completed a
        poll is recorded as seen, not returned. polled: feeds whose poll this claim
        completes. now: wall-clock time, for the TTL."""
        ...

    def claim_group(self, claims: Iterable[tuple[Iterable[Item], Iterable[str]]],
                    now: float | None = None) -> list[NewItem]:
        """Several claims (items, polled) in one atomic step, in their order (group
        commit): a key in two of them is new for the first only, and a feed one completes
        the poll of is a polled feed for those after it. Returns all their new items, each
        with its payload."""
        ...

    # Outcomes and leases

    def finish(self, keys: list[str], outcome: str) -> int:
        """Marks pending keys delivered or filtered (outcome); returns how many were
        pending. Idempotent."""
        ...

    def condemn(self, keys: list[str]) -> int:
        """Makes pending items dead letters at once (an item no frame can carry); returns
        how many were pending."""
        ...

    def sent(self, keys: list[str]) -> None:
        """The next stage took these redeliveries (handed out by due()): their send counts
        and a lease runs from now."""
        ...

    def unsent(self, keys: list[str]) -> None:
        """The next stage did not take these (claimed or due): take back the send they were
        counted for and make them due again within UNSENT_RETRY_S."""
        ...

    def hold(self, keys: list[str]) -> int:
        """The alert side still holds these: renew their leases without counting a send.
        Returns how many were pending (0 while the leases are suspended)."""
        ...

    def due(self, now: float | None = None, limit: int = 500) -> DueResult:
        """Items whose lease ran out, at most limit: to send again (counted as sent and
        leased to this store; pass them to sent() or unsent()), and those out of attempts,
        dead letters on return. Nothing while the leases are suspended. now: the store's
        own clock where it has one it may be given (SQLite: monotonic); a shared ledger
        keeps time on its server and ignores it."""
        ...

    def next_due(self) -> float:
        """When due() next has work, on time.monotonic(); inf when nothing is pending or
        the leases are suspended. Never touches the storage."""
        ...

    def suspend_leases(self) -> None:
        """Stops the lease clock: the caller cannot reach the ledger."""
        ...

    def resume_leases(self) -> None:
        """Starts it again where it stopped: each lease keeps what it had left."""
        ...

    # Dead letters

    def dead_letters(self, limit: int = 100) -> tuple[int, list[dict]]:
        """How many dead letters there are, and the newest limit of them (key, title,
        source, link, attempts, died_at)."""
        ...

    def replay_dead(self, keys: list[str] | None = None) -> int:
        """Makes dead letters (keys None: all) pending again with a fresh count of
        attempts, due at once; returns how many."""
        ...

    # Upkeep and numbers

    def purge(self, now: float | None = None) -> int:
        """Forgets finished keys and dead letters older than the TTL, never pending ones;
        returns how many. now: wall-clock time."""
        ...

    def probe(self) -> None:
        """One small committed write (reconnecting first where the backend has a
        connection): raises StoreUnavailableError while the ledger cannot take writes."""
        ...

    def backup(self, directory: Path) -> dict:
        """A consistent copy in directory ({file, path, bytes, ...}), or CommandError
        saying how this backend is backed up instead."""
        ...

    def pending_count(self) -> int:
        """Items pending (exact for a private ledger, recent for a shared one)."""
        ...

    def live_keys(self) -> int:
        """Keys and signatures the ledger remembers (may be an estimate on a shared one)."""
        ...

    def counts(self) -> dict[str, int]:
        """Rows by state name (seen, pending, delivered, filtered, dead)."""
        ...

    def expected_memory_bytes(self) -> int:
        """Memory this store holds by design (its key index, its page cache): the
        supervisor judges the actor's memory trend net of it."""
        ...

    # Feed leases: which fetcher polls which feed, across hosts

    def take_feed_leases(self, holder: str, feeds: list[str], ttl_s: float,
                         paused: Iterable[str] = ()) -> FeedGrant:
        """Records holder as a live fetcher of feeds (paused: those paused on its host)
        until ttl_s from now; then gives up the leases it holds of feeds now another's
        (sharing.owned_by: a feed a live fetcher holds and has paused stays its own, the
        rest are shared) and takes or renews, for ttl_s, each feed of its own that is free,
        lapsed or already held by it. Never takes a lease another holder has not let lapse
        or given up; atomic among concurrent callers."""
        ...

    def release_feed_leases(self, holder: str, feeds: list[str]) -> int:
        """Gives up holder's leases of feeds, and its place among the live fetchers (a
        clean stop); returns how many leases it held."""
        ...

    def close(self) -> None:
        ...
