"""The SeenStore contract (actors/seen_store/base.py), run against both backends: seen.db
and a real PostgreSQL server (tests/pg_server.py); then what only a shared ledger must do:
several stores claiming at once, a dead store's leases taken over, a server that stops
mid-run, feed leases between holders, and a dedupe actor on PostgreSQL end to end."""

from __future__ import annotations

import collections
import random
import threading
import time

import psycopg
import pytest

from actors.errors import ConfigError, StoreUnavailableError
from actors.protocol import Item
from actors.seen_store import SeenStore, SqliteSeenStore
from actors.seen_store import postgres as pg_store
from actors.seen_store.postgres import SCHEMA_VERSION, PostgresSeenStore
from actors.seen_store.sharing import shared_to
from actors.seen_store.base import encode_item, key_hash
from actors.storage.sqlite import SchemaTooNewError
from catalyst_config import SqliteConfig, config_from_dict
from catalyst_config.schema import PostgresConfig
from tests.conftest import base_config, wait_for


# Fast enough to see a lease run out, slow enough that a busy 2-core machine does not let
# one run out between a claim and the next line of a test.
SHORT_LEASE_S = 0.6
PG_TEST = PostgresConfig(due_poll_s=0.05, connect_timeout_s=2, statement_timeout_s=10.0)


def item(key: str, **kw) -> Item:
    return Item(key=key, title=f"title {key}", link=f"https://x.example/{key}", source="t",
                kind="pr", **kw)


def keys(items: list[Item]) -> list[str]:
    return [i.key for i in items]


class Backend:
    """Opens stores of one backend on one ledger: seen.db in a temporary directory, or a
    schema of its own on the session's PostgreSQL server."""

    def __init__(self, name: str, tmp_path, dsn: str | None):
        self.name, self.tmp_path, self.dsn = name, tmp_path, dsn
        self.opened: list[SeenStore] = []

    def open(self, *, purge_batch: int = 5000, purge_max_batches: int = 20,
             **kw) -> SeenStore:
        args = dict(lease_s=60.0, max_attempts=3, ttl_s=3600.0)
        args.update(kw)
        if self.name == "sqlite":
            store = SqliteSeenStore(self.tmp_path / "seen.db", sqlite_cfg=SqliteConfig(), **args)
        else:
            cfg = PostgresConfig(**{**PG_TEST.__dict__, "purge_batch": purge_batch,
                                    "purge_max_batches": purge_max_batches})
            store = PostgresSeenStore(self.dsn, pg_cfg=cfg, **args)
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            try:
                store.close()
            except Exception:  # noqa: BLE001  (closed already by the test)
                pass


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    b = Backend(request.param, tmp_path, dsn)
    yield b
    b.close()


@pytest.fixture
def pg(pg_dsn, tmp_path):
    b = Backend("postgres", tmp_path, pg_dsn)
    yield b
    b.close()


def due_keys(store: SeenStore) -> list[tuple[str, int]]:
    return sorted((r.item.key, r.attempt) for r in store.due().resend)


# The contract, on both backends -------------------------------------------------------


def test_a_claim_returns_only_new_keys_and_claiming_them_again_returns_none(backend):
    store = backend.open()
    assert keys(store.claim([item("a"), item("b"), item("a")])) == ["a", "b"]
    assert store.claim([item("a"), item("b")]) == []
    copies = store.claim([item("c", signature="ACME|acme wins"),
                          item("d", signature="ACME|acme wins")])
    assert keys(copies) == ["c"]  # the same release from a second wire
    assert store.claim([item("e", signature="ACME|acme wins")]) == []
    new = store.claim_group([([item("f")], []), ([item("f"), item("g")], [])])
    assert keys([item for item, _ in new]) == ["f", "g"]
    assert all(payload == encode_item(item) for item, payload in new)
    assert store.counts()["pending"] == 5  # a, b, c, f, g; d, e and the signature are seen


