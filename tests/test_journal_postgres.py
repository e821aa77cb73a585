"""The alert delivery journal's contract (begin, done, release, purge and the verdicts GO,
ALREADY, BUSY, UNSURE), run against both backends: alerts.db and a real PostgreSQL server
(tests/pg_server.py); then what only the shared journal must do: holders racing for the
same keys, a holder that dies mid-delivery, a server that stops, and two alert actors on
PostgreSQL alerting each item once end to end."""

from __future__ import annotations

import collections
import os
import select
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from actors.errors import CommandError, StoreUnavailableError
from actors.sinks.journal import ALREADY, BUSY, GO, UNSURE, AlertJournal
from actors.sinks.journal_postgres import PostgresAlertJournal
from actors.storage.sqlite import SchemaTooNewError
from catalyst_config import SqliteConfig
from catalyst_config.schema import PostgresConfig
from tests.conftest import ROOT, base_config, wait_for
from tests.test_delivery import assert_each_alerted_once
from tests.test_pipeline import make_items


PG_TEST = PostgresConfig(connect_timeout_s=2, statement_timeout_s=10.0, delivery_lease_s=60.0)
# A holder's lease short enough to watch run out, long enough that its renewal thread
# (every third of it) keeps it on a busy 2-core machine.
SHORT_LEASE_S = 2.0
SINK = "jsonl:alerts.jsonl"


def pg_cfg(**kw) -> PostgresConfig:
    return PostgresConfig(**{**PG_TEST.__dict__, **kw})


class Backend:
    """Opens journals of one backend on one journal: alerts.db in a temporary directory,
    or a schema of its own on the session's PostgreSQL server."""

    def __init__(self, name: str, tmp_path, dsn: str | None):
        self.name, self.path, self.dsn = name, tmp_path / "alerts.db", dsn
        self.opened: list = []

    def open(self, *, ttl_s: float = 3600.0, holder: str | None = None, **pg):
        if self.name == "sqlite":
            journal = AlertJournal(self.path, sqlite_cfg=SqliteConfig(), ttl_s=ttl_s)
        else:
            journal = PostgresAlertJournal(self.dsn, pg_cfg=pg_cfg(**pg), ttl_s=ttl_s,
                                           holder=holder)
        self.opened.append(journal)
        return journal

    def close(self) -> None:
        for journal in self.opened:
            try:
                journal.close()
            except Exception:  # noqa: BLE001, S110  (closed already by the test)
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


# A delivering process: begins ("k", SINK) with mark 7 and says so, then delivers until
# it is killed (it never records done).
HOLDER = r"""
import os, sys
if sys.argv[1] == "sqlite":
    from pathlib import Path
    from actors.sinks.journal import AlertJournal
    from catalyst_config import SqliteConfig
    journal = AlertJournal(Path(sys.argv[2]), sqlite_cfg=SqliteConfig(), ttl_s=3600)
else:
    from actors.sinks.journal_postgres import PostgresAlertJournal
    from catalyst_config.schema import PostgresConfig
    journal = PostgresAlertJournal(os.environ["JOURNAL_DSN"], ttl_s=3600, name="holder",
                                   pg_cfg=PostgresConfig(connect_timeout_s=2,
                                                         delivery_lease_s=float(sys.argv[3])))
print(*journal.begin("k", sys.argv[4], 7), flush=True)
sys.stdin.read()
"""


def start_holder(backend: Backend) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, backend.name, str(backend.path), str(SHORT_LEASE_S),
         SINK], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "JOURNAL_DSN": backend.dsn or ""})
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "the holder process did not begin within 60 s"
    assert proc.stdout.readline().split() == [GO, "None"]
    return proc


# The contract, on both backends -------------------------------------------------------


def test_a_delivery_begins_once_and_once_done_is_already_delivered_for_good(backend):
    journal = backend.open()
    assert journal.begin("k", SINK, 10) == (GO, None)
    journal.done("k", SINK)
    assert journal.begin("k", SINK, 20)[0] == ALREADY
    assert journal.begin("k", "console", 0) == (GO, None)  # each sink on its own
    journal.close()
    again = backend.open()  # a restarted alert actor, or another instance
    assert again.begin("k", SINK, 30)[0] == ALREADY


def test_an_unfinished_attempt_of_this_process_is_unsure_with_its_first_mark(backend):
    journal = backend.open()
    assert journal.begin("k", SINK, 10) == (GO, None)
    # The sink is asked whether k was written after 10, however often it is asked.
    assert journal.begin("k", SINK, 99) == (UNSURE, 10)
    assert journal.begin("k", SINK, 120) == (UNSURE, 10)
    journal.done("k", SINK)
    assert journal.begin("k", SINK, 130)[0] == ALREADY


def test_a_released_attempt_begins_afresh(backend):
    journal = backend.open()
    assert journal.begin("k", SINK, 10) == (GO, None)
    journal.release("k", SINK)  # the sink failed before writing anything
    assert journal.begin("k", SINK, 20) == (GO, None)
    assert journal.begin("k", SINK, 30) == (UNSURE, 20)  # the new attempt's mark


