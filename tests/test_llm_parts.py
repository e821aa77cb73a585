"""The llm actor's parts on their own: the rate limiter, the analysis cache's expiry,
the usage monitor's days and prices, and the answer parser."""

from __future__ import annotations

import json
import math
import sqlite3

from actors.classification.cache import AnalysisCache, open_llm_db
from actors.classification.gemini.prompt import build_prompt, parse_answer
from actors.classification.gemini.rate_limit import RateLimiter, backoff_s
from actors.classification.gemini.usage import Usage, UsageMonitor
from actors.protocol import Analysis, Item
from catalyst_config import SqliteConfig, config_from_dict


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def item(key: str, **kw) -> Item:
    return Item(key=key, title=f"Title {key}", link="https://x", source="s", kind="pr", **kw)


ANALYSIS = Analysis(category="other", score=0.5, sentiment=0.0, provider="gemini")


def test_requests_per_minute_limit_holds_back_extra_requests():
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock)
    assert limiter.try_acquire() and limiter.try_acquire()  # the burst
    assert not limiter.try_acquire()
    assert math.isclose(limiter.wait_s(), 1.0)
    clock.t += 0.5
    assert not limiter.try_acquire()
    clock.t += 0.5
    assert limiter.try_acquire() and not limiter.try_acquire()
    clock.t += 60  # a quiet minute refills only up to the burst
    assert limiter.try_acquire() and limiter.try_acquire() and not limiter.try_acquire()


def test_retry_after_pauses_every_caller():
    clock = Clock()
    limiter = RateLimiter(per_minute=6000, burst=4, clock=clock)
    limiter.pause(2.0)
    assert not limiter.try_acquire() and math.isclose(limiter.wait_s(), 2.0)
    clock.t += 2.0
    assert limiter.try_acquire()


def test_backoff_doubles_with_jitter_up_to_the_cap():
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0)]:
        waits = [backoff_s(retry, 1.0, 10.0) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)


def test_cached_analyses_expire_and_are_purged(tmp_path):
    clock = Clock()
    db = open_llm_db(tmp_path / "llm_cache.db", SqliteConfig())
    cache = AnalysisCache(db, ttl_s=3600, memory_size=10, clock=clock)
    cache.put_many([(item("a"), "h1", ANALYSIS), (item("b"), "h2", ANALYSIS)])
    fresh = AnalysisCache(db, ttl_s=3600, memory_size=10, clock=clock)  # no memory copy
    assert fresh.get("a", "h1") == ANALYSIS and fresh.get("a", "h1") == ANALYSIS
    assert db.execute("SELECT hits FROM analyses WHERE key = 'a'").fetchone()[0] == 2
    assert fresh.get("a", "other-content") is None
    clock.t += 3600
    assert AnalysisCache(db, ttl_s=3600, memory_size=10, clock=clock).get("b", "h2") is None
    assert cache.purge_expired() == 2
    assert db.execute("SELECT count(*) FROM analyses").fetchone()[0] == 0
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unreadable_cache_file_is_moved_aside_and_started_fresh(tmp_path):
    path = tmp_path / "llm_cache.db"
    path.write_bytes(b"this is not a database" * 100)
    told = []
    db = open_llm_db(path, SqliteConfig(), on_corrupt=told.append)
    assert db.execute("SELECT count(*) FROM analyses").fetchone()[0] == 0
    assert told and list(tmp_path.glob("llm_cache.db.corrupt-*"))


def test_usage_is_priced_per_model_and_starts_afresh_each_utc_day(tmp_path):
    cfg = config_from_dict({"llm": {"daily_budget_usd": 1.0}})
    db = sqlite3.connect(tmp_path / "u.db", isolation_level=None)
    wall = Clock(1_800_000_000.0 - 1_800_000_000.0 % 86400 + 86000)  # 23:53 UTC
    usage = UsageMonitor(db, cfg.llm, actor="llm-0", wall=wall)
    cost = usage.record([Usage("gemini-2.5-flash", 1_000_000, 100_000),
                         Usage("gemini-2.5-flash-lite", 1_000_000, 0)])
    assert math.isclose(cost, 0.30 + 0.25 + 0.10)
    assert usage.choose_model() == "gemini-2.5-flash"  # $0.55 of its $1
    stats = usage.stats()
    assert math.isclose(stats["cost_usd_today_by_model"]["gemini-2.5-flash"], 0.55)
    other = UsageMonitor(db, cfg.llm, actor="llm-1", wall=wall)  # another instance
    other.record([Usage("gemini-2.5-flash", 2_000_000, 0)])
    usage.refresh()
    assert usage.choose_model() == "gemini-2.5-flash-lite"  # together past the $1
    assert math.isclose(usage.stats()["cost_usd_today"], 0.65)  # its own share
    assert math.isclose(usage.stats()["cost_usd_today_all_instances"], 1.25)
    wall.t += 600  # past midnight UTC
    assert usage.choose_model() == "gemini-2.5-flash"
    assert usage.stats()["cost_usd_today"] == 0


def test_answer_parser_keeps_valid_results_and_names_the_rest():
    items = [item("a", tickers=["AAA"]), item("b"), item("c")]
    prompt = build_prompt(items, 1500, ids=["id0000", "id1111", "id2222"])
    good = {"id": "id0000", "tickers": ["$aaa", "not a ticker!"], "category": "fda_approval",
            "sentiment": 0.5, "score": 0.9, "summary": "x " * 400, "keywords": ["k"] * 30,
            "material": True}
    text = json.dumps({"results": [good, {**good, "id": "id1111", "score": 1.5},
                                   {**good, "id": "id7777"}]})
    parsed = parse_answer(text, prompt)
    assert list(parsed.analyses) == [0] and parsed.invalid == [1, 2]
    a = parsed.analyses[0]
    assert a.tickers == ["AAA"] and len(a.summary) <= 300
    assert a.keywords == ["k"] and a.provider == "gemini"
    assert "score 1.5" in parsed.problem and "unknown id 'id7777'" in parsed.problem
    assert not parsed.steered  # off-schema and unknown ids are mistakes, not steering
    assert parse_answer("", prompt).invalid == [0, 1, 2]
    assert parse_answer('{"results": [', prompt).invalid == [0, 1, 2]
