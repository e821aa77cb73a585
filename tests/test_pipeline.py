"""End to end: a loopback wire, the real supervisor and actors, the JSONL sink."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3

import pytest

from tests.conftest import base_config, wait_for

CATALYSTS = ["Announces FDA Approval of", "Reports Positive Phase 3 Results for",
             "Announces Pricing of Public Offering of", "to Acquire", "Reports Record Revenue for",
             "Signs Supply Contract for"]


def make_items(prefix: str, n: int, start: int = 0) -> list[dict]:
    return [{"title": f"{prefix} Corp{i} {CATALYSTS[i % len(CATALYSTS)]} Widget{i} "
                      f"(NASDAQ: {prefix[:2].upper()}{i:03d})",
             "link": f"https://news.example.com/{prefix}/{i}?utm_source=rss",
             "summary": f"{prefix} Corp{i} said today something material number {i}."}
            for i in range(start, start + n)]


class GrowingFeed:
    """Each poll shows more of the list, and everything it showed before again."""

    def __init__(self, items: list[dict], first: int, step: int):
        self.items, self.first, self.step, self.polls = items, first, step, 0

    def __call__(self) -> list[dict]:
        self.polls += 1
        return self.items[:self.first + (self.polls - 1) * self.step]


def unique_keys(alerts: list[dict]) -> collections.Counter:
    return collections.Counter(a["key"] for a in alerts)


def test_every_unique_item_is_alerted_exactly_once(wire, run_supervisor, workdir):
    wire_a = make_items("alpha", 40)
    # Wire B carries 6 of wire A's releases again under its own URLs, and 10 of its own.
    copies = [{**it, "link": it["link"].replace("news.example.com", "wire-b.example.com")}
              for it in wire_a[:6]]
    wire_b = copies + make_items("bravo", 10)
    feeds = [{"name": "alpha", "kind": "pr",
              "url": wire.serve_feed("/alpha.xml", GrowingFeed(wire_a, 15, 10))},
             {"name": "bravo", "kind": "pr",
              "url": wire.serve_feed("/bravo.xml", GrowingFeed(wire_b, 16, 0))}]
    running = run_supervisor(base_config(workdir, feeds), "--cycles", "5")
    assert running.wait_exit(90) == 0, running.log_text()[-3000:]
    alerts = running.alerts()
    counts = unique_keys(alerts)
    assert [k for k, n in counts.items() if n > 1] == []
    assert len(alerts) == 40 + 10, sorted(counts)
    for record in alerts:
        for field in ("key", "title", "link", "source", "tickers", "category", "score",
                      "sentiment", "published", "fetched_at", "alerted_at", "chart"):
            assert field in record
        assert "utm_source" not in record["key"]
    assert wire.hits["/alpha.xml"] >= 5


def test_status_and_stop_through_the_control_socket(wire, run_supervisor, workdir):
    feeds = [{"name": "alpha", "kind": "pr",
              "url": wire.serve_feed("/alpha.xml", lambda: make_items("alpha", 3))}]
    running = run_supervisor(base_config(workdir, feeds))
    wait_for(running.all_running, 30, message="all actors running")
    # rss_mb comes from the supervisor's sampling, a moment after the first heartbeat.
    wait_for(lambda: all(a["rss_mb"] for a in running.status()["actors"]), 10,
             message="memory sampled")
    result = running.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert {a["kind"] for a in status["actors"]} == {"fetcher", "dedupe", "llm", "alert"}
    for actor in status["actors"]:
        assert set(actor) >= {"name", "kind", "pid", "state", "rss_mb", "restarts",
                              "last_restart_reason", "uptime_s", "heartbeat_age_s", "stats"}
        assert actor["rss_mb"] > 0
    table = running.cli("status")
    assert "dedupe-0" in table.stdout and "running" in table.stdout
    wait_for(lambda: len(running.alerts()) == 3, 30, message="3 alerts")
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0
    assert running.cli("status").returncode == 3  # nobody answers now (LSB: not running)


@pytest.mark.parametrize("kind", ["alert", "dedupe", "llm", "fetcher"])
def test_killed_actor_is_replaced_and_delivery_goes_on(wire, run_supervisor, workdir, kind):
    items = make_items("kilo", 60)
    feed = GrowingFeed(items, 10, 5)
    feeds = [{"name": "kilo", "kind": "pr", "url": wire.serve_feed("/kilo.xml", feed)}]
    running = run_supervisor(base_config(workdir, feeds))
    wait_for(lambda: len(running.alerts()) >= 10, 30, message="first alerts")
    victim = running.actor(f"{kind}-0")
    os.kill(victim["pid"], signal.SIGKILL)
    replaced = wait_for(lambda: (a := running.actor(f"{kind}-0")) and a["pid"] != victim["pid"]
                        and a["state"] == "running" and a, 30, message=f"{kind} replaced")
    assert replaced["restarts"] == 1
    assert replaced["last_restart_reason"] == "exit"
    wait_for(lambda: len(running.alerts()) >= 60, 60, message="all 60 alerts")
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0
    counts = unique_keys(running.alerts())
    assert len(counts) == 60 and max(counts.values()) == 1
    events = running.admin_events()
    assert any(e["event"] == "restart" and e["actor"] == f"{kind}-0" and e["reason"] == "exit"
               for e in events)
    db = sqlite3.connect(workdir / "data" / "seen.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM ledger WHERE state = 1").fetchone()[0] == 0


def test_bad_config_key_is_named_by_its_path(run_supervisor, workdir):
    cfg = base_config(workdir, [])
    cfg["supervisor"]["leak"] = {"window_s": "five minutes"}
    running = run_supervisor(cfg)
    assert running.wait_exit(30) == 2
    assert "supervisor.leak.window_s" in running.log_text()
    result = running.cli("check-config")
    assert result.returncode == 2
    assert "supervisor.leak.window_s: expected a number" in result.stderr


def test_second_supervisor_on_the_same_data_dir_refuses_to_start(wire, run_supervisor, workdir):
    feeds = [{"name": "alpha", "kind": "pr",
              "url": wire.serve_feed("/alpha.xml", lambda: make_items("alpha", 2))}]
    first = run_supervisor(base_config(workdir, feeds))
    wait_for(first.all_running, 30, message="first supervisor running")
    second = run_supervisor(base_config(workdir, feeds))
    assert second.wait_exit(30) == 2
    assert "locked by another process" in second.log_text()
    assert first.all_running()
