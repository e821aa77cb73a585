"""Storage faults are not corruption: a full disk, an I/O error or a lock held by another
program leaves every SQLite file where it is, the owning actor waits it out without
exiting, and every item is alerted once when the fault clears. Only a file SQLite calls
corrupt is moved aside, under a name no earlier one has. Files are private (0600, 0700).

The disk-full tests mount a real small tmpfs (root only; skipped with the reason where
mounting is not allowed)."""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from actors import protocol
from actors.classification.cache import AnalysisCache, open_llm_db
from actors.errors import SinkError, StoreUnavailableError
from actors.protocol import Item
from actors.seen_store import SqliteSeenStore
from actors.sinks import JsonlSink
from actors.sinks.journal import AlertJournal
from actors.storage import StoreOutage, open_checked
from actors.storage.outage import RECOVERY_CONFIRM_S, RETRY_INITIAL_S, RETRY_MAX_S
from catalyst_config import SqliteConfig, load_config
from tests.conftest import base_config, wait_for
from tests.test_delivery import assert_each_alerted_once, integrity_ok
from tests.test_pipeline import make_items
from tests.test_seen_store import claim_once

FAST_LOCK = SqliteConfig(busy_timeout_ms=50)  # a lock is reported in 50 ms, not 5 s


def item(key: str) -> Item:
    return Item(key=key, title=f"title {key}", link=f"https://x.example/{key}", source="t",
                kind="pr", summary="s" * 2000)


def open_store(path: Path, **kw) -> SqliteSeenStore:
    args = dict(sqlite_cfg=FAST_LOCK, lease_s=60, max_attempts=3, ttl_s=3600)
    args.update(kw)
    return SqliteSeenStore(path, **args)


def aside_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.corrupt-*"))


# A real small disk ----------------------------------------------------------------


