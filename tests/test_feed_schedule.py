"""Each feed on its own schedule, staleness, Retry-After, redirects and EDGAR's renamed
ownership forms: the parts, without processes (the pipeline tests are in
test_field_fetching.py)."""

from __future__ import annotations

import random
import time

import pytest

from actors.errors import FeedError
from actors.feeds import FeedSchedule, Staleness
from actors.feeds.http import check_redirect, retry_after_s
from actors.feeds.items import build_items, clip, is_ownership_form
from actors.feeds.parse import HostileFeed, check_document
from tests.hostile_server import Response, rss, sec_atom
from tests.test_feeds import ATOM, RSS, release


def test_every_feed_keeps_its_own_interval_and_a_slow_one_holds_back_no_other():
    s = FeedSchedule({"fast": 2.0, "slow": 2.0, "edgar": 5.0}, jitter_fraction=0.0, now=0.0)
    assert s.due(0.0) == ["edgar", "fast", "slow"]  # all due at start
    for name in s.due(0.0):
        s.started(name)
    assert s.due(100.0) == []  # nothing twice while in flight
    s.finished("fast", 0.0)
    s.finished("edgar", 0.0)
    # "slow" is still running (a trickle): "fast" comes due on its own time regardless.
    assert s.due(1.9) == [] and s.due(2.0) == ["fast"]
    assert s.due(5.0) == ["fast", "edgar"]  # most overdue first
    assert s.next_poll_in("fast", 1.0) == pytest.approx(1.0) and s.next_poll_in("slow", 1.0) is None


def test_jitter_only_ever_shortens_the_wait():
    s = FeedSchedule({"a": 10.0}, jitter_fraction=0.1, now=0.0, rng=random.Random(7))
    waits = []
    for i in range(200):
        start = i * 100.0
        s.started("a")
        s.finished("a", start)
        waits.append(s.next_due() - start)
    assert all(9.0 <= w <= 10.0 for w in waits)
    assert max(waits) - min(waits) > 0.5  # it does spread the polls


def test_retry_after_and_an_open_breaker_push_the_next_poll_later():
    s = FeedSchedule({"a": 2.0}, jitter_fraction=0.0, now=0.0)
    s.started("a")
    s.finished("a", 0.0, not_before=120.0)
    assert s.due(119.0) == [] and s.due(120.0) == ["a"]


def test_a_cycle_ends_once_every_feed_was_polled_since_the_last_one_ended():
    s = FeedSchedule({"a": 1.0, "b": 50.0}, jitter_fraction=0.0, now=0.0)
    for name in ("a", "b"):
        s.started(name)
    assert s.finished("a", 0.0) is False
    s.started("a")
    assert s.finished("a", 1.0) is False  # a fast feed polled twice is not a cycle
    assert s.finished("b", 0.0) is True and s.cycles_done == 1
    s.started("b")
    assert s.finished("b", 50.0) is False  # now "a" owes a poll to the second cycle


def test_a_feed_with_nothing_new_while_others_have_news_is_reported_stale_once():
    hour = 3600.0
    st = Staleness({"wire": 72 * hour, "sec-13d": 72 * hour}, now=0.0)
    assert st.check(80 * hour) == []  # everything quiet (a weekend): nobody is stale
    st.saw_new({"wire"}, 90 * hour)
    events = st.check(90 * hour)
    assert [(f, e) for f, e, _ in events] == [("sec-13d", "feed_stale")]
    assert "form type" in events[0][2]
    assert st.check(91 * hour) == []  # once, not every check
    assert st.is_stale("sec-13d")
    st.saw_new({"sec-13d"}, 92 * hour)
    assert [(f, e) for f, e, _ in st.check(92 * hour)] == [("sec-13d", "feed_fresh")]
    assert not st.is_stale("sec-13d")


def test_retry_after_reads_seconds_and_dates_and_is_capped():
    assert retry_after_s("30") == 30.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412420.0) == 60.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None
    assert retry_after_s("86400") == 3600.0


