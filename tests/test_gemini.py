"""The Gemini classifier against a loopback fake of generateContent, in process.

Each test drives a GeminiClassifier the way the llm actor does (submit, then answers()
and tick() on the loop) and waits on conditions with deadlines. End-to-end runs through
the real supervisor are in test_gemini_pipeline.py.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import msgspec
import pytest

from actors.classification import make_classifier
from actors.classification.rules import CATEGORIES
from actors.errors import ConfigError
from actors.protocol import Analysis, Item
from catalyst_config import Secrets, config_from_dict
from tests.conftest import wait_for
from tests.fake_gemini import FakeGemini

API_KEY = "test-gemini-key-5f3a9c"
PRICE = {"input_usd_per_mtok": 0.30, "output_usd_per_mtok": 2.50}


def gemini_config(data_dir: Path, fake: FakeGemini, **llm):
    settings = {"provider": "gemini", "base_url": fake.base_url, "timeout_s": 2.0,
                "requests_per_minute": 60000, "retry_backoff_initial_s": 0.01,
                "retry_backoff_max_s": 0.5, "breaker_backoff_initial_s": 0.3, **llm}
    # A per-feed cap must name a configured feed: the feeds it names are configured here.
    feeds = [{"name": name, "kind": "pr", "url": f"https://{name}.example/rss"}
             for name in settings.get("feed_daily_budget_usd", {})]
    return config_from_dict({"data_dir": str(data_dir), "llm": settings, "feeds": feeds},
                            secrets=Secrets({"GEMINI_API_KEY": API_KEY}))


class Desk:
    """A classifier driven like the llm actor drives it, with its admin events kept."""

    def __init__(self, config):
        self.events: list[tuple[str, str, dict]] = []
        self.classifier = make_classifier(
            config, name="llm-0", admin=lambda event, message, **kw: self.events.append(
                (event, message, kw)))

    def classify(self, items: list[Item], attempt: int = 1,
                 timeout: float = 10.0) -> dict[str, Analysis]:
        c = self.classifier
        out: dict[str, Analysis] = {}
        for item in items:
            analysis = c.submit(item, attempt)
            if analysis is not None:
                out[item.key] = analysis
        wanted = {item.key for item in items}

        def all_answered() -> bool:
            c.tick(time.monotonic())
            for answer in c.answers():
                out[answer.item.key] = answer.analysis
            return wanted <= out.keys() and not c.busy()

        wait_for(all_answered, timeout, interval=0.005, message=f"{len(wanted)} answers")
        return out

    def event_names(self) -> list[str]:
        return [e[0] for e in self.events]

    def close(self) -> None:
        self.classifier.close()


def news(n: int, prefix: str = "n", start: int = 0) -> list[Item]:
    kinds = ["Announces FDA Approval of Widget", "to Acquire Gadget Maker",
             "Announces Pricing of Public Offering", "Reports Third Quarter Results"]
    return [Item(key=f"{prefix}-{i}", title=f"{prefix.title()} Corp{i} {kinds[i % 4]} "
                 f"(NASDAQ: {prefix[:2].upper()}{i})", link=f"https://example.com/{prefix}/{i}",
                 source="wire", kind="pr", summary=f"{prefix} Corp{i} said something {i}.",
                 tickers=[f"{prefix[:2].upper()}{i}"])
            for i in range(start, start + n)]


def filing(key: str, cik: str, form: str, published: float) -> Item:
    return Item(key=key, title=f"{form} - Example Co {cik} (Filer)", link=f"https://sec/{key}",
                source="sec-feed", kind="sec", form=form, cik=cik, published=published,
                summary=f"Filed {form} items 2.02 and 9.01")


# The happy path ----------------------------------------------------------------------


def test_items_are_classified_by_gemini_with_structured_json(fake, desks, tmp_path):
    fake.tokens = (1000, 200)
    desk = desks(gemini_config(tmp_path, fake))
    items = news(10)
    out = desk.classify(items)
    assert {a.provider for a in out.values()} == {"gemini"}
    expected = ["fda_approval", "merger_acquisition", "offering_dilution", "earnings_guidance"]
    for i, item in enumerate(items):
        a = out[item.key]
        assert a.category == expected[i % 4]
        assert -1 <= a.sentiment <= 1 and 0 <= a.score <= 1 and len(a.summary) <= 300
        assert a.summary.startswith("fake-gemini:") and a.tickers == item.tickers
    # One schema-constrained request per batch of up to 8 headlines, key in a header.
    assert fake.calls == {"gemini-2.5-flash": 2}
    assert fake.keys_seen == {API_KEY}
    assert fake.urls_seen == {"/v1beta/models/gemini-2.5-flash:generateContent"}
    config = fake.last_body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["temperature"] == 0
    item_schema = config["responseSchema"]["properties"]["results"]["items"]
    assert item_schema["properties"]["category"]["enum"] == list(CATEGORIES)
    assert set(item_schema["required"]) == {"id", "tickers", "category", "sentiment",
                                            "score", "summary", "keywords", "material"}
    assert item_schema["properties"]["id"]["enum"] == fake.requests[-1]["ids"]
    stats = desk.classifier.stats()
    assert stats["calls"] == 2 and stats["classified_gemini"] == 10
    assert stats["tokens_in"] == 2000 and stats["tokens_out"] == 400
    assert math.isclose(stats["cost_usd_today"], 2 * (1000 * 0.30 + 200 * 2.50) / 1e6)
    assert stats["fallbacks"] == 0 and stats["breaker_state"] == "closed"


def test_several_requests_run_at_once_up_to_max_concurrency(fake, desks, tmp_path):
    fake.latency_s = 0.3
    desk = desks(gemini_config(tmp_path, fake, batch_size=1, max_concurrency=3))
    started = time.monotonic()
    out = desk.classify(news(9))
    elapsed = time.monotonic() - started
    assert len(out) == 9 and fake.total_calls == 9
    assert fake.max_in_flight == 3
    assert elapsed < 9 * 0.3 * 0.6, f"calls did not overlap: {elapsed:.2f}s"


def test_a_slow_call_never_blocks_submitting_more_items(fake, desks, tmp_path):
    fake.latency_s = 1.0
    desk = desks(gemini_config(tmp_path, fake, batch_size=2, max_concurrency=1))
    c = desk.classifier
    started = time.monotonic()
    for item in news(6):
        assert c.submit(item, 1) is None
        c.answers()  # dispatches; returns at once while the call is under way
    assert time.monotonic() - started < 0.2
    assert c.busy() and c.stats()["in_flight"] == 1
    assert c.next_deadline(time.monotonic()) - time.monotonic() <= 0.06  # the loop polls


# Faults: 429 storms, 5xx, garbage, timeouts ---------------------------------------------


def test_rate_limited_request_is_retried_after_retry_after(fake, desks, tmp_path):
    fake.retry_after = "0.2"
    fake.script("429", "429", "ok")
    desk = desks(gemini_config(tmp_path, fake))
    started = time.monotonic()
    out = desk.classify(news(1))
    assert time.monotonic() - started >= 0.4  # two waits of Retry-After
    assert out["n-0"].provider == "gemini"
    assert fake.total_calls == 3 and desk.classifier.stats()["retries"] == 2


def test_server_errors_are_retried_with_backoff(fake, desks, tmp_path):
    fake.script("503", "500", "ok")
    desk = desks(gemini_config(tmp_path, fake))
    out = desk.classify(news(3))
    assert {a.provider for a in out.values()} == {"gemini"}
    assert fake.total_calls == 3


def test_429_storm_opens_the_breaker_keywords_answer_then_it_closes(fake, desks, tmp_path):
    fake.mode = "429"
    desk = desks(gemini_config(tmp_path, fake, batch_size=1, max_concurrency=1, max_retries=2,
                               breaker_failures=2))
    out = desk.classify(news(5))
    assert {a.provider for a in out.values()} == {"rules"}
    assert fake.total_calls == 2 * 3  # two items asked three times each, then the breaker
    stats = desk.classifier.stats()
    assert stats["breaker_state"] == "open"
    assert stats["fallbacks_by_reason"] == {"rate_limited": 2, "breaker_open": 3}
    assert desk.event_names() == ["llm_breaker_open"]
    # While open, items cost nothing and wait for nothing.
    more = desk.classify(news(3, start=5))
    assert {a.provider for a in more.values()} == {"rules"} and fake.total_calls == 6
    # The API recovers: after the backoff one trial request closes the breaker.
    fake.mode = "ok"
    wait_for(desk.classifier.breaker.allow, 5, message="breaker half-open")
    recovered = desk.classify(news(4, prefix="later"))
    assert {a.provider for a in recovered.values()} == {"gemini"}
    assert desk.classifier.stats()["breaker_state"] == "closed"
    assert desk.event_names() == ["llm_breaker_open", "llm_breaker_closed"]


@pytest.mark.parametrize("behaviour", ["garbage", "truncated", "off_schema"])
def test_bad_answer_is_asked_again_once(fake, desks, tmp_path, behaviour):
    fake.script(behaviour, "ok")
    desk = desks(gemini_config(tmp_path, fake))
    out = desk.classify(news(4))
    assert {a.provider for a in out.values()} == {"gemini"}
    stats = desk.classifier.stats()
    assert fake.total_calls == 2 and stats["invalid_answers"] == 1 and stats["fallbacks"] == 0


@pytest.mark.parametrize("behaviour", ["garbage", "truncated", "off_schema"])
def test_bad_answer_twice_falls_back_to_keywords(fake, desks, tmp_path, behaviour):
    fake.mode = behaviour
    desk = desks(gemini_config(tmp_path, fake))
    items = news(4)
    out = desk.classify(items)
    assert {a.provider for a in out.values()} == {"rules"}
    stats = desk.classifier.stats()
    assert fake.total_calls == 2  # asked once more, never a third time
    assert stats["fallbacks_by_reason"] == {"invalid_answer": 4}
    assert stats["invalid_answers"] == 2 and stats["cost_usd_today"] > 0  # both were paid
    assert stats["breaker_state"] == "closed"  # the API answered: it is not failing


def test_answer_missing_an_item_asks_again_for_that_item_only(fake, desks, tmp_path):
    fake.script("drop_last", "ok")
    desk = desks(gemini_config(tmp_path, fake))
    items = news(3)
    out = desk.classify(items)
    assert {a.provider for a in out.values()} == {"gemini"}
    assert [fake.item_calls[item.title] for item in items] == [1, 1, 2]


def test_hanging_model_times_out_and_keywords_answer(fake, desks, tmp_path):
    fake.mode = "hang"
    desk = desks(gemini_config(tmp_path, fake, timeout_s=0.3, max_retries=1))
    started = time.monotonic()
    out = desk.classify(news(2))
    assert time.monotonic() - started < 2.0
    assert {a.provider for a in out.values()} == {"rules"}
    assert fake.total_calls == 2
    assert desk.classifier.stats()["fallbacks_by_reason"] == {"timeout": 2}


def test_item_waiting_too_long_for_a_call_gets_the_keyword_answer(fake, desks, tmp_path):
    fake.mode = "hang"
    desk = desks(gemini_config(tmp_path, fake, timeout_s=3, max_retries=0, batch_size=1,
                               max_concurrency=1, max_queue_wait_s=0.2))
    c = desk.classifier
    first, second = news(2)
    assert c.submit(first, 1) is None
    c.answers()
    assert c.submit(second, 1) is None
    got = []
    wait_for(lambda: (c.tick(time.monotonic()), got.extend(c.answers()), got)[2], 2,
             message="the waiting item answered")
    assert [(a.item.key, a.analysis.provider) for a in got] == [(second.key, "rules")]
    assert c.stats()["fallbacks_by_reason"] == {"queue_timeout": 1}


def test_full_backlog_pauses_input(fake, desks, tmp_path):
    fake.latency_s = 0.3
    desk = desks(gemini_config(tmp_path, fake, batch_size=1, max_concurrency=1,
                               max_backlog=3))
    c = desk.classifier
    items = news(4)
    for item in items:
        c.submit(item, 1)
    assert c.saturated()
    c.answers()  # one goes out; three still wait
    assert c.saturated()
    out = desk.classify([])  # the loop turns until the backlog has drained
    assert not c.saturated() and not c.busy()
    assert set(out) == {item.key for item in items}


def test_api_key_never_appears_in_logs_or_admin_events(fake, desks, tmp_path, caplog):
    fake.expected_key = "some-other-key"  # the fake rejects ours with 400
    desk = desks(gemini_config(tmp_path, fake, breaker_failures=1))
    with caplog.at_level(logging.DEBUG):
        out = desk.classify(news(2))
    assert {a.provider for a in out.values()} == {"rules"}
    assert desk.classifier.stats()["fallbacks_by_reason"] == {"rejected": 2}
    assert "API key not valid" in caplog.text  # the reason is told...
    assert API_KEY not in caplog.text  # ...never the key
    assert all(API_KEY not in message for _, message, _ in desk.events)
    assert not any(API_KEY in url for url in fake.urls_seen)


# The cache -----------------------------------------------------------------------------


def test_redelivered_item_is_answered_from_cache_with_zero_calls(fake, desks, tmp_path):
    config = gemini_config(tmp_path, fake)
    desk = desks(config)
    items = news(5)
    first = desk.classify(items)
    assert fake.total_calls == 1
    again = {item.key: desk.classifier.submit(item, 2) for item in items}  # at once
    assert again == first and fake.total_calls == 1
    desk.close()
    # A restarted llm actor answers from the SQLite file.
    restarted = desks(config)
    third = {item.key: restarted.classifier.submit(item, 3) for item in items}
    assert third == first and fake.total_calls == 1
    assert restarted.classifier.stats()["cache_hits"] == 5
    # Changed content is a new analysis.
    edited = msgspec.structs.replace(items[0], summary="Corrected text.")
    restarted.classify([edited])
    assert fake.total_calls == 2


def test_redelivery_during_a_slow_call_costs_no_second_call(fake, desks, tmp_path):
    fake.latency_s = 0.5
    desk = desks(gemini_config(tmp_path, fake))
    c = desk.classifier
    (item,) = news(1)
    assert c.submit(item, 1) is None
    c.answers()
    assert c.submit(item, 2) is None  # the lease ran out; the first call still runs
    got = []
    wait_for(lambda: (c.tick(time.monotonic()), got.extend(c.answers()), got)[2], 5,
             message="the answer")
    assert [(a.item.key, a.attempt) for a in got] == [(item.key, 2)]
    assert fake.total_calls == 1 and c.stats()["coalesced"] == 1


def test_amended_filing_invalidates_the_earlier_filing_of_that_form(fake, desks, tmp_path):
    desk = desks(gemini_config(tmp_path, fake))
    now = time.time()
    original = filing("sec:0001-26-000001", "0000000001", "8-K", now - 3600)
    other_form = filing("sec:0001-26-000002", "0000000001", "10-Q", now - 3600)
    other_filer = filing("sec:0002-26-000003", "0000000002", "8-K", now - 3600)
    desk.classify([original, other_form, other_filer])
    assert fake.total_calls == 1
    amendment = filing("sec:0001-26-000009", "0000000001", "8-K/A", now)
    desk.classify([amendment])
    assert fake.total_calls == 2
    assert desk.classifier.stats()["cache_invalidated"] == 1
    c = desk.classifier
    assert c.submit(other_form, 2) is not None and c.submit(other_filer, 2) is not None
    assert c.submit(original, 2) is None  # asked again: the amendment changed it
    desk.classify([original], attempt=2)
    assert fake.total_calls == 3


# The budget ----------------------------------------------------------------------------


def test_budget_warns_then_switches_to_the_cheaper_model_then_to_keywords(fake, desks,
                                                                          tmp_path):
    fake.tokens = (10_000, 1_000)  # $0.003 + $0.0025 a call at flash prices
    config = gemini_config(
        tmp_path, fake, batch_size=1, max_concurrency=1, daily_budget_usd=0.012,
        fallback_daily_budget_usd=0.001, budget_warn_fraction=0.5,
        feed_daily_budget_fraction=1.0)  # one feed here: the whole budget is its to spend
    desk = desks(config)
    desk.classify(news(1, prefix="a"))
    assert desk.event_names() == []
    desk.classify(news(1, prefix="b"))  # $0.011 of $0.012: past the warning fraction
    assert desk.event_names() == ["llm_budget_warning"]
    desk.classify(news(1, prefix="c"))  # $0.0165: the cap; the next call is flash-lite
    assert desk.event_names() == ["llm_budget_warning", "llm_budget_cap"]
    assert fake.calls == {"gemini-2.5-flash": 3}
    out = desk.classify(news(1, prefix="d"))  # flash-lite: $0.0014 >= its $0.001
    assert out["d-0"].provider == "gemini"
    assert fake.calls == {"gemini-2.5-flash": 3, "gemini-2.5-flash-lite": 1}
    assert desk.event_names()[-1] == "llm_budget_exhausted"
    out = desk.classify(news(4, prefix="e"))
    assert {a.provider for a in out.values()} == {"rules"}
    assert fake.total_calls == 4
    stats = desk.classifier.stats()
    assert stats["fallbacks_by_reason"] == {"budget": 4} and stats["model_in_use"] == "keywords"
    assert set(stats["cost_usd_today_by_model"]) == {"gemini-2.5-flash", "gemini-2.5-flash-lite"}
    spent = stats["cost_usd_today"]
    desk.close()
    # Spending is persisted: a restarted actor knows today's total and stays on keywords,
    # without announcing the same events again.
    restarted = desks(config)
    assert math.isclose(restarted.classifier.stats()["cost_usd_today"], spent)
    restarted.classify(news(2, prefix="f"))
    assert fake.total_calls == 4 and restarted.events == []


def test_missing_api_key_or_unpriced_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"llm": {"provider": "gemini", "model": "gemini-9-ultra"}},
                         secrets=Secrets({"GEMINI_API_KEY": API_KEY}))
    assert err.value.path == "llm.model" and "no price" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config_from_dict({"llm": {"fallback_model": "gemini-0-nano"}}, secrets=Secrets({}))
    assert err.value.path == "llm.fallback_model"
    with pytest.raises(ConfigError) as err:
        config_from_dict({"llm": {"provider": "gemini"}}, secrets=Secrets({}))
    assert err.value.path == "llm.provider" and "GEMINI_API_KEY" in str(err.value)
    priced = config_from_dict({"llm": {"provider": "gemini", "model": "my-tuned", "pricing": {
        "my-tuned": PRICE, "gemini-2.5-flash-lite": PRICE}}},
        secrets=Secrets({"GEMINI_API_KEY": API_KEY}))
    assert priced.llm.pricing["my-tuned"].output_usd_per_mtok == 2.50