class Tmpfs:
    """A tmpfs of a few MB mounted on a directory, and a filler file that takes the rest."""

    def __init__(self, where: Path, size: str):
        self.where = where
        self.filler = where / "filler"
        where.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root; this disk-full test runs as root only")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not allowed here: {done.stderr.strip()}")

    def fill(self) -> int:
        """Writes the filler until the disk is full, to the last byte; returns its size."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            for size in (1 << 20, 65536, 4096, 512, 1):
                while True:
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError:
                        break
        finally:
            os.close(fd)
        return self.filler.stat().st_size

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.where)], capture_output=True)


@pytest.fixture
def small_disk(workdir):
    """workdir/data on an 8 MB tmpfs: the data_dir of base_config."""
    disk = Tmpfs(workdir / "data", "8m")
    yield disk
    disk.unmount()


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# Locks held by another program -----------------------------------------------------


def test_a_ledger_locked_by_another_program_at_start_is_left_where_it_is(tmp_path):
    path = tmp_path / "seen.db"
    store = open_store(path)
    store.claim([item("a"), item("b")])
    store.close()
    # A backup tool: exclusive locking mode, holding the file across a write.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("SELECT count(*) FROM ledger").fetchone()
    with pytest.raises(StoreUnavailableError, match="locked") as caught:
        open_store(path)
    assert caught.value.reason == "locked" and caught.value.event == "store_unavailable"
    assert aside_files(tmp_path) == []
    holder.execute("COMMIT")
    holder.close()
    store = open_store(path)  # the lock on seen.db.lock went with the failed open
    assert store.pending_count() == 2 and store.claim([item("a")]) == []
    store.close()


def test_a_rollback_journal_file_held_with_begin_exclusive_is_not_taken_for_corrupt(tmp_path):
    path = tmp_path / "alerts.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE kept (x)")
    db.execute("INSERT INTO kept VALUES (42)")
    db.execute("BEGIN EXCLUSIVE")
    events = []
    with pytest.raises(StoreUnavailableError) as caught:
        AlertJournal(path, sqlite_cfg=FAST_LOCK, ttl_s=60, on_corrupt=events.append)
    assert caught.value.reason == "locked" and events == [] and aside_files(tmp_path) == []
    db.execute("COMMIT")
    db.close()
    journal = AlertJournal(path, sqlite_cfg=FAST_LOCK, ttl_s=60)
    assert journal.db.execute("SELECT x FROM kept").fetchone() == (42,)
    journal.close()


def test_a_write_refused_by_a_lock_leaves_memory_and_file_agreeing(tmp_path):
    path = tmp_path / "seen.db"
    store = open_store(path)
    store.claim([item("a")])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # in WAL mode readers go on; writers wait
    with pytest.raises(StoreUnavailableError) as caught:
        store.claim([item("b")])
    assert caught.value.reason == "locked"
    with pytest.raises(StoreUnavailableError):
        store.finish(["a"], "delivered")
    assert store.live_keys() == 1 and store.pending_count() == 1
    other.execute("COMMIT")
    other.close()
    assert [i.key for i in store.claim([item("b")])] == ["b"]
    assert store.finish(["a"], "delivered") == 1
    store.close()


def test_a_resend_the_ledger_could_not_record_stays_queued_for_later(tmp_path):
    clock = Clock(1000.0)
    store = open_store(tmp_path / "seen.db", lease_s=10, clock=clock)
    store.claim([item("a")])
    clock.t += 11
    assert [r.item.key for r in store.due().resend] == ["a"]
    other = sqlite3.connect(tmp_path / "seen.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreUnavailableError):
        store.sent(["a"])
    queued = set(store.leased) | set(store.retry)
    assert queued == set(store.pending_rows.values()) and len(queued) == 1  # not lost
    other.execute("COMMIT")
    other.close()
    store.sent(["a"])
    assert store.next_due() == pytest.approx(clock.t + 10)
    store.close()


def test_a_truly_corrupt_file_is_moved_aside_under_a_new_name_every_time(tmp_path):
    path = tmp_path / "llm_cache.db"
    for _ in range(5):  # two corruptions within one second: the old names collided there
        for old in aside_files(tmp_path):
            old.unlink()
        events = []
        start = time.strftime("%Y%m%dT%H%M%S")
        for n in (1, 2):
            path.write_bytes(f"garbage number {n} ".encode() * 300)
            open_checked(path, SqliteConfig(), "CREATE TABLE IF NOT EXISTS t (x);",
                         what="test file", on_corrupt=events.append).close()
        if time.strftime("%Y%m%dT%H%M%S") == start:
            break
    aside = aside_files(tmp_path)
    assert len(aside) == 2 and len(events) == 2, aside
    assert {p.read_bytes()[:16] for p in aside} == {b"garbage number 1", b"garbage number 2"}
    assert [p.name for p in aside] == [f"llm_cache.db.corrupt-{start}-1",
                                       f"llm_cache.db.corrupt-{start}-2"]
    assert "moved to llm_cache.db.corrupt-" in events[1]


# The outage bookkeeping --------------------------------------------------------------


def test_an_outage_raises_one_event_backs_off_and_announces_its_end_once():
    clock = Clock()
    events = []
    outage = StoreOutage("seen.db", notify=lambda *a, **k: events.append((a[0], k["reason"])),
                         clock=clock)
    full = StoreUnavailableError("seen.db: database or disk is full", "disk_full")
    outage.failed(full)
    waits = []
    for _ in range(8):
        waits.append(round(outage.next_try - clock.t, 3))
        assert not outage.usable()
        clock.t = outage.next_try
        assert outage.usable()
        outage.failed(full)
    assert events == [("disk_full", "disk_full")]
    assert waits[0] == RETRY_INITIAL_S and waits == sorted(waits) and max(waits) == RETRY_MAX_S
    outage.ok()
    assert not outage.down and outage.usable()
    clock.t += 1.0
    outage.failed(full)  # back, then gone again before it held: the same outage
    outage.ok()
    clock.t += RECOVERY_CONFIRM_S
    outage.settle()
    assert [e for e, _ in events] == ["disk_full", "store_recovered"]
    assert outage.outages == 1 and outage.state == "ok"


def test_lease_expiry_pauses_while_the_ledger_is_away(tmp_path):
    clock = Clock(1000.0)
    store = open_store(tmp_path / "seen.db", lease_s=10, max_attempts=1, clock=clock)
    store.claim([item("a")])
    store.suspend_leases()
    clock.t += 3600  # an hour of full disk
    assert store.next_due() == float("inf") and store.due().dead == []
    store.resume_leases()
    assert store.next_due() == pytest.approx(clock.t + 10)  # the lease keeps what it had
    clock.t += 11
    assert [i.key for i in store.due().dead] == ["a"]


# Private files ------------------------------------------------------------------------


def test_files_the_service_writes_are_private(tmp_path):
    old_umask = os.umask(0o022)
    try:
        data = tmp_path / "a" / "data"
        store = open_store(data / "seen.db")
        store.claim([item("a")])
        journal = AlertJournal(data / "alerts.db", sqlite_cfg=SqliteConfig(), ttl_s=60)
        journal.begin("k", "jsonl", 0)
        cache = open_llm_db(data / "llm_cache.db", SqliteConfig())
        cache.execute("INSERT INTO analyses VALUES ('k', 'c', NULL, NULL, NULL, x'00', 0, 1, 0)")
        older = tmp_path / "out" / "older.jsonl"
        older.parent.mkdir()
        older.write_text("")
        older.chmod(0o644)
        sinks = [JsonlSink(tmp_path / "out" / "logs" / "alerts.jsonl"), JsonlSink(older)]
        for sink in sinks:
            sink.deliver({"key": "k"})
        files = [p for p in [*data.iterdir(), *(tmp_path / "out").rglob("*")] if p.is_file()]
        names = {p.name for p in files}
        assert {"seen.db-wal", "seen.db-shm", "alerts.db-wal", "llm_cache.db-wal",
                "seen.db.lock", "alerts.jsonl", "older.jsonl"} <= names, names
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {
            p.name: "0o600" for p in files}
        for d in (tmp_path / "a", data, tmp_path / "out" / "logs"):
            assert oct(d.stat().st_mode & 0o777) == "0o700", d
        store.close()
        journal.close()
        cache.close()
        for sink in sinks:
            sink.close()
    finally:
        os.umask(old_umask)


def test_a_jsonl_file_that_cannot_be_opened_fails_deliveries_until_it_can(tmp_path):
    (tmp_path / "blocked").write_text("a file where the sink's directory should be")
    sink = JsonlSink(tmp_path / "blocked" / "alerts.jsonl")  # no exception: the actor lives
    with pytest.raises(SinkError, match="cannot open: Not a directory"):
        sink.deliver({"key": "k1"})
    assert sink.mark() is None
    (tmp_path / "blocked").unlink()
    sink.deliver({"key": "k1"})  # opened on the next try
    assert (tmp_path / "blocked" / "alerts.jsonl").read_text() == '{"key":"k1"}\n'
    sink.close()


# A full disk -------------------------------------------------------------------------


def test_a_full_disk_leaves_the_ledger_in_place_and_it_resumes_when_space_returns(small_disk):
    path = small_disk.where / "seen.db"
    store = open_store(path)
    store.claim([item(f"k{i}") for i in range(20)])
    store.close()
    small_disk.fill()
    with pytest.raises(StoreUnavailableError) as caught:  # a restart on the full disk
        open_store(path)
    assert caught.value.reason == "disk_full" and caught.value.event == "disk_full"
    assert aside_files(small_disk.where) == []
    small_disk.free()
    store = open_store(path)
    assert store.pending_count() == 20
    small_disk.fill()
    with pytest.raises(StoreUnavailableError) as caught:  # and while running
        store.claim([item(f"new{i}") for i in range(20)])
    assert caught.value.reason == "disk_full"
    assert store.live_keys() == 20 and store.pending_count() == 20
    small_disk.free()
    assert len(store.claim([item(f"new{i}") for i in range(20)])) == 20
    assert store.integrity_check() == "ok" and aside_files(small_disk.where) == []
    store.close()


def dead_events(running) -> list[dict]:
    return [e for e in running.admin_events() if e["event"] in ("dead_letter", "store_corrupt")]


def test_a_disk_that_fills_while_items_arrive_loses_no_item_and_alerts_each_once(
        small_disk, wire, run_supervisor, workdir):
    total, seconds = 40, 10.0
    items = make_items("full", total)
    started = time.monotonic()

    def published() -> list[dict]:  # items appear over time; each poll shows them all
        n = min(total, 10 + int((time.monotonic() - started) / seconds * (total - 10)))
        return items[:n]

    feeds = [{"name": "full", "kind": "pr", "url": wire.serve_feed("/full.xml", published)}]
    cfg = base_config(workdir, feeds, dedupe={"lease_s": 2.0, "max_attempts": 3},
                      fetch={"connect_timeout_s": 2, "read_timeout_s": 3, "first_poll": "alert"})
    running = run_supervisor(cfg)
    wait_for(lambda: len(running.alerts()) >= 10, 60, message="the first 10 alerts")
    small_disk.fill()
    filled_at = len({a["key"] for a in running.alerts()})

    def noticed() -> bool:
        events = [e for e in running.admin_events() if e["event"] in ("disk_full",
                                                                     "store_unavailable")]
        dedupe = running.actor("dedupe-0") or {}
        return bool(events) and dedupe.get("stats", {}).get("claims_refused_unavailable", 0) >= 3
    wait_for(noticed, 60, message="the full disk noticed, and claims refused meanwhile")
    assert running.actor("dedupe-0")["stats"]["store"] == "disk_full"
    assert len({a["key"] for a in running.alerts()}) < total, "the disk filled too late"
    small_disk.free()
    wait_for(lambda: len({a["key"] for a in running.alerts()}) >= total, 90,
             message=f"all {total} alerted after the disk was freed")
    wait_for(lambda: any(e["event"] == "store_recovered" for e in running.admin_events()), 30,
             message="the recovery announced")
    status = running.status()
    assert all(a["state"] == "running" and a["restarts"] == 0 for a in status["actors"]), status
    running.cli("stop")
    assert running.wait_exit(60) == 0
    print(f"alerted before the disk filled: {filled_at}; events: "
          f"{collections.Counter(e['event'] for e in running.admin_events())}")
    assert_each_alerted_once(running.alerts(), total)
    assert dead_events(running) == []
    assert aside_files(small_disk.where) == []
    for db in ("seen.db", "alerts.db"):
        assert integrity_ok(small_disk.where / db)


# Locks at start, through the running service -------------------------------------------


@contextlib.contextmanager
def held_exclusively(path: Path):
    """Another program holding a database: exclusive locking mode, across a write."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE IF NOT EXISTS held_by_test (x)")  # a write takes the lock
    try:
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("COMMIT")
        holder.close()