def test_a_429_with_retry_after_holds_that_feed_back(server, make_fetcher):
    server.route("/busy", Response(429, b"slow down", headers={"Retry-After": "45"}))
    server.route("/ok", Response(200, sec_atom([]).encode(), headers=ATOM))
    fetcher, feeds = make_fetcher({"busy": "/busy", "ok": "/ok"})
    busy, ok = fetcher.fetch_cycle(feeds)
    assert busy.status == "error" and "Retry-After 45" in busy.error
    assert fetcher.not_before("busy") - time.monotonic() == pytest.approx(45, abs=2)
    assert fetcher.not_before("ok") <= time.monotonic()
    stats = fetcher.stats()["feeds"]
    assert stats["busy"]["last_error"] and stats["ok"]["last_success_at"] > 0


def test_redirects_never_downgrade_https_nor_leave_the_web():
    assert check_redirect("http://a.example/x", "/y") == "http://a.example/y"
    assert check_redirect("https://a.example/x", "https://b.example/") == "https://b.example/"
    assert check_redirect("http://a.example/x", "https://b.example/") == "https://b.example/"
    with pytest.raises(FeedError, match="plain http"):
        check_redirect("https://a.example/x", "http://a.example/x")
    with pytest.raises(FeedError, match="non-web"):
        check_redirect("https://a.example/x", "file:///etc/passwd")


@pytest.mark.parametrize("encoding, declaration", [
    ("UTF-7", b'<!DOCTYPE rss [<!+AEU-NTITY a "+AGEAYQBh-">]>'),  # <!ENTITY in UTF-7
    ("UTF-7", b'+ADw-!DOCTYPE rss +AFs-+ADw-!ENTITY a "aaa"+AD4-+AF0-+AD4-'),  # all of it
    ("cp037", '<!DOCTYPE rss [<!ENTITY a "aaa">]>'.encode("cp037")),  # EBCDIC
    ("UTF-8", b"<!DOCTYPE rss [ ]>"),  # an internal subset, even an empty one
])
def test_an_entity_declaration_is_refused_in_every_encoding(encoding, declaration):
    body = (f'<?xml version="1.0" encoding="{encoding}"?>'.encode() + declaration
            + b"<rss><channel><title>x</title></channel></rss>")
    with pytest.raises(HostileFeed):
        check_document(body, "application/rss+xml")


def test_an_external_doctype_without_a_subset_is_still_a_feed():
    body = (b'<?xml version="1.0"?><!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS '
            b'0.91//EN" "http://my.netscape.com/publish/formats/rss-0.91.dtd"><rss/>')
    assert check_document(body) == "rss"


def test_text_is_clipped_by_characters_and_utf8_bytes_keeping_its_start():
    cjk = "株価" * 5000
    clipped = clip(cjk, 16384, 32 * 1024)
    assert len(clipped.encode()) <= 32 * 1024 and cjk.startswith(clipped)
    assert clip("abc", 2, 100) == "ab"


def _ownership_entries(form: str) -> list[dict]:
    """EDGAR lists a Schedule 13D/G twice: the holder (Filed by) and the issuer (Subject),
    one accession number."""
    return [{"title": f"{form} - Vanmeer Asset Management LLC (0001098765) (Filed by)",
             "link": "https://www.sec.gov/Archives/edgar/data/1098765/000109876526000042/0001098765-26-000042-index.htm",
             "id": "urn:tag:sec.gov,2008:accession-number=0001098765-26-000042",
             "tags": [{"term": form}]},
            {"title": f"{form} - Acme Biosciences Inc (0001234567) (Subject)",
             "link": "https://www.sec.gov/Archives/edgar/data/1234567/000109876526000042/0001098765-26-000042-index.htm",
             "id": "urn:tag:sec.gov,2008:accession-number=0001098765-26-000042",
             "tags": [{"term": form}]}]