def test_a_feeds_first_poll_is_recorded_seen_and_later_items_are_new(backend):
    store = backend.open(feeds=["wire"], mark_seen_first_poll=["wire"])
    first = [Item(key=f"old{i}", title="t", link=f"https://x.example/old{i}", source="wire",
                  kind="pr") for i in range(3)]
    assert store.claim(first[:2]) == [] and store.claim(first[2:], polled=["wire"]) == []
    assert store.marked_seen == 3
    later = Item(key="new", title="t", link="https://x.example/new", source="wire", kind="pr")
    assert keys(store.claim([*first, later], polled=["wire"])) == ["new"]


def test_outcomes_are_idempotent(backend):
    store = backend.open()
    store.claim([item("a"), item("b"), item("c")])
    assert store.finish(["a", "nope"], "delivered") == 1
    assert store.finish(["a"], "delivered") == 0  # a late or repeated ack counts nothing
    assert store.finish(["a"], "filtered") == 0
    assert store.condemn(["b"]) == 1 and store.condemn(["b"]) == 0
    assert store.finish(["b"], "delivered") == 0  # a dead letter is not finished by an ack
    assert store.finish(["c"], "filtered") == 1
    assert store.counts() == {"delivered": 1, "dead": 1, "filtered": 1}
    assert store.claim([item("a"), item("b"), item("c")]) == []


def test_an_expired_lease_is_handed_out_again_then_dead_lettered_and_replayed(backend):
    store = backend.open(lease_s=SHORT_LEASE_S, max_attempts=2)
    store.claim([item("a"), item("b")])
    store.finish(["b"], "delivered")
    assert wait_for(lambda: due_keys(store), 10, message="a's lease ran out") == [("a", 2)]
    store.sent(["a"])
    dead = wait_for(lambda: store.due().dead, 10, message="a out of attempts")
    assert keys(dead) == ["a"] and store.counts()["dead"] == 1
    total, letters = store.dead_letters(limit=5)
    assert total == 1 and letters[0]["key"] == "a" and letters[0]["attempts"] == 2
    assert letters[0]["title"] == "title a"
    assert store.replay_dead(["a", "b", "nope"]) == 1  # b is delivered, not dead
    assert store.claim([item("a")]) == []  # a replay is not a new item
    assert wait_for(lambda: due_keys(store), 10, message="the replay") == [("a", 1)]
    assert store.dead_letters() == (0, [])


def test_a_send_the_next_stage_refused_is_tried_again_soon_without_using_an_attempt(backend):
    store = backend.open(lease_s=60.0, max_attempts=2)
    store.claim([item("a")])
    for _ in range(3):  # however often it is refused, the attempt stays the first
        store.unsent(["a"])
        assert wait_for(lambda: due_keys(store), 10, message="the retry") == [("a", 1)]
    store.sent(["a"])
    assert store.counts()["pending"] == 1 and store.due().resend == []


def test_suspended_leases_run_out_only_after_the_pause(backend):
    store = backend.open(lease_s=SHORT_LEASE_S)
    store.claim([item("a")])
    store.suspend_leases()
    assert store.next_due() == float("inf")
    paused = time.monotonic()
    wait_for(lambda: time.monotonic() - paused > 2 * SHORT_LEASE_S, 10, message="a pause")
    assert store.due().resend == []  # the ledger is away: nothing is sent, nothing counted
    store.resume_leases()
    assert store.due().resend == []  # a keeps the rest of its lease
    assert wait_for(lambda: due_keys(store), 10, message="the lease after it") == [("a", 2)]


def test_ttl_purge_forgets_finished_keys_in_bounded_batches_never_pending_ones(backend):
    store = backend.open(ttl_s=100.0, purge_batch=3, purge_max_batches=2)
    done = [item(f"done{i}") for i in range(10)]
    store.claim([*done, item("pending")], now=1000.0)
    store.finish(keys(done), "delivered")
    runs = []
    while not runs or store.purge_incomplete:
        runs.append(store.purge(now=1200.0))
        assert len(runs) < 10
    assert sum(runs) == 10
    if backend.name == "postgres":  # 3 rows a batch, 2 batches a run: 6, then 4
        assert runs == [6, 4]
    assert store.purge(now=1200.0) == 0
    assert keys(store.claim([done[0]], now=1200.0)) == ["done0"]  # forgotten: new again
    assert store.claim([item("pending")], now=1200.0) == []