def claim_over_dealer(endpoint: str, keys: list[str], req_id: int) -> protocol.Claimed:
    return claim_once(endpoint, req_id, [Item(key=k, title=f"Acme {k} Announces FDA Approval",
                                              link=f"https://x.example/{k}", source="manual",
                                              kind="pr") for k in keys], [])


def test_dedupe_refuses_claims_with_retry_while_another_program_locks_its_ledger(
        run_supervisor, workdir):
    data = workdir / "data"
    store = open_store(data / "seen.db", sqlite_cfg=SqliteConfig())
    store.claim([item("old")])
    store.close()
    cfg = base_config(workdir, [], actors={"fetcher": {"instances": 0}},
                      dedupe={"sqlite": {"busy_timeout_ms": 100}})
    with held_exclusively(data / "seen.db"):
        running = run_supervisor(cfg)
        wait_for(lambda: [e for e in running.admin_events()
                          if e["event"] == "store_unavailable" and e["actor"] == "dedupe-0"],
                 30, message="the dedupe actor's store_unavailable event")
        endpoint = load_config(running.config_path).endpoint("dedupe_rpc")
        refused = claim_over_dealer(endpoint, ["a", "b"], 7)
        assert refused.req_id == 7 and refused.retry and refused.new == []
        assert refused.error.startswith("store unavailable") and "locked" in refused.error
        dedupe = running.actor("dedupe-0")
        assert dedupe["state"] == "running" and dedupe["restarts"] == 0
        assert aside_files(data) == []
    accepted = wait_for(lambda: (lambda r: r if r.error is None else None)(
        claim_over_dealer(endpoint, ["a", "b", "old"], 8)), 30, interval=0.3,
        message="claims accepted once the lock is gone")
    assert sorted(accepted.new) == ["a", "b"]  # "old" was kept: the ledger was not replaced
    wait_for(lambda: {a["key"] for a in running.alerts()} >= {"a", "b", "old"}, 30,
             message="the claimed items and the pending one alerted")
    running.cli("stop")
    assert running.wait_exit(60) == 0
    assert_each_alerted_once(running.alerts(), 3)
    assert aside_files(data) == [] and dead_events(running) == []