def test_a_live_process_delivering_is_busy_and_once_it_died_the_sink_is_asked(backend):
    """Another process begins (k, sink) and delivers until SIGKILL, never recording done:
    while it lives the key is BUSY (on PostgreSQL past several leases: the holder renews
    them); once it is gone, UNSURE with its mark (on PostgreSQL only after its lease)."""
    journal = backend.open()
    holder = start_holder(backend)
    try:
        alive_for = 2.5 * SHORT_LEASE_S if backend.name == "postgres" else 0.5
        until = time.monotonic() + alive_for
        while time.monotonic() < until:
            assert journal.begin("k", SINK, 50) == (BUSY, 7)
            time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait(30)
        holder.stdin.close()
        holder.stdout.close()
    died = time.monotonic()
    if backend.name == "postgres":  # its last renewal gave it most of a lease
        assert journal.begin("k", SINK, 50) == (BUSY, 7)
    verdict = wait_for(lambda: (v := journal.begin("k", SINK, 50))[0] != BUSY and v,
                       SHORT_LEASE_S + 10, interval=0.05, message="the dead holder's row")
    assert verdict == (UNSURE, 7)
    if backend.name == "postgres":
        assert time.monotonic() - died > SHORT_LEASE_S / 3  # not before its lease ran out
    journal.done("k", SINK)
    assert journal.begin("k", SINK, 60)[0] == ALREADY


def test_purge_forgets_done_rows_past_the_ttl_in_bounded_batches_never_sending_ones(backend):
    journal = backend.open(ttl_s=100.0, purge_batch=3, purge_max_batches=2)
    for i in range(10):
        assert journal.begin(f"d{i}", SINK, i)[0] == GO
        journal.done(f"d{i}", SINK)
    assert journal.begin("sending", SINK, 0)[0] == GO
    assert journal.purge() == 0  # none older than the TTL yet
    later = time.time() + 101.0
    runs = [journal.purge(now=later)]
    while getattr(journal, "purge_incomplete", False):
        runs.append(journal.purge(now=later))
        assert len(runs) < 10
    if backend.name == "postgres":  # 3 rows a batch, 2 batches a call: 6, then 4
        assert runs == [6, 4]
    assert sum(runs) == 10 and journal.purge(now=later) == 0
    assert journal.begin("d0", SINK, 0) == (GO, None)  # forgotten
    assert journal.begin("sending", SINK, 1) == (UNSURE, 0)  # kept


# What only the shared journal must do ---------------------------------------------------


def test_two_holders_racing_for_the_same_keys_deliver_each_once(pg):
    """Two alert actors' journals, one thread each, begin the same 400 keys in the same
    order, ten at a time, both starting each ten together, and record them done once all
    ten are delivered: the other one meets each key just begun, under way, or done."""
    n, batch = 400, 10
    journals = [pg.open(holder="host-a/alert-0/1/aa"), pg.open(holder="host-b/alert-0/1/bb")]
    delivered: list[list[str]] = [[], []]
    verdicts: list[collections.Counter] = [collections.Counter(), collections.Counter()]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def deliver(i: int) -> None:
        order = [f"k{j:04d}" for j in range(n)]
        try:
            for start in range(0, n, batch):
                barrier.wait(30)
                mine = []
                for key in order[start:start + batch]:
                    verdict, _ = journals[i].begin(key, SINK, 0)
                    verdicts[i][verdict] += 1
                    if verdict in (GO, UNSURE):
                        mine.append(key)
                delivered[i].extend(mine)
                for key in mine:
                    journals[i].done(key, SINK)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    counts = collections.Counter(delivered[0] + delivered[1])
    assert len(counts) == n and max(counts.values()) == 1, "a key was delivered twice"
    assert delivered[0] and delivered[1], "one holder delivered nothing: no race was run"
    assert verdicts[0][UNSURE] == verdicts[1][UNSURE] == 0  # leases ran: nobody took over
    assert verdicts[0][GO] + verdicts[1][GO] == n
    assert verdicts[0][BUSY] + verdicts[1][BUSY] > 0, "no key was met under way"