def test_feed_leases_are_shared_held_by_one_holder_and_moved_on_release_or_lapse(backend):
    store = backend.open()
    feeds = ["edgar", "pr", "wire", "brief"]
    assert store.take_feed_leases("f-0", feeds, 60) == (feeds, 0)  # alone: every feed
    # A second fetcher of the same feeds is shared half of them; f-0 holds those until its
    # next renewal, so f-1 is told a handover is due.
    share_1 = shared_to("f-1", {"f-0": feeds, "f-1": feeds})
    assert len(share_1) == 2
    assert store.take_feed_leases("f-1", feeds, 60) == ([], 2)
    held_0, handover_0 = store.take_feed_leases("f-0", feeds, 60)  # gives f-1's share up
    assert sorted(held_0) == sorted(set(feeds) - set(share_1)) and handover_0 == 0
    assert store.take_feed_leases("f-1", feeds, 60) == (
        [f for f in feeds if f in share_1], 0)
    assert store.take_feed_leases("f-0", feeds, 60).held == held_0  # renewed, nothing moves
    # A clean stop gives the leases and the place up: the other takes everything at once.
    assert store.release_feed_leases("f-0", feeds) == 2
    assert store.take_feed_leases("f-1", feeds, 60) == (feeds, 0)
    # A fetcher that stops asking: its place and its leases lapse, and another takes them.
    assert store.take_feed_leases("g-0", ["solo"], 0.3) == (["solo"], 0)
    assert store.take_feed_leases("g-1", ["solo"], 60).held == []
    assert wait_for(lambda: store.take_feed_leases("g-1", ["solo"], 60).held, 10,
                    message="g-0's lapsed lease taken") == ["solo"]
    assert store.take_feed_leases("g-0", ["solo"], 60).held == []  # back, but g-1 holds it


# What only a shared ledger must do ---------------------------------------------------