def test_alerts_wait_while_the_journal_is_locked_and_each_is_delivered_once_after(
        wire, run_supervisor, workdir):
    data = workdir / "data"
    AlertJournal(data / "alerts.db", sqlite_cfg=SqliteConfig(), ttl_s=60).close()
    feeds = [{"name": "jl", "kind": "pr",
              "url": wire.serve_feed("/jl.xml", lambda: make_items("jl", 8))}]
    cfg = base_config(workdir, feeds, alerts={"sqlite": {"busy_timeout_ms": 100}})
    with held_exclusively(data / "alerts.db"):
        running = run_supervisor(cfg)
        wait_for(lambda: [e for e in running.admin_events()
                          if e["event"] == "store_unavailable" and e["actor"] == "alert-0"],
                 30, message="the alert actor's store_unavailable event")
        wait_for(lambda: (running.actor("dedupe-0") or {}).get("stats", {}).get("new", 0) >= 8,
                 30, message="8 items claimed")
        alert = running.actor("alert-0")
        assert alert["state"] == "running" and alert["stats"]["journal"] == "locked"
        assert running.alerts() == []  # nothing delivered that could not be recorded
    wait_for(lambda: len(running.alerts()) >= 8, 30, message="8 alerts once the lock is gone")
    running.cli("stop")
    assert running.wait_exit(60) == 0
    assert_each_alerted_once(running.alerts(), 8)
    assert aside_files(data) == [] and dead_events(running) == []


