"""The SeenStore: one owner, atomic batched claims, a ledger that survives crashes."""

from __future__ import annotations

import collections
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import zmq

from actors import protocol
from actors.errors import StoreLockedError
from actors.protocol import Item
from actors.seen_store import SqliteSeenStore
from actors.seen_store.base import encode_item
from catalyst_config import SqliteConfig, load_config
from tests.conftest import base_config, wait_for

CLIENT_PROCESSES = 4
THREADS_PER_CLIENT = 3
KEYS = 3000


def item(key: str, **kw) -> Item:
    return Item(key=key, title=f"title {key}", link=f"https://x.example/{key}", source="t",
                kind="pr", **kw)


def open_store(path: Path, **kw) -> SqliteSeenStore:
    args = dict(sqlite_cfg=SqliteConfig(), lease_s=60, max_attempts=3, ttl_s=3600)
    args.update(kw)
    return SqliteSeenStore(path, **args)


def claim_client(endpoint: str, seed: int, out) -> None:
    """One client process: several threads claim overlapping batches over ZeroMQ."""
    import random

    results: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        codec = protocol.Codec(protocol.Claimed)
        keys = [f"key-{i:06d}" for i in range(KEYS)]
        rng.shuffle(keys)
        for start in range(0, KEYS, 250):
            batch = [item(k) for k in keys[start:start + 250]]
            sock.send(protocol.encode(protocol.Claim(req_id=start + 1, items=batch)))
            reply = codec.decode(sock.recv())
            assert reply.req_id == start + 1
            with lock:
                results.extend(reply.new)
        sock.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS_PER_CLIENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out.put(results)


