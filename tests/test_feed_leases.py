"""Feed leases: with several hosts sharing one PostgreSQL, each feed is polled by one live
fetcher at a time, the feeds are shared among the live hosts, a dead host's feeds move to
another within the lease time, and its share comes back to it when it returns.

The pure lease bookkeeping first (actors/feeds/leases.py), then two supervisors on this
machine standing in for two hosts (each its own run and data directories and host name,
both on one database): the tests/test_multi_host.py soak does the same across network
namespaces, over tcp:// with CurveZMQ.
"""

from __future__ import annotations

import collections
import os
import signal
import time

import psutil

from actors import protocol
from actors.feeds.leases import HANDOVER_FRACTION, RENEW_FRACTION, FeedLeases
from actors.seen_store.sharing import shared_to
from tests.conftest import base_config, read_jsonl, wait_for
from tests.test_pipeline import make_items

LEASE_S = 2.0


def test_leases_are_renewed_before_they_lapse_and_dropped_when_unanswered():
    leases = FeedLeases("host-a/fetcher-0", 30.0, now=100.0)
    ask = leases.request(7, ["b", "a"], now=100.0)
    assert ask == protocol.FeedLease(req_id=7, holder="host-a/fetcher-0", feeds=["a", "b"],
                                     ttl_s=30.0)
    assert leases.request(8, ["a", "b"], now=105.0) is None  # renewed a third in, not before
    assert leases.answered(protocol.FeedLeased(req_id=7, feeds=["a"])) is True
    assert leases.held == {"a"} and leases.held_until == 130.0  # counted from the ask
    assert leases.answered(protocol.FeedLeased(req_id=7, feeds=["a", "b"])) is False  # late
    again = leases.request(9, ["a", "b"], now=110.0)
    assert again is not None
    assert leases.answered(protocol.FeedLeased(req_id=9, error="store unavailable")) is False
    assert leases.held == {"a"}  # a refusal takes nothing away...
    assert leases.lapse(now=129.9) is False
    assert leases.lapse(now=130.0) is True and leases.held == set()  # ...but time does
    assert leases.lapses == 1
    leases.held = {"a", "c"}
    release = leases.release(10)
    assert release.release and release.feeds == ["a", "c"] and leases.held == set()


def test_a_lease_request_names_the_feeds_paused_on_this_host():
    leases = FeedLeases("host-a/fetcher-0", 30.0, now=100.0)
    ask = leases.request(1, ["a", "b"], now=100.0, paused={"b", "not-ours"})
    assert ask.paused == ["b"]  # stays with us while we hold it: see sharing.owned_by


def test_a_due_handover_makes_the_fetcher_ask_again_soon():
    leases = FeedLeases("host-b/fetcher-0", 30.0, now=100.0)
    assert leases.request(1, ["a", "b"], now=100.0) is not None
    assert leases.answered(protocol.FeedLeased(req_id=1, feeds=["a"], handover=1))
    assert leases.next_request == 100.0 + 30.0 * HANDOVER_FRACTION  # not a third in
    assert leases.request(2, ["a", "b"], now=103.0) is not None
    leases.answered(protocol.FeedLeased(req_id=2, feeds=["a", "b"]))
    assert leases.next_request == 113.0  # all taken: back to a third of the lease


def host_config(workdir, name: str, feeds: list[dict]) -> dict:
    cfg = base_config(workdir, feeds, dedupe={"backend": "postgres", "lease_s": 3.0,
                                              "postgres": {"due_poll_s": 0.2}},
                      fetch={"connect_timeout_s": 2, "read_timeout_s": 3, "first_poll": "alert",
                             "feed_lease_s": LEASE_S},
                      host={"name": name})
    cfg.update(run_dir=f"{name}/run", data_dir=f"{name}/data", log_dir=f"{name}/log")
    cfg["alerts"]["sinks"] = [{"type": "jsonl", "path": f"{name}/alerts.jsonl"}]
    cfg["alerts"]["admin"] = {"type": "jsonl", "path": f"{name}/admin.jsonl"}
    return cfg


def leased(running) -> set[str]:
    """The feeds this host's fetcher holds now (from its status)."""
    status = running.actor("fetcher-0") or {}
    feeds = (status.get("stats") or {}).get("feeds", {}).get("feeds", {})
    return {name for name, f in feeds.items() if f.get("leased_here")}


def kill_host(running) -> None:
    """The whole host dies at once: its supervisor and every actor, SIGKILL."""
    procs = [psutil.Process(running.proc.pid), *running.descendants()]
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    running.proc.wait(30)