@pytest.mark.parametrize("form", ["SCHEDULE 13D", "SCHEDULE 13G/A", "SC 13D"])
def test_a_schedule_13d_alert_carries_the_subjects_tickers_and_names_the_holder(form):
    tickers = {"0001234567": ["ACMB"], "0001098765": ["VNMR"]}
    batch = build_items(_ownership_entries(form), source="sec-13d", kind="sec", now=time.time(),
                        freshness_s=86400, include_otc=False,
                        cik_tickers=lambda cik: tickers.get(cik, []))
    assert len(batch.items) == 1 and batch.merged == 1
    item = batch.items[0]
    assert item.key == "sec:0001098765-26-000042" and item.form == form
    assert item.tickers == ["ACMB"] and item.holder == "Vanmeer Asset Management LLC"
    assert "Acme Biosciences" in item.title and is_ownership_form(form)


def test_an_8k_keeps_the_filers_tickers_and_no_holder():
    entry = {"title": "8-K - Acme Biosciences Inc (0001234567) (Filer)",
             "link": "https://www.sec.gov/Archives/edgar/data/1234567/000123456726000001/0001234567-26-000001-index.htm",
             "id": "urn:tag:sec.gov,2008:accession-number=0001234567-26-000001",
             "summary": "<b>Filed:</b> 2026-11-30 <b>AccNo:</b> 0001234567-26-000001 <br>"
                        "Item 2.02: Results of Operations<br>Item 9.01: Financial Statements",
             "tags": [{"term": "8-K"}]}
    batch = build_items([entry], source="sec-8k", kind="sec", now=time.time(), freshness_s=86400,
                        include_otc=False, cik_tickers=lambda cik: ["ACMB"])
    item = batch.items[0]
    assert item.tickers == ["ACMB"] and item.holder is None
    assert "Item 2.02" in item.summary and "Item 9.01" in item.summary


def test_a_link_is_never_cut_and_only_an_insane_one_is_refused_and_named(server, make_fetcher):
    long_link = "https://wire.example/" + "p" * 5000
    insane = "https://wire.example/" + "q" * 9000
    server.route("/feed", Response(200, rss([release(1, link=long_link),
                                            release(2, link=insane)]).encode(), headers=RSS))
    fetcher, feeds = make_fetcher({"wire": "/feed"})
    (result,) = fetcher.fetch_cycle(feeds)
    assert [i.link for i in result.items] == [long_link]
    assert len(result.items[0].key) <= 1024
    stats = fetcher.stats()["feeds"]["wire"]
    assert stats["refused_total"] == 1 and "9021 characters" in stats["last_refused_reason"]


def test_check_config_warns_about_the_retired_sc_13d_codes_in_an_operators_config():
    from catalyst_config import config_from_dict, config_warnings
    url = "https://www.sec.gov/cgi-bin/browse-edgar?action=getcurrent&type={}&output=atom"
    cfg = config_from_dict({"sec_user_agent": "Desk ops@desk.test", "feeds": [
        {"name": "old-d", "kind": "sec", "url": url.format("SC%2013D")},
        {"name": "old-g", "kind": "sec", "url": url.format("SC+13G")},
        {"name": "new", "kind": "sec", "url": url.format("SCHEDULE%2013D")}]})
    warnings = config_warnings(cfg)
    assert [path for path, _ in warnings] == ["feeds[0].url", "feeds[1].url"]
    assert "SCHEDULE%2013G" in warnings[1][1]


def test_a_feed_spend_cap_must_name_a_feed_and_be_positive():
    from actors.errors import ConfigError
    from catalyst_config import config_from_dict
    feeds = [{"name": "wire", "kind": "pr", "url": "https://wire.example/rss"}]
    with pytest.raises(ConfigError, match="llm.feed_daily_budget_usd.nope"):
        config_from_dict({"feeds": feeds, "llm": {"feed_daily_budget_usd": {"nope": 1.0}}})
    with pytest.raises(ConfigError, match="must be >= 0"):
        config_from_dict({"feeds": feeds, "llm": {"feed_daily_budget_usd": {"wire": -1.0}}})
