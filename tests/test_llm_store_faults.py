"""The Gemini provider lives through its llm_cache.db being away (locked by another program,
disk full, I/O errors) at start or while it runs, without an actor restart.

While the spend tables cannot be read or written the daily budget cannot be checked, so
the keyword classifier answers (counted as store_unavailable) and the model is never
called unmetered; the model comes back by itself once the file works again, and spend
that could not be written meanwhile is written then. Each test drives a real
GeminiClassifier, with a real SQLite file held by a second connection, against the
loopback fake of generateContent (tests/fake_gemini.py); the last runs the real
supervisor and actors.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import time
from pathlib import Path

import pytest

from actors.classification.cache import CACHE_FILE, open_llm_db
from actors.classification.gemini import usage as usage_module
from actors.classification.gemini.usage import Usage, UsageMonitor
from catalyst_config import SqliteConfig, config_from_dict
from tests.test_delivery import assert_each_alerted_once
from tests.test_gemini import API_KEY, Desk, gemini_config, news
from tests.test_gemini_pipeline import gemini_config as pipeline_config
from tests.test_gemini_pipeline import items as wire_items
from tests.test_storage_faults import held_exclusively
from tests.waiting import wait_for

FAST_LOCK = {"busy_timeout_ms": 50}  # a lock is reported in 50 ms, not the default 5 s


def providers(answers) -> set[str]:
    return {a.provider for a in answers.values()}


def spend_in_file(path: Path) -> tuple[int, float, int]:
    """(calls, USD, items) recorded in the spend tables, read by another connection."""
    db = sqlite3.connect(path)
    try:
        calls, usd = db.execute("SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(cost_usd), 0)"
                                " FROM usage").fetchone()
        (items,) = db.execute("SELECT COALESCE(SUM(items), 0) FROM feed_usage").fetchone()
    finally:
        db.close()
    return calls, usd, items


def wait_for_the_model(desk: Desk, prefix: str) -> int:
    """Classifies one new item at a time until the model answers one; returns how many
    items the keyword classifier answered meanwhile."""
    fresh = itertools.count()
    keywords = 0

    def model_answered() -> bool:
        nonlocal keywords
        out = desk.classify(news(1, prefix=f"{prefix}{next(fresh)}"))
        if providers(out) == {"gemini"}:
            return True
        keywords += 1
        return False

    wait_for(model_answered, 20, interval=0.1, message="the model answering again")
    return keywords


def test_gemini_starts_on_keywords_while_its_cache_file_is_locked_then_uses_the_model(
        fake, desks, tmp_path):
    path = tmp_path / CACHE_FILE
    open_llm_db(path, SqliteConfig()).close()
    config = gemini_config(tmp_path, fake, sqlite=FAST_LOCK, batch_size=2)
    with held_exclusively(path):  # a backup tool holds the file as the actor starts
        desk = desks(config)
        out = desk.classify(news(3))
        assert providers(out) == {"rules"} and fake.total_calls == 0  # never unmetered
        stats = desk.classifier.stats()
        assert stats["fallbacks_by_reason"] == {"store_unavailable": 3}
        assert stats["cache_store"] == "locked" and stats["model_in_use"] == "keywords"
        assert desk.event_names() == ["store_unavailable"]
        assert "keyword classifier" in desk.events[0][1]  # the event says what happens
        assert list(tmp_path.glob("*.corrupt-*")) == []  # the file was left where it is
    keywords = wait_for_the_model(desk, "after")
    stats = desk.classifier.stats()
    assert stats["fallbacks_by_reason"] == {"store_unavailable": 3 + keywords}
    assert stats["model_in_use"] == "gemini-2.5-flash" and stats["usage_store"] == "ok"
    assert desk.event_names().count("store_unavailable") == 1  # one event for the outage
    # Spend made after the file came back is recorded in it.
    calls, usd, items = spend_in_file(path)
    assert calls == fake.total_calls == 1 and items == 1
    assert math.isclose(usd, stats["cost_usd_today"]) and usd > 0


def test_spend_the_file_could_not_take_mid_run_is_written_once_it_is_back(fake, desks,
                                                                          tmp_path):
    path = tmp_path / CACHE_FILE
    desk = desks(gemini_config(tmp_path, fake, sqlite=FAST_LOCK, batch_size=2))
    c = desk.classifier
    assert providers(desk.classify(news(2, prefix="a"))) == {"gemini"}
    assert spend_in_file(path)[0] == 1
    batch = news(2, prefix="b")
    for item in batch:
        assert c.submit(item, 1) is None
    c.answers()  # the call goes out; its answer is taken in by a later answers()
    assert c.stats()["in_flight"] == 1
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # WAL: readers go on, every write is refused
    try:
        got = {}

        def answered() -> bool:  # the loop as the actor turns it: nothing may escape
            c.tick(time.monotonic())
            got.update({a.item.key: a.analysis for a in c.answers()})
            return len(got) == 2

        wait_for(answered, 10, interval=0.01, message="the batch in flight answered")
        assert providers(got) == {"gemini"}  # paid for: its answer is used...
        stats = c.stats()
        assert stats["usage_store"] == "locked" and stats["usage_unwritten_usd"] > 0
        assert spend_in_file(path)[0] == 1  # ...and its spend waits in memory
        later = desk.classify(news(2, prefix="c"))
        assert providers(later) == {"rules"} and fake.total_calls == 2
        assert c.stats()["fallbacks_by_reason"] == {"store_unavailable": 2}
        assert desk.event_names() == ["store_unavailable"]
    finally:
        other.execute("COMMIT")
        other.close()
    wait_for_the_model(desk, "after")
    stats = c.stats()
    calls, usd, items = spend_in_file(path)
    assert calls == fake.total_calls == 3  # a, b (written late), and the one after
    assert items == 2 + 2 + 1 and stats["usage_unwritten_usd"] == 0
    assert math.isclose(usd, stats["cost_usd_today"], rel_tol=1e-9)
    assert desk.event_names().count("store_unavailable") == 1


def test_unwritten_spend_is_bounded_and_what_is_dropped_is_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(usage_module, "MAX_UNWRITTEN_ROWS", 4)
    cfg = config_from_dict({"llm": {"daily_budget_usd": 1.0}})
    path = tmp_path / CACHE_FILE
    events = []
    db = open_llm_db(path, SqliteConfig(busy_timeout_ms=50))
    usage = UsageMonitor(db, cfg.llm, actor="llm-0",
                         admin=lambda event, *a, **k: events.append(event))
    call = Usage("gemini-2.5-flash", 1_000_000, 0)  # $0.30
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for n in range(6):  # one model row and a row per feed: past the bound of 4
            usage.record([call], {f"feed{n}": (1, 0.3)})
        assert not usage.available() and usage.choose_model() is None
        stats = usage.stats()
        assert stats["usage_unwritten_rows"] == 4 and events == ["store_unavailable"]
        assert stats["usage_unwritten_dropped_rows"] == 3  # feed rows go first
        assert math.isclose(stats["usage_unwritten_usd"], 6 * 0.3)
    finally:
        other.execute("COMMIT")
        other.close()
    wait_for(usage.available, 15, interval=0.1, message="the spend tables back")
    assert spend_in_file(path) == (6, pytest.approx(6 * 0.3), 3)  # the model row has it all
    assert usage.stats()["usage_unwritten_rows"] == 0
    assert usage.choose_model() == "gemini-2.5-flash-lite"  # the $1.80 counts against $1
    db.close()


def test_the_llm_actor_answers_through_a_locked_cache_file_without_a_restart(
        wire, fake, run_supervisor, workdir):
    path = workdir / "data" / CACHE_FILE
    open_llm_db(path, SqliteConfig()).close()
    feed = wire_items("golf", 6)
    feeds = [{"name": "golf", "kind": "pr",
              "url": wire.serve_feed("/golf.xml", lambda: list(feed))}]
    cfg = pipeline_config(workdir, feeds, fake, llm={"sqlite": FAST_LOCK})
    with held_exclusively(path):
        running = run_supervisor(cfg, env={"GEMINI_API_KEY": API_KEY})
        wait_for(lambda: len(running.alerts()) >= 6, 30, message="6 alerts on keywords")
        assert {a["provider"] for a in running.alerts()} == {"rules"}
        assert fake.total_calls == 0
        llm = wait_for(lambda: (lambda a: a if a["stats"].get("fallbacks") == 6 else None)(
            running.actor("llm-0")), 10, message="llm-0's heartbeat counting 6 fallbacks")
        assert llm["state"] == "running" and llm["restarts"] == 0
        assert llm["stats"]["fallbacks_by_reason"] == {"store_unavailable": 6}
        assert [e["event"] for e in running.admin_events()
                if e["actor"] == "llm-0"] == ["store_unavailable"]
    fresh = itertools.count()

    def model_alerted() -> bool:  # a new item a poll, until one is asked of the model
        n = next(fresh)
        feed.append({"title": f"Hotel{n} Corp Announces FDA Approval of Widget "
                              f"(NASDAQ: HT{n:03d})",
                     "link": f"https://news.example.com/hotel/{n}", "summary": f"Item {n}."})
        return any(a["provider"] == "gemini" for a in running.alerts())
    wait_for(model_alerted, 30, interval=0.5, message="an alert with the model's analysis")
    wait_for(lambda: len({a["key"] for a in running.alerts()}) >= len(feed), 30,
             message="every item alerted")
    assert running.actor("llm-0")["restarts"] == 0
    running.cli("stop")
    assert running.wait_exit(60) == 0
    assert_each_alerted_once(running.alerts(), len(feed))
    assert spend_in_file(path)[0] == fake.total_calls > 0
    assert list(path.parent.glob("*.corrupt-*")) == []