def test_two_hosts_share_the_feeds_and_a_dead_hosts_feeds_move_within_the_lease_and_back(
        wire, run_supervisor, workdir, pg_dsn):
    published = {f"f{i}": make_items(f"lease{i}", 3) for i in range(6)}
    feeds = [{"name": name, "kind": "pr",
              "url": wire.serve_feed(f"/{name}.xml", lambda n=name: list(published[n]))}
             for name in published]
    env = {"CATALYST_PG_DSN": pg_dsn}
    a = run_supervisor(host_config(workdir, "host-a", feeds), env=env)
    wait_for(lambda: len(leased(a)) == 6, 30, message="host a, alone, holding every feed")
    b = run_supervisor(host_config(workdir, "host-b", feeds), env=env)
    wait_for(lambda: len(leased(a)) == 3 and len(leased(b)) == 3, 30, interval=0.1,
             message="the feeds shared: three a host")
    # Settled: each feed held by one host, the same ones, over three lease times.
    shared = (leased(a), leased(b))
    deadline = time.monotonic() + 3 * LEASE_S
    while time.monotonic() < deadline:  # deliberately watched for three lease times
        assert (leased(a), leased(b)) == shared and not shared[0] & shared[1]
        time.sleep(0.2)

    kill_host(a)
    killed_at = time.monotonic()
    for name in published:  # news while a is dead: b must catch it
        published[name].extend(make_items(f"lease{name[1:]}", 2, start=3))
    wait_for(lambda: len(leased(b)) == 6, 5 * LEASE_S, interval=0.1,
             message="host b taking the dead host's feeds")
    moved_s = time.monotonic() - killed_at
    # A lease runs from when a asked; b asks every LEASE_S / 3: within about 1.4 leases.
    assert moved_s <= LEASE_S * 1.5 + 1.0, f"feeds moved after {moved_s:.1f} s"

    # a comes back: b gives its share up at b's next renewal, and a, told a handover is
    # due, asks again soon and takes it.
    a = run_supervisor(host_config(workdir, "host-a", feeds), env=env)
    wait_for(a.all_running, 30, message="host a running again")
    back_at = time.monotonic()
    wait_for(lambda: leased(a) == shared[0] and leased(b) == shared[1], 5 * LEASE_S,
             interval=0.1, message="host a given its share back")
    back_s = time.monotonic() - back_at
    assert back_s <= LEASE_S * (RENEW_FRACTION + HANDOVER_FRACTION) + 2.0, back_s
    for name in published:
        published[name].extend(make_items(f"lease{name[1:]}", 1, start=5))
    keys = {it["link"] for items in published.values() for it in items}

    def alerted() -> collections.Counter:
        return collections.Counter(
            r["key"] for host in ("host-a", "host-b")
            for r in read_jsonl(workdir / host / "alerts.jsonl"))

    wait_for(lambda: len(alerted()) == len(keys), 60, message="every item alerted")
    for host in (a, b):
        host.cli("stop")
        assert host.wait_exit(60) == 0
    counts = alerted()
    assert len(counts) == 36 and max(counts.values()) == 1, counts.most_common(3)
    print(f"feeds moved to host b {moved_s:.2f} s after host a died, and half came back "
          f"{back_s:.2f} s after it returned (lease {LEASE_S} s)")


def test_a_feed_paused_on_one_host_stays_unpolled_when_the_other_joins_and_moves_on_resume(
        wire, run_supervisor, workdir, pg_dsn):
    names = [f"p{i}" for i in range(4)]
    polls: collections.Counter = collections.Counter()

    def feed(name: str):
        def items():
            polls[name] += 1
            return make_items(f"pz{name}", 2)
        return items

    feeds = [{"name": n, "kind": "pr", "url": wire.serve_feed(f"/{n}.xml", feed(n))}
             for n in names]
    env = {"CATALYST_PG_DSN": pg_dsn}
    a = run_supervisor(host_config(workdir, "host-a", feeds), env=env)
    wait_for(lambda: len(leased(a)) == 4, 30, message="host a, alone, holding every feed")
    # The feed that would go to b once b joins: paused on a first.
    paused = shared_to("host-b/fetcher-0", {"host-a/fetcher-0": names,
                                            "host-b/fetcher-0": names})[0]
    assert a.cli("pause", paused).returncode == 0
    asked = lease_requests(a)
    wait_for(lambda: lease_requests(a) >= asked + 2, 30, message="a's pause sent with a renewal")
    b = run_supervisor(host_config(workdir, "host-b", feeds), env=env)
    wait_for(lambda: leased(b) and leased(a) | leased(b) == set(names)
             and not leased(a) & leased(b), 30, interval=0.1, message="the feeds shared")
    assert paused in leased(a)  # kept where it is paused, not handed to b to poll
    polled = polls[paused]
    deadline = time.monotonic() + 3 * LEASE_S
    while time.monotonic() < deadline:  # deliberately watched for three lease times
        assert paused not in leased(b) and polls[paused] == polled
        time.sleep(0.2)
    assert a.cli("resume", paused).returncode == 0
    wait_for(lambda: paused in leased(b) and polls[paused] > polled, 30, interval=0.1,
             message="the resumed feed handed to b and polled there")
    for host in (a, b):
        host.cli("stop")
        assert host.wait_exit(60) == 0