def test_a_journal_away_longer_than_every_lease_makes_no_dead_letter(
        wire, run_supervisor, workdir):
    # lease_s x max_attempts = 3 s; the journal is away for twice that. The alert actor
    # holds the items and renews their leases ("held" acks), so no send is counted.
    data = workdir / "data"
    AlertJournal(data / "alerts.db", sqlite_cfg=SqliteConfig(), ttl_s=60).close()
    feeds = [{"name": "hl", "kind": "pr",
              "url": wire.serve_feed("/hl.xml", lambda: make_items("hl", 8))}]
    cfg = base_config(workdir, feeds, alerts={"sqlite": {"busy_timeout_ms": 100}},
                      dedupe={"lease_s": 1.0, "max_attempts": 3})
    with held_exclusively(data / "alerts.db"):
        running = run_supervisor(cfg)
        wait_for(lambda: (running.actor("alert-0") or {}).get("stats", {}).get(
            "leases_held", 0) >= 8, 30, message="the alert actor holding 8 items")
        # Renewed every lease_s / 3: 15 renewals of each outlast lease_s x max_attempts.
        wait_for(lambda: (running.actor("dedupe-0") or {}).get("stats", {}).get(
            "leases_held", 0) >= 8 * 15, 30, message="leases renewed for over 3 s")
        assert running.alerts() == [] and dead_events(running) == []
    wait_for(lambda: len(running.alerts()) >= 8, 30, message="8 alerts once the lock is gone")
    running.cli("stop")
    assert running.wait_exit(60) == 0
    assert_each_alerted_once(running.alerts(), 8)
    assert dead_events(running) == []
    db = sqlite3.connect(data / "seen.db")
    assert db.execute("SELECT count(*) FROM ledger WHERE state = 4").fetchone()[0] == 0


# The llm cache -------------------------------------------------------------------------


def test_the_llm_cache_goes_on_in_memory_while_its_file_is_away_and_writes_after(tmp_path):
    path = tmp_path / "llm_cache.db"
    open_llm_db(path, FAST_LOCK).close()
    analysis = protocol.Analysis(category="fda_approval", score=0.9, sentiment=0.5)
    events = []
    with held_exclusively(path):
        with pytest.raises(StoreUnavailableError) as caught:  # at start: not moved aside
            open_llm_db(path, FAST_LOCK)
        assert caught.value.reason == "locked" and aside_files(tmp_path) == []
        cache = AnalysisCache(None, ttl_s=3600, memory_size=100,
                              opener=lambda: open_llm_db(path, FAST_LOCK),
                              admin=lambda event, *a, **k: events.append(event))
        cache.put_many([(item("a"), "h", analysis)])
        assert cache.get("a", "h") == analysis  # a redelivery is still answered
        assert events == ["store_unavailable"] and cache.stats()["cache_store"] == "locked"

    def written() -> bool:
        cache.put_many([(item("b"), "h", analysis)])
        return cache.stats()["cache_store"] == "ok"
    wait_for(written, 15, interval=0.2, message="the cache file written again")
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM analyses WHERE key = 'b'").fetchone()[0] == 1
    check.close()
    assert events == ["store_unavailable"]  # one event for the outage


def test_a_corrupt_alert_journal_is_found_at_start_and_replaced(tmp_path):
    path = tmp_path / "alerts.db"
    path.write_bytes(b"\x00not an alert journal\x00" * 400)
    events = []
    journal = AlertJournal(path, sqlite_cfg=SqliteConfig(), ttl_s=60, on_corrupt=events.append)
    assert journal.begin("k", "jsonl", 0) == ("go", None)
    journal.close()
    assert len(events) == 1 and "alerts.db.corrupt-" in events[0]
    assert [p.read_bytes()[:6] for p in aside_files(tmp_path)] == [b"\x00not a"]