def test_a_dead_holders_rows_are_taken_over_by_one_of_two_racing_holders(pg):
    keys = [f"k{j:03d}" for j in range(200)]
    dead = pg.open(holder="host-c/alert-1/9/cc", delivery_lease_s=1.0)
    for key in keys:
        assert dead.begin(key, SINK, 5)[0] == GO
    dead.close()  # killed mid-delivery: nobody renews its leases, they run out in 1 s
    journals = [pg.open(holder="host-a/alert-0/1/aa"), pg.open(holder="host-b/alert-0/1/bb")]
    # The last row begun is the last whose lease runs out.
    wait_for(lambda: journals[0].begin(keys[-1], SINK, 0)[0] == UNSURE, 10,
             message="the dead holder's leases run out")
    taken: list[list[str]] = [[keys[-1]], []]
    verdicts: list[list[tuple]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def take(i: int) -> None:
        try:
            barrier.wait(30)
            for key in keys[:-1]:
                verdict = journals[i].begin(key, SINK, 0)
                verdicts[i].append(verdict)
                if verdict[0] == UNSURE:
                    taken[i].append(key)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    counts = collections.Counter(taken[0] + taken[1])
    assert len(counts) == len(keys) and max(counts.values()) == 1, "a row taken over twice"
    assert {v for vs in verdicts for v in vs} <= {(UNSURE, 5), (BUSY, 5)}  # the old mark


def test_a_holder_back_after_its_lease_ran_out_releases_only_its_own_attempt(pg):
    """A stalls past its lease (no renewal: closed here), B takes the row over, then A's
    sink fails and A releases: B's attempt stands, so a third instance is still BUSY."""
    a = pg.open(holder="host-a/alert-0/1/aa", delivery_lease_s=1.0)
    b, c = pg.open(holder="host-b/alert-0/1/bb"), pg.open(holder="host-c/alert-0/1/cc")
    assert a.begin("k", SINK, 3) == (GO, None)
    a.close()
    assert wait_for(lambda: (v := b.begin("k", SINK, 9))[0] != BUSY and v, 10,
                    message="A's lease run out") == (UNSURE, 3)
    a.release("k", SINK)  # connects again for it
    assert c.begin("k", SINK, 0) == (BUSY, 3)
    b.done("k", SINK)
    assert c.begin("k", SINK, 0)[0] == ALREADY


def test_a_server_stopped_mid_run_is_a_journal_outage_and_a_probe_recovers_it(
        pg, pg_server):
    journal = pg.open()
    assert journal.begin("a", SINK, 1) == (GO, None)
    pg_server.stop("immediate")  # as by a crash
    try:
        for call in (lambda: journal.begin("b", SINK, 2), lambda: journal.done("a", SINK),
                     journal.probe, lambda: pg.open()):
            with pytest.raises(StoreUnavailableError) as caught:
                call()
            assert caught.value.reason == "unreachable", caught.value
    finally:
        pg_server.start()

    def probe_ok() -> bool:
        try:
            journal.probe()
        except StoreUnavailableError:
            return False
        return True

    wait_for(probe_ok, 60, interval=0.1, message="the server back")
    journal.done("a", SINK)  # what was delivered meanwhile is recorded now
    assert journal.begin("a", SINK, 3)[0] == ALREADY
    assert journal.begin("b", SINK, 2) == (GO, None)  # the refused begin wrote nothing


def test_the_schema_has_a_version_row_and_a_newer_one_is_refused(pg, pg_dsn):
    pg.open().close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM catalyst_schema "
                            "WHERE component = 'alert_journal'").fetchone() == (1,)
        conn.execute("UPDATE catalyst_schema SET version = 9 WHERE component = 'alert_journal'")
    with pytest.raises(SchemaTooNewError, match="schema version 9"):
        pg.open()


def test_backup_of_the_shared_journal_says_it_is_pg_dumps_job(pg, tmp_path):
    with pytest.raises(CommandError, match="pg_dump"):
        pg.open().backup(tmp_path)


# Two alert actors on PostgreSQL, end to end ---------------------------------------------


def test_two_alert_actors_on_postgres_alert_each_item_once(
        wire, run_supervisor, workdir, pg_dsn):
    """alert-1 is stopped while a feed's items flow: the copies sent to it go out again
    after dedupe's lease (1 s) until alert-0 has alerted them all; resumed, alert-1 finds
    each of its copies delivered in the shared journal and alerts none of them again."""
    n = 12
    published: list[dict] = []
    feeds = [{"name": "pgj", "kind": "pr",
              "url": wire.serve_feed("/pgj.xml", lambda: list(published))}]
    cfg = base_config(workdir, feeds, dedupe={"backend": "postgres", "lease_s": 1.0,
                                              "max_attempts": 1000,
                                              "postgres": {"due_poll_s": 0.2}},
                      actors={"alert": {"instances": 2}})
    cfg["supervisor"]["heartbeat_timeout_s"] = 40.0  # alert-1 is stopped for a while
    running = run_supervisor(cfg, env={"CATALYST_PG_DSN": pg_dsn})
    wait_for(lambda: running.all_running() and len(running.status()["actors"]) == 5, 60,
             message="all actors running")
    stopped = running.actor("alert-1")
    os.kill(stopped["pid"], signal.SIGSTOP)
    try:
        published.extend(make_items("pgj", n))
        wait_for(lambda: len(running.alerts()) >= n, 40, message=f"{n} alerts from alert-0")
    finally:
        os.kill(stopped["pid"], signal.SIGCONT)
    # Its copies: each answered "already" by the journal (counted delivered, not written).
    wait_for(lambda: (running.actor("alert-1") or {}).get("stats", {}).get("delivered", 0)
             >= 1, 30, message="alert-1 settling its copies")
    assert running.actor("alert-1")["pid"] == stopped["pid"]  # not restarted meanwhile
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0
    assert_each_alerted_once(running.alerts(), n)
    assert not (workdir / "data" / "alerts.db").exists()  # the journal is the database
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT sink, state, count(*) FROM catalyst_alert_journal "
                            "GROUP BY sink, state").fetchall()
    assert rows == [(SINK, 1, n)]  # every item done, none left sending
    assert pg_dsn not in running.log_text()