def test_two_stores_claiming_overlapping_batches_at_once_claim_each_key_once(pg):
    """Two dedupe actors' stores, one thread each, claim the same 2,000 keys in their own
    orders and batch sizes; the first 400 come in pairs carrying one signature each (the
    same release on two wires)."""
    n, paired = 2000, 400
    everything = [item(f"k{i:05d}", signature=f"ACME|release {i // 2}" if i < paired else None)
                  for i in range(n)]
    stores = [pg.open(), pg.open()]
    claimed: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def claimer(i: int) -> None:
        rng = random.Random(i)
        order = everything[:]
        rng.shuffle(order)
        size = (37, 113)[i]
        try:
            for start in range(0, n, size):
                claimed[i].extend(keys(stores[i].claim(order[start:start + size])))
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    counts = collections.Counter(claimed[0] + claimed[1])
    assert max(counts.values()) == 1, "a key was claimed as new twice"
    assert claimed[0] and claimed[1], "one store claimed nothing: no overlap was tested"
    for pair in range(paired // 2):  # one of each pair, whichever came first
        assert counts[f"k{2 * pair:05d}"] + counts[f"k{2 * pair + 1:05d}"] == 1, pair
    assert set(counts) >= {f"k{i:05d}" for i in range(paired, n)}
    assert len(counts) == n - paired // 2
    assert stores[0].counts()["pending"] == len(counts)


def test_a_lease_held_by_a_store_that_died_is_handed_out_by_another(pg):
    a = pg.open(lease_s=SHORT_LEASE_S, max_attempts=5)
    b = pg.open(lease_s=60.0, max_attempts=5)
    assert keys(a.claim([item("x"), item("y")])) == ["x", "y"]
    assert b.due().resend == []  # a's lease is running
    a.close()  # the dedupe actor holding them dies before any ack
    again = wait_for(lambda: due_keys(b), 10, message="b takes the lapsed leases")
    assert again == [("x", 2), ("y", 2)]
    assert b.due().resend == []  # b holds them now, for its own lease_s
    assert b.finish(["x", "y"], "delivered") == 2


def test_a_claims_new_rows_share_one_lease_and_only_those_still_waiting_go_out_again(
        pg, pg_dsn, monkeypatch):
    monkeypatch.setattr(pg_store, "PENDING_REFRESH_S", 0.0)  # counts read at every scan
    a = pg.open(lease_s=2.0)  # does not run out before the counts are read
    b = pg.open(lease_s=60.0)
    assert keys(a.claim([item("w"), item("f"), item("h")])) == ["w", "f", "h"]
    # A claim through the mixed path (signatures): its copy is seen, not pending.
    assert keys(a.claim([item("s1", signature="X|y"), item("s2", signature="X|y")])) == ["s1"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        leases = conn.execute("SELECT holder, cardinality(hashes) FROM catalyst_claim_leases "
                              "ORDER BY 2").fetchall()
        own = conn.execute("SELECT count(*) FROM catalyst_ledger "
                           "WHERE lease_until IS NOT NULL").fetchone()[0]
    assert leases == [(a.holder, 1), (a.holder, 3)] and own == 0
    assert a.finish(["f"], "delivered") == 1
    assert b.hold(["h"]) == 1  # b's own lease now, for 60 s
    b.due()
    assert (a.pending_count(), b.pending_count()) == (0, 1)  # a counts at its next scan
    a.due()
    assert a.pending_count() == 2  # w and s1 under the claims' leases
    again = wait_for(lambda: due_keys(a), 10, message="the claims' leases ran out")
    assert again == [("s1", 2), ("w", 2)]  # f finished, h held by b: neither goes out
    assert due_keys(b) == []
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM catalyst_claim_leases").fetchone()[0] == 0


def test_a_large_claims_lease_is_kept_in_rows_of_at_most_500_hashes_inline(pg, pg_dsn):
    store = pg.open()
    assert len(store.claim([item(f"k{i}") for i in range(1200)])) == 1200
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        sizes = [n for (n,) in conn.execute("SELECT cardinality(hashes) "
                                            "FROM catalyst_claim_leases ORDER BY 1")]
        toasted = conn.execute("SELECT pg_relation_size(reltoastrelid) FROM pg_class "
                               "WHERE relname = 'catalyst_claim_leases'").fetchone()[0]
    assert sizes == [200, 500, 500] and toasted == 0  # 8 KB rows, never moved out of line


def test_two_stores_never_hand_out_the_same_expired_lease(pg):
    a = pg.open(lease_s=SHORT_LEASE_S)
    b = pg.open(lease_s=60.0)
    c = pg.open(lease_s=60.0)
    a.claim([item(f"k{i}") for i in range(300)])
    a.close()
    got: list[list[str]] = [[], []]

    def scan(i: int, store: SeenStore) -> None:
        deadline = time.monotonic() + 20
        while len(got[0]) + len(got[1]) < 300 and time.monotonic() < deadline:
            got[i].extend(r.item.key for r in store.due(limit=7).resend)

    threads = [threading.Thread(target=scan, args=(i, s)) for i, s in enumerate((b, c))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    handed = collections.Counter(got[0] + got[1])
    assert len(handed) == 300 and max(handed.values()) == 1


def test_a_server_stopped_mid_run_refuses_then_recovers_losing_and_repeating_nothing(
        pg, pg_server):
    """A store claims batches of 50 new keys one after another while the server is stopped
    as by a crash (pg_ctl stop -m immediate) and started again: calls raise
    StoreUnavailableError meanwhile, probe() works once it is back, each refused batch is
    claimed again (as a fetcher resends), and every key ends claimed once: answered as new
    exactly once, or, when the cut came between the commit and the answer, handed out by
    due() when its lease runs out."""
    store = pg.open(lease_s=1.0)
    batches: list[list[Item]] = []
    enough = threading.Event()  # claims went on for a while after the restart
    new: list[str] = []
    faults: list[StoreUnavailableError] = []  # claims refused
    probe_faults: list[StoreUnavailableError] = []  # tries while the server was away
    done = threading.Event()
    progress = [0]

    def claimer() -> None:
        while not enough.is_set():
            batch = [item(f"b{len(batches):04d}-{i:02d}") for i in range(50)]
            batches.append(batch)
            while True:
                try:
                    new.extend(keys(store.claim(batch)))
                    break
                except StoreUnavailableError as exc:
                    faults.append(exc)
                    wait_for(probe_ok, 60, interval=0.1, message="the server back")
            progress[0] += 1
        done.set()

    def probe_ok() -> bool:
        try:
            store.probe()
        except StoreUnavailableError as exc:
            probe_faults.append(exc)
            return False
        return True

    worker = threading.Thread(target=claimer)
    worker.start()
    try:
        wait_for(lambda: progress[0] >= 15, 60, message="claims under way")
        pg_server.stop("immediate")
        wait_for(lambda: faults and probe_faults, 30, message="a refused claim and probe")
    finally:
        if not pg_server.running():
            pg_server.start()
        restarted_at = progress[0]
        wait_for(lambda: progress[0] >= restarted_at + 15 or not worker.is_alive(), 60,
                 message="claims after the restart")
        enough.set()
    worker.join(120)
    assert done.is_set()
    assert {f.reason for f in faults + probe_faults} == {"unreachable"}
    everything = {it.key for batch in batches for it in batch}
    counted = collections.Counter(new)
    assert max(counted.values()) == 1, "a key was answered as new twice"
    assert store.counts() == {"pending": len(everything)}  # each key has its one row
    missing = everything - set(counted)  # committed, but the answer was cut off
    if missing:
        assert store.finish(new, "delivered") == len(new)  # the alert side acks the rest
        came_back = set()
        wait_for(lambda: came_back.update(k for k, _ in due_keys(store)) or
                 came_back >= missing, 30, message="the unanswered claims handed out")
        assert came_back == missing


# The ledger as release 1 of the schema wrote it (key_hash bytea), for the migration test.
V1_LEDGER = """
CREATE TABLE catalyst_schema (component text PRIMARY KEY, version integer NOT NULL);
INSERT INTO catalyst_schema VALUES ('seen_store', 1);
CREATE TABLE catalyst_ledger (
    key_hash bytea PRIMARY KEY, key text NOT NULL, state smallint NOT NULL,
    attempts integer NOT NULL DEFAULT 0, seen_at double precision NOT NULL,
    lease_until timestamptz, holder text, payload bytea);
CREATE INDEX catalyst_ledger_due ON catalyst_ledger (lease_until) WHERE state = 1;
CREATE INDEX catalyst_ledger_finished ON catalyst_ledger (seen_at) WHERE state <> 1;
CREATE INDEX catalyst_ledger_dead ON catalyst_ledger (seen_at) WHERE state = 4;
CREATE TABLE catalyst_feeds_polled (name text PRIMARY KEY, first_polled_at double precision NOT NULL);
CREATE TABLE catalyst_feed_leases (feed text PRIMARY KEY, holder text NOT NULL,
                                   expires_at timestamptz NOT NULL)"""


def test_a_version_1_ledger_is_migrated_and_keeps_what_it_saw_and_what_was_in_flight(
        pg, pg_dsn):
    pending = item("in-flight")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(V1_LEDGER)
        conn.execute("INSERT INTO catalyst_ledger VALUES (%s, 'delivered-key', 2, 1, %s, "
                     "NULL, NULL, NULL)", (key_hash("delivered-key"), time.time()))
        conn.execute("INSERT INTO catalyst_ledger VALUES (%s, 'in-flight', 1, 1, %s, "
                     "now() - interval '1 s', 'gone-host:1:abc', %s)",
                     (key_hash("in-flight"), time.time(), encode_item(pending)))
    store = pg.open(lease_s=SHORT_LEASE_S)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM catalyst_schema WHERE component = "
                            "'seen_store'").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                            "WHERE attrelid = 'catalyst_ledger'::regclass "
                            "AND attname = 'key_hash'").fetchone() == ("uuid",)
    assert store.claim([item("delivered-key"), item("in-flight"), item("fresh")]) == [
        item("fresh")]
    assert due_keys(store) == [("in-flight", 2)]  # the dead host's lease had run out


def test_a_database_from_a_newer_release_is_refused_and_left_as_it_is(pg, pg_dsn):
    pg.open().close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE catalyst_schema SET version = 99 WHERE component = 'seen_store'")
    with pytest.raises(SchemaTooNewError, match="schema version 99"):
        pg.open()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM catalyst_schema").fetchone() == (99,)


def test_an_unreachable_server_or_a_bad_dsn_is_a_store_outage_that_never_shows_the_dsn(
        tmp_path):
    dsn = f"host={tmp_path} port=1 dbname=x user=u password=hunter2"
    with pytest.raises(StoreUnavailableError) as caught:
        PostgresSeenStore(dsn, pg_cfg=PG_TEST, lease_s=60, max_attempts=3, ttl_s=3600)
    assert caught.value.reason == "unreachable" and "PostgreSQL" in str(caught.value)
    # A password with a space, unquoted: libpq's own message would quote its second half.
    dsn = f"host={tmp_path} user=u password=hunter2 second-half dbname=x"
    with pytest.raises(StoreUnavailableError) as caught:
        PostgresSeenStore(dsn, pg_cfg=PG_TEST, lease_s=60, max_attempts=3, ttl_s=3600)
    assert "second-half" not in str(caught.value) and "CATALYST_PG_DSN" in str(caught.value)


def test_a_feed_paused_where_it_is_held_stays_there_when_the_feeds_are_shared_again(backend):
    store = backend.open()
    feeds = ["edgar", "pr", "wire", "brief"]
    assert store.take_feed_leases("f-0", feeds, 60) == (feeds, 0)
    moving = shared_to("f-1", {"f-0": feeds, "f-1": feeds})[0]  # f-1's, were it not paused
    assert store.take_feed_leases("f-0", feeds, 60, paused=[moving]).held == feeds
    store.take_feed_leases("f-1", feeds, 60)
    held_0 = store.take_feed_leases("f-0", feeds, 60, paused=[moving]).held
    held_1 = store.take_feed_leases("f-1", feeds, 60).held
    assert moving in held_0 and moving not in held_1  # kept, unpolled, where it is paused
    assert not set(held_0) & set(held_1) and set(held_0) | set(held_1) == set(feeds)
    # Resumed there, it is shared as any other: it moves to f-1.
    assert moving not in store.take_feed_leases("f-0", feeds, 60).held
    assert moving in store.take_feed_leases("f-1", feeds, 60).held


def test_the_stores_leases_are_taken_by_one_holder_among_concurrent_callers(pg):
    stores = [pg.open(), pg.open()]
    feeds = [f"feed-{i}" for i in range(40)]
    for round_ in range(10):
        barrier = threading.Barrier(2)
        got: list[list[str]] = [[], []]

        def take(i: int) -> None:
            barrier.wait(10)
            got[i] = stores[i].take_feed_leases(f"holder-{i}", feeds, 60).held

        threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not set(got[0]) & set(got[1]), f"round {round_}: a feed held by both"
        assert sorted(got[0] + got[1]) == sorted(feeds)  # each by one holder
        for i in range(2):
            assert stores[i].release_feed_leases(f"holder-{i}", feeds) == len(got[i])


# Configuration -------------------------------------------------------------------------


def test_the_loader_refuses_backend_postgres_without_its_dsn_naming_the_key(monkeypatch):
    monkeypatch.delenv("LEDGER_DSN", raising=False)
    data = {"dedupe": {"backend": "postgres", "postgres": {"dsn_env": "LEDGER_DSN"}}}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    assert caught.value.path == "dedupe.postgres.dsn_env" and "$LEDGER_DSN" in str(caught.value)
    # A password with a space, unquoted: libpq's own message would quote its second half.
    monkeypatch.setenv("LEDGER_DSN", "host=/nowhere password=pw second-half dbname=x")
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    assert caught.value.path == "dedupe.postgres.dsn_env"
    assert "second-half" not in str(caught.value) and "not a valid" in str(caught.value)
    monkeypatch.setenv("LEDGER_DSN", "host=/nowhere dbname=x password=pw-secret")
    cfg = config_from_dict(data)
    assert cfg.secrets.get("LEDGER_DSN") and "pw-secret" not in repr(cfg.secrets)
    assert config_from_dict(data, with_secrets=False).dedupe.backend == "postgres"


def test_the_loader_refuses_backend_postgres_without_psycopg(monkeypatch):
    monkeypatch.setenv("CATALYST_PG_DSN", "host=/nowhere dbname=x")
    for name in ("psycopg", "psycopg.conninfo"):
        monkeypatch.setitem(__import__("sys").modules, name, None)  # import fails
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"dedupe": {"backend": "postgres"}})
    assert caught.value.path == "dedupe.backend" and "psycopg" in str(caught.value)
    assert config_from_dict({}).dedupe.backend == "sqlite"  # the default needs none of it