def lease_requests(running) -> int:
    status = running.actor("fetcher-0") or {}
    return (status.get("stats") or {}).get("feed_leases", {}).get("requests", 0)


def test_a_clean_stop_hands_the_feeds_over_at_once(wire, run_supervisor, workdir, pg_dsn):
    feeds = [{"name": f"g{i}", "kind": "pr",
              "url": wire.serve_feed(f"/g{i}.xml", lambda i=i: make_items(f"hand{i}", 2))}
             for i in range(3)]
    env = {"CATALYST_PG_DSN": pg_dsn}
    lease_s = 30.0  # long: only the release can move the feeds within the wait below
    cfg_a, cfg_b = (host_config(workdir, h, feeds) for h in ("host-a", "host-b"))
    for cfg in (cfg_a, cfg_b):
        cfg["fetch"]["feed_lease_s"] = lease_s
    a = run_supervisor(cfg_a, env=env)
    wait_for(lambda: len(leased(a)) == 3, 30, message="host a holding every feed")
    b = run_supervisor(cfg_b, env=env)
    wait_for(lambda: b.all_running(), 30, message="host b running")
    a.cli("stop")
    stopped = time.monotonic()
    wait_for(lambda: len(leased(b)) == 3, lease_s / 2, interval=0.1,
             message="host b holding the feeds a released")
    assert time.monotonic() - stopped < lease_s / 2
    assert a.wait_exit(60) == 0
    b.cli("stop")
    assert b.wait_exit(60) == 0


def test_roles_split_the_pipeline_over_two_hosts_and_a_killed_actor_loses_nothing(
        wire, run_supervisor, workdir):
    """Host "ingest" runs fetcher and dedupe, host "deliver" llm and alert; they talk over
    tcp:// under CurveZMQ (one certificate: both stand on 127.0.0.1 here)."""
    from tests.test_curve import allow, free_ports, make_keys

    published = make_items("split", 8)
    feeds = [{"name": "split", "kind": "pr",
              "url": wire.serve_feed("/split.xml", lambda: list(published))}]
    secret, public = make_keys(workdir / "curve", "127.0.0.1")
    curve = {"secret_key": str(secret), "public_keys_dir": str(allow(workdir / "allowed", public))}
    rpc, acks, llm_in, alert_in = (f"tcp://127.0.0.1:{p}" for p in free_ports(1, 1, 1, 1))
    ingest = base_config(workdir, feeds, host={"name": "ingest", "roles": ["fetcher", "dedupe"]},
                         endpoints={"dedupe_rpc": rpc, "dedupe_acks": acks}, curve=curve,
                         peers={"llm_in": [llm_in]})
    deliver = base_config(workdir, feeds, host={"name": "deliver", "roles": ["llm", "alert"]},
                          endpoints={"llm_in": llm_in, "alert_in": alert_in}, curve=curve,
                          peers={"dedupe_acks": [acks]})
    ingest.update(run_dir="ingest/run", data_dir="ingest/data", log_dir="ingest/log")
    deliver.update(run_dir="deliver/run", data_dir="deliver/data", log_dir="deliver/log")
    a = run_supervisor(ingest)
    b = run_supervisor(deliver)
    wait_for(lambda: len(b.alerts()) >= 8, 45, message="8 alerts through two hosts")
    assert {x["name"] for x in a.status()["actors"]} == {"fetcher-0", "dedupe-0"}
    assert {x["name"] for x in b.status()["actors"]} == {"llm-0", "alert-0"}
    assert b.status()["supervisor"]["host"] == "deliver"

    os.kill(b.actor("llm-0")["pid"], signal.SIGKILL)  # chaos on the delivering host
    published.extend(make_items("split", 8, start=8))
    wait_for(lambda: len(b.alerts()) >= 16, 45, message="8 more alerts after the kill")
    for host in (a, b):  # the sources first: ingest drains what it holds
        host.cli("stop")
        assert host.wait_exit(60) == 0
    keys = collections.Counter(x["key"] for x in b.alerts())
    assert len(keys) == 16 and max(keys.values()) == 1