def test_concurrent_claims_from_many_processes_and_threads_mark_each_key_once(
        run_supervisor, workdir):
    cfg = base_config(workdir, [], actors={"fetcher": {"instances": 0}})
    running = run_supervisor(cfg)
    wait_for(running.all_running, 30, message="actors running")
    endpoint = load_config(running.config_path).endpoint("dedupe_rpc")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    clients = [ctx.Process(target=claim_client, args=(endpoint, seed, out))
               for seed in range(CLIENT_PROCESSES)]
    for c in clients:
        c.start()
    new_keys: list[str] = []
    for _ in clients:
        new_keys.extend(out.get(timeout=120))
    for c in clients:
        c.join(30)
        assert c.exitcode == 0
    counts = collections.Counter(new_keys)
    assert len(counts) == KEYS, "a key was lost"
    assert max(counts.values()) == 1, "a key was claimed as new twice"
    # Every claimed key flows on and is alerted once.
    wait_for(lambda: len(running.alerts()) >= KEYS, 60, message="all claimed keys alerted")
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0
    alerted = collections.Counter(a["key"] for a in running.alerts())
    assert len(alerted) == KEYS and max(alerted.values()) == 1
    db = sqlite3.connect(workdir / "data" / "seen.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_second_owner_of_the_store_is_refused(tmp_path):
    store = open_store(tmp_path / "seen.db")
    with pytest.raises(StoreLockedError, match="locked by another process"):
        open_store(tmp_path / "seen.db")
    store.close()
    open_store(tmp_path / "seen.db").close()  # the lock goes with its owner


def test_claim_reports_only_new_keys_and_signatures_catch_cross_wire_copies(tmp_path):
    store = open_store(tmp_path / "seen.db")
    first = store.claim([item("a"), item("b"), item("a")])
    assert [i.key for i in first] == ["a", "b"]
    assert store.claim([item("a"), item("b")]) == []
    copies = store.claim([item("c", signature="ACME|acme wins"),
                          item("d", signature="ACME|acme wins")])
    assert [i.key for i in copies] == ["c"]
    assert store.claim([item("e", signature="ACME|acme wins")]) == []
    assert store.pending_count() == 3


def test_the_in_memory_index_is_rebuilt_from_the_file(tmp_path):
    store = open_store(tmp_path / "seen.db")
    store.claim([item("a"), item("b"), item("c", signature="ACME|acme wins")])
    store.finish(["a"], "delivered")
    store.close()
    store = open_store(tmp_path / "seen.db")
    assert store.pending_count() == 2 and store.live_keys() == 4  # a, b, c and c's signature
    assert store.claim([item("a"), item("b"), item("d", signature="ACME|acme wins")]) == []
    assert store.finish(["b", "c"], "filtered") == 2
    assert store.pending_count() == 0


def test_a_failed_commit_leaves_memory_and_file_agreeing(tmp_path):
    store = open_store(tmp_path / "seen.db")
    store.db.execute("CREATE TRIGGER no_x BEFORE INSERT ON ledger WHEN NEW.key = 'x' "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(sqlite3.DatabaseError):
        store.claim([item("w"), item("x")])
    assert store.live_keys() == 0 and store.pending_count() == 0
    store.db.execute("DROP TRIGGER no_x")
    assert [i.key for i in store.claim([item("w"), item("x")])] == ["w", "x"]


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_expired_leases_are_resent_then_dead_lettered(tmp_path):
    clock = Clock()
    store = open_store(tmp_path / "seen.db", lease_s=10, max_attempts=2, clock=clock)
    store.claim([item("a"), item("b")])
    store.finish(["b"], "delivered")
    assert store.next_due() == 1010.0
    clock.t = 1009.0
    assert store.due().resend == []
    clock.t = 1011.0
    due = store.due()
    assert [(r.item.key, r.attempt) for r in due.resend] == [("a", 2)]
    store.sent(["a"])
    assert store.next_due() == 1021.0
    clock.t = 1022.0
    due = store.due()
    assert due.resend == [] and [i.key for i in due.dead] == ["a"]
    assert store.pending_count() == 0 and store.next_due() == float("inf")
    assert store.counts()["dead"] == 1


def test_dead_letters_are_listed_and_replayed_with_a_fresh_count(tmp_path):
    clock = Clock()
    store = open_store(tmp_path / "seen.db", lease_s=10, max_attempts=1, clock=clock)
    store.claim([item("a"), item("b"), item("c")])
    clock.t += 11
    assert sorted(i.key for i in store.due().dead) == ["a", "b", "c"]
    total, letters = store.dead_letters(limit=2)
    assert total == 3 and len(letters) == 2 and letters[0]["attempts"] == 1
    assert letters[0]["title"].startswith("title ")
    assert store.replay_dead(["b", "not-dead", "c"]) == 2
    assert store.pending_count() == 2 and store.dead_letters()[0] == 1
    assert store.claim([item("b")]) == []  # still seen: a replay is not a new item
    clock.t += 1
    assert sorted((r.item.key, r.attempt) for r in store.due().resend) == [("b", 1), ("c", 1)]
    store.sent(["b", "c"])
    store.close()
    store = open_store(tmp_path / "seen.db", lease_s=10, max_attempts=1, clock=clock)
    assert store.pending_count() == 2  # the replay is in the file
    assert store.replay_dead() == 1 and store.dead_letters() == (0, [])


def test_a_send_the_next_stage_refused_is_retried_soon_and_not_counted(tmp_path):
    clock = Clock()
    store = open_store(tmp_path / "seen.db", lease_s=60, max_attempts=2, clock=clock)
    store.claim([item("a")])
    store.unsent(["a"])  # the llm inbox was not there
    assert store.next_due() == pytest.approx(1000.1)
    for _ in range(5):  # however often it is refused, no attempt is used up
        clock.t += 1
        due = store.due()
        assert [(r.item.key, r.attempt) for r in due.resend] == [("a", 1)] and not due.dead
        store.unsent(["a"])
    clock.t += 1
    store.due()
    store.sent(["a"])
    clock.t += 61
    assert [(r.item.key, r.attempt) for r in store.due().resend] == [("a", 2)]
    store.sent(["a"])
    store.close()
    # The file holds the count of accepted sends: out of attempts after a restart too.
    store = open_store(tmp_path / "seen.db", lease_s=60, max_attempts=2, clock=clock)
    assert [i.key for i in store.due().dead] == ["a"]


def test_pending_items_survive_a_restart_of_the_store_and_are_due_at_once(tmp_path):
    store = open_store(tmp_path / "seen.db")
    store.claim([item("a"), item("b")])
    store.close()
    store = open_store(tmp_path / "seen.db")
    assert store.pending_count() == 2 and store.next_due() <= time.monotonic()
    assert sorted((r.item.key, r.attempt) for r in store.due().resend) == [("a", 2), ("b", 2)]


def test_a_file_from_before_leases_moved_to_memory_still_opens(tmp_path):
    path = tmp_path / "seen.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE ledger (seq INTEGER PRIMARY KEY, hh BLOB NOT NULL, key TEXT NOT NULL,
            state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, lease_until REAL,
            seen_at REAL NOT NULL, payload BLOB);
        CREATE INDEX ledger_pending ON ledger(lease_until) WHERE state = 1;""")
    db.close()
    store = open_store(path)
    assert [i.key for i in store.claim([item("a")])] == ["a"]
    assert store.db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index'"
                            ).fetchone()[0] == 0
    store.close()
    assert open_store(path).pending_count() == 1


def test_ttl_purge_forgets_finished_keys_but_never_pending_ones(tmp_path):
    store = open_store(tmp_path / "seen.db", ttl_s=100)
    store.claim([item("old-done"), item("old-pending")], now=1000.0)
    store.finish(["old-done"], "delivered")
    assert store.purge(now=1200.0) == 1
    assert [i.key for i in store.claim([item("old-done")], now=1200.0)] == ["old-done"]
    assert store.claim([item("old-pending")], now=1200.0) == []


def test_a_corrupt_store_is_moved_aside_and_replaced(tmp_path):
    path = tmp_path / "seen.db"
    path.write_bytes(b"this is not a database" * 100)
    events = []
    store = open_store(path, on_corrupt=events.append)
    assert [i.key for i in store.claim([item("a")])] == ["a"]
    assert store.integrity_check() == "ok"
    aside = list(tmp_path.glob("seen.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert events and "corrupt" in events[0]


def test_random_operations_keep_every_pending_item_in_one_queue_and_the_file_agreeing(tmp_path):
    """Claims, acks, lease expiries, refused and accepted sends, dead letters, replays and
    restarts in random order, as the dedupe actor makes them, against a plain model."""
    import random

    rng = random.Random(7)
    clock = Clock()
    path = tmp_path / "seen.db"
    store = open_store(path, lease_s=5, max_attempts=3, clock=clock)
    model: dict[str, str] = {}  # key -> pending / finished / dead
    in_flight: list[str] = []  # handed out by due(), waiting for sent() or unsent()
    happened: collections.Counter[str] = collections.Counter()
    for step in range(3000):
        op = rng.choice(["claim", "claim", "finish", "due", "answer", "time", "replay",
                         "restart"])
        if op == "claim":
            keys = [f"k{rng.randrange(400)}" for _ in range(rng.randrange(1, 6))]
            new = [i.key for i in store.claim([item(k) for k in keys])]
            assert new == [k for k in dict.fromkeys(keys) if k not in model], step
            model.update((k, "pending") for k in new)
            if new and rng.random() < 0.3:  # the llm inbox refused the first send
                store.unsent(new)
        elif op == "finish":
            keys = rng.sample(sorted(model), min(3, len(model)))
            expected = sum(model[k] == "pending" for k in keys)
            assert store.finish(keys, "delivered") == expected, step
            model.update((k, "finished") for k in keys if model[k] == "pending")
        elif op == "due" and not in_flight:
            due = store.due()
            for dead in due.dead:
                assert model[dead.key] == "pending", step
                model[dead.key] = "dead"
            happened["dead"] += len(due.dead)
            happened["resent"] += len(due.resend)
            in_flight = [r.item.key for r in due.resend]
            assert all(model[k] == "pending" for k in in_flight), step
            assert all(1 <= r.attempt <= 3 for r in due.resend), step
        elif op == "answer" and in_flight:
            refused = [k for k in in_flight if rng.random() < 0.3]
            store.unsent(refused)
            store.sent([k for k in in_flight if k not in refused])
            in_flight = []
        elif op == "time":
            clock.t += rng.choice([0.05, 0.2, 1.0, 6.0])
        elif op == "replay":
            dead = [k for k, v in model.items() if v == "dead"]
            if dead:
                chosen = rng.sample(dead, min(2, len(dead)))
                assert store.replay_dead(chosen) == len(chosen), step
                model.update((k, "pending") for k in chosen)
                happened["replayed"] += len(chosen)
        elif op == "restart" and not in_flight:
            store.close()
            store = open_store(path, lease_s=5, max_attempts=3, clock=clock)
            happened["restarts"] += 1
        pending = {k for k, v in model.items() if v == "pending"}
        assert store.pending_count() == len(pending), step
        queued = set(store.leased) | set(store.retry)
        assert len(queued) == len(store.leased) + len(store.retry), f"{step}: in both queues"
        assert queued == set(store.pending_rows.values()), f"{step}: a pending item unqueued"
        assert store.dead_letters(0)[0] == sum(v == "dead" for v in model.values()), step
    assert min(happened[k] for k in ("dead", "resent", "replayed", "restarts")) >= 10, happened
    # Every pending item is eventually sent again or dead: none is stuck.
    store.sent(in_flight)
    for _ in range(10):
        clock.t += 6
        due = store.due(limit=10_000)
        store.sent([r.item.key for r in due.resend])
    assert store.pending_count() == 0
    assert store.integrity_check() == "ok"


# First poll of a feed (fetch.first_poll) ---------------------------------------------


def wire_item(key: str, source: str = "wire") -> Item:
    return Item(key=key, title=f"title {key}", link=f"https://x.example/{key}", source=source,
                kind="pr")


def keys(items: list[Item]) -> list[str]:
    return [i.key for i in items]


def test_a_feeds_first_poll_is_marked_seen_and_only_later_items_are_new(tmp_path):
    path = tmp_path / "seen.db"
    quiet = dict(feeds=["wire"], mark_seen_first_poll=["wire"])
    store = open_store(path, **quiet)
    first = [wire_item("old1"), wire_item("old2"), wire_item("old3")]
    assert store.claim(first[:2]) == []  # the poll's first batch
    assert store.claim(first[2:], polled=["wire"]) == []  # its last: the poll is complete
    assert store.marked_seen == 3 and store.pending_count() == 0 and store.live_keys() == 3
    assert store.claim(first, polled=["wire"]) == []  # the second poll alerts none of them
    assert keys(store.claim([*first, wire_item("new1")], polled=["wire"])) == ["new1"]
    store.close()
    store = open_store(path, **quiet)  # a restart marks nothing again: the table is durable
    assert keys(store.claim([wire_item("old1"), wire_item("new2")], polled=["wire"])) == ["new2"]
    assert store.marked_seen == 0 and store.pending_count() == 2


def test_a_feed_added_later_has_its_first_poll_marked_seen_too(tmp_path):
    path = tmp_path / "seen.db"
    store = open_store(path, feeds=["wire"], mark_seen_first_poll=["wire"])
    store.claim([wire_item("w1")], polled=["wire"])
    store.close()
    store = open_store(path, feeds=["wire", "edgar"], mark_seen_first_poll=["wire", "edgar"])
    first = store.claim([wire_item("e1", "edgar"), wire_item("w2")], polled=["edgar", "wire"])
    assert keys(first) == ["w2"] and store.marked_seen == 1
    assert keys(store.claim([wire_item("e1", "edgar"), wire_item("e2", "edgar")],
                            polled=["edgar"])) == ["e2"]


def test_first_poll_alert_and_unknown_feeds_deliver_from_the_first_poll(tmp_path):
    store = open_store(tmp_path / "seen.db", feeds=["wire", "demo"], mark_seen_first_poll=["wire"])
    got = store.claim([wire_item("d1", "demo"), wire_item("gone1", "retired-feed"),
                       wire_item("w1")], polled=["demo", "wire", "retired-feed"])
    assert keys(got) == ["d1", "gone1"]  # demo: policy alert; a feed not in config: alert
    assert store.polled_feeds == {"demo", "wire"}  # only configured names are kept


def test_in_a_group_commit_a_feed_is_polled_for_the_claims_after_the_one_completing_it(
        tmp_path):
    store = open_store(tmp_path / "seen.db", feeds=["wire"], mark_seen_first_poll=["wire"])
    new = store.claim_group([([wire_item("a")], ["wire"]), ([wire_item("b")], [])])
    assert keys([item for item, _ in new]) == ["b"]
    assert new[0][1] == encode_item(new[0][0])  # what dedupe forwards as it is


def test_a_ledger_from_before_first_polls_were_recorded_counts_its_feeds_as_polled(tmp_path):
    path = tmp_path / "seen.db"
    store = open_store(path)
    store.claim([wire_item("a")])
    store.db.execute("DROP TABLE feeds_polled")  # as a file from before the table existed
    store.db.execute("PRAGMA user_version = 0")  # which carried no schema version
    store.close()
    store = open_store(path, feeds=["wire"], mark_seen_first_poll=["wire"])
    assert keys(store.claim([wire_item("b")])) == ["b"]  # what is new is alerted, not hidden


def claim_once(endpoint: str, req_id: int, items: list[Item], polled: list[str]
               ) -> protocol.Claimed:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(protocol.encode(protocol.Claim(req_id=req_id, items=items, polled=polled)))
        return protocol.Codec(protocol.Claimed).decode(sock.recv())
    finally:
        sock.close()


def test_the_dedupe_actor_applies_each_feeds_first_poll_policy(run_supervisor, workdir):
    feeds = [{"name": "quiet", "kind": "pr", "url": "http://127.0.0.1:9/quiet.xml"},
             {"name": "loud", "kind": "pr", "url": "http://127.0.0.1:9/loud.xml",
              "first_poll": "alert"}]
    cfg = base_config(workdir, feeds, actors={"fetcher": {"instances": 0}},
                      fetch={"first_poll": "mark_seen"})
    running = run_supervisor(cfg)
    wait_for(running.all_running, 30, message="actors running")
    endpoint = load_config(running.config_path).endpoint("dedupe_rpc")
    q = [wire_item(f"https://q.example/{i}", "quiet") for i in range(4)]
    loud = wire_item("https://l.example/1", "loud")
    assert claim_once(endpoint, 1, [q[0], q[1], loud], ["quiet", "loud"]).new == [loud.key]
    assert claim_once(endpoint, 2, [q[0], q[1], q[2]], ["quiet"]).new == [q[2].key]
    done = running.cli("restart", "dedupe-0")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: (running.actor("dedupe-0") or {}).get("restarts") == 1
             and running.all_running(), 30, message="dedupe restarted")
    assert wait_for(lambda: claim_once(endpoint, 3, [q[0], q[3]], ["quiet"]), 20).new == [q[3].key]
    wait_for(lambda: len(running.alerts()) >= 3, 30, message="3 alerts")
    running.cli("stop")
    assert running.wait_exit(60) == 0
    assert sorted(a["key"] for a in running.alerts()) == sorted([loud.key, q[2].key, q[3].key])


def test_a_fresh_install_alerts_only_what_its_feeds_publish_after_their_first_poll(
        wire, run_supervisor, workdir):
    from tests.test_pipeline import make_items

    published = make_items("fresh", 5)
    feeds = [{"name": "fresh", "kind": "pr",
              "url": wire.serve_feed("/fresh.xml", lambda: list(published))}]
    cfg = base_config(workdir, feeds, fetch={"first_poll": "mark_seen"})
    running = run_supervisor(cfg)
    wait_for(lambda: (running.actor("dedupe-0") or {}).get("stats", {})
             .get("marked_seen_first_poll", 0) >= 5, 30, message="the first poll marked seen")
    published.extend(make_items("fresh", 3, start=5))
    wait_for(lambda: len(running.alerts()) >= 3, 30, message="the 3 later items alerted")
    running.cli("stop")
    assert running.wait_exit(60) == 0
    assert sorted(a["key"] for a in running.alerts()) == sorted(
        f"https://news.example.com/fresh/{i}" for i in range(5, 8))