# A dedupe actor on PostgreSQL, end to end ---------------------------------------------


def test_a_dedupe_actor_on_postgres_alerts_each_item_of_a_wire_once(
        wire, run_supervisor, workdir, pg_dsn):
    from tests.test_pipeline import make_items

    published = make_items("pgwire", 12)
    feeds = [{"name": "pgwire", "kind": "pr",
              "url": wire.serve_feed("/pg.xml", lambda: list(published))}]
    cfg = base_config(workdir, feeds, dedupe={"backend": "postgres",
                                              "postgres": {"due_poll_s": 0.2}})
    running = run_supervisor(cfg, env={"CATALYST_PG_DSN": pg_dsn})
    wait_for(lambda: len(running.alerts()) >= 12, 60, message="12 alerts")
    published.extend(make_items("pgwire", 6, start=12))
    wait_for(lambda: len(running.alerts()) >= 18, 60, message="6 more alerts")
    stats = wait_for(lambda: (running.actor("dedupe-0") or {}).get("stats"), 10)
    assert stats["store"] == "ok" and stats["expected_memory_bytes"] == 0
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0
    alerted = collections.Counter(a["key"] for a in running.alerts())
    assert len(alerted) == 18 and max(alerted.values()) == 1
    assert not (workdir / "data" / "seen.db").exists()  # the ledger is the database
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM catalyst_ledger "
                                   "WHERE key NOT LIKE 'sig:%' GROUP BY state").fetchall())
    assert states == {2: 18}  # every item delivered, none pending
    assert pg_dsn not in running.log_text()


def test_a_postgres_ledger_that_crashes_mid_run_refuses_claims_then_alerts_each_item_once(
        wire, run_supervisor, workdir, pg_dsn, pg_server):
    """The server is stopped as by a crash while a wire publishes: the dedupe actor stays
    up and refuses claims with retry, the fetcher resends them, and once the server is
    back every item is alerted exactly once."""
    from tests.test_pipeline import make_items

    published = make_items("crash", 8)
    feeds = [{"name": "crash", "kind": "pr",
              "url": wire.serve_feed("/crash.xml", lambda: list(published))}]
    cfg = base_config(workdir, feeds, dedupe={"backend": "postgres",
                                              "postgres": {"due_poll_s": 0.2}})
    running = run_supervisor(cfg, env={"CATALYST_PG_DSN": pg_dsn})
    wait_for(lambda: len(running.alerts()) >= 8, 60, message="8 alerts")

    def dedupe_stats() -> dict:
        return (running.actor("dedupe-0") or {}).get("stats") or {}

    try:
        pg_server.stop("immediate")
        published.extend(make_items("crash", 8, start=8))
        wait_for(lambda: dedupe_stats().get("claims_refused_unavailable", 0) > 0, 30,
                 message="claims refused while the server is down")
        assert dedupe_stats()["store"] == "unreachable"
    finally:
        if not pg_server.running():
            pg_server.start()
    wait_for(lambda: len(running.alerts()) >= 16, 60, message="the 8 published meanwhile")
    assert running.actor("dedupe-0")["restarts"] == 0  # it waited the outage out
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0
    alerted = collections.Counter(a["key"] for a in running.alerts())
    assert len(alerted) == 16 and max(alerted.values()) == 1
    assert "store_unavailable" in [e["event"] for e in running.admin_events()]
