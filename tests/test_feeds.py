"""FeedFetcher against loopback servers: conditional GET, hostile answers, EDGAR rules."""

from __future__ import annotations

import gzip
import json
import logging
import os
import time

import pytest

from actors import protocol
from actors.feeds.edgar import EDGAR_BACKOFF_S
from actors.feeds.http import MAX_REDIRECTS, PRODUCT_USER_AGENT
from catalyst_config import FeedConfig
from tests.hostile_server import Response, rss, sec_atom

pytestmark = pytest.mark.timeout(30)

from tests.conftest import FETCHER_UA as UA  # noqa: E402
RSS = {"Content-Type": "application/rss+xml; charset=utf-8"}
ATOM = {"Content-Type": "application/atom+xml"}
RATE_PAGE = (b"<!DOCTYPE html><html><head><title>SEC.gov | Request Rate Threshold Exceeded</title></head>"
             b"<body><h1>Your Request Originates from an Undeclared Automated Tool</h1>"
             b"<p>Request Rate Threshold Exceeded</p></body></html>")


def wait_until(condition, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(interval)


def release(n: int, **extra) -> dict:
    return dict({"title": f"Acme Corp announces milestone number {n} today",
                 "link": f"https://wire.example/news/{n}", "published": time.time() - 60}, **extra)


def feed_body(count=3) -> bytes:
    return rss([release(i) for i in range(count)]).encode()


def one(fetcher, feeds):
    (result,) = fetcher.fetch_cycle(feeds)
    return result


# Conditional GET ----------------------------------------------------------------------

def test_second_poll_sends_validators_and_a_304_costs_no_parse(server, make_fetcher, monkeypatch):
    def answer(seen):
        if seen.headers.get("if-none-match") == '"v1"':
            return Response(304, headers={"ETag": '"v1"'})
        return Response(200, feed_body(3), headers={**RSS, "ETag": '"v1"',
                                                     "Last-Modified": "Fri, 02 Jan 2026 12:00:00 GMT"})
    server.route("/feed", answer)
    fetcher, feeds = make_fetcher({"wire": "/feed"})
    first = one(fetcher, feeds)
    assert first.status == "ok" and len(first.items) == 3 and first.http_status == 200

    import actors.feeds.fetch
    parses = []
    monkeypatch.setattr(actors.feeds.fetch, "parse_document", lambda *a: parses.append(a))
    second = one(fetcher, feeds)
    assert second.status == "not_modified" and second.items == [] and parses == []
    sent = server.requests("/feed")[-1].headers
    assert sent["if-none-match"] == '"v1"'
    assert sent["if-modified-since"] == "Fri, 02 Jan 2026 12:00:00 GMT"
    assert fetcher.stats()["feeds"]["wire"]["counts"] == {"ok": 1, "not_modified": 1, "error": 0, "skipped": 0}


def test_an_empty_etag_is_never_sent_back(server, make_fetcher):
    server.route("/feed", Response(200, feed_body(1), headers={**RSS, "ETag": ""}))
    fetcher, feeds = make_fetcher({"wire": "/feed"})
    assert one(fetcher, feeds).status == "ok"
    assert one(fetcher, feeds).status == "ok"
    assert "if-none-match" not in server.requests("/feed")[-1].headers


def test_user_agents_and_accept_encoding(server, make_fetcher):
    server.route("/pr", Response(200, feed_body(1), headers=RSS))
    server.route("/sec", Response(200, sec_atom([]).encode(), headers=ATOM))
    server.route("/company_tickers.json", Response(200, b'{"0": {"cik_str": 1, "ticker": "A", "title": "A"}}'))
    fetcher, feeds = make_fetcher([("pr", "/pr", "pr"), ("sec", "/sec", "sec")])
    assert [r.status for r in fetcher.fetch_cycle(feeds)] == ["ok", "ok"]
    assert server.requests("/pr")[0].headers["user-agent"] == PRODUCT_USER_AGENT
    assert server.requests("/sec")[0].headers["user-agent"] == UA
    assert server.requests("/company_tickers.json")[0].headers["user-agent"] == UA
    assert server.requests("/pr")[0].headers["accept-encoding"] == "gzip, deflate"


def test_a_gzip_feed_is_read_and_a_gzip_bomb_stops_at_the_cap(server, make_fetcher):
    server.route("/gz", Response(200, gzip.compress(feed_body(2)), headers={**RSS, "Content-Encoding": "gzip"}))
    server.route("/bomb", Response(200, gzip.compress(b"<rss>" + b" " * 20_000_000),
                                   headers={**RSS, "Content-Encoding": "gzip"}))
    fetcher, feeds = make_fetcher({"gz": "/gz", "bomb": "/bomb"}, max_bytes=100_000)
    gz, bomb = fetcher.fetch_cycle(feeds)
    assert gz.status == "ok" and len(gz.items) == 2
    assert bomb.status == "error" and "cap" in bomb.error


# Slow, big and endless answers --------------------------------------------------------

def test_a_server_slower_than_the_read_timeout_fails_fast(server, make_fetcher):
    server.route("/slow", Response(200, feed_body(), headers=RSS, delay_s=5))
    fetcher, feeds = make_fetcher({"slow": "/slow"}, read_timeout_s=0.3)
    started = time.monotonic()
    result = one(fetcher, feeds)
    assert result.status == "error" and "timed out" in result.error
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_the_cap_is_refused(server, make_fetcher, declared):
    big = rss([release(i, description="x" * 1000) for i in range(50)]).encode()
    server.route("/big", Response(200, big, headers=RSS, content_length=declared))
    fetcher, feeds = make_fetcher({"big": "/big"}, max_bytes=10_000)
    result = one(fetcher, feeds)
    assert result.status == "error" and "cap" in result.error and result.items == []


@pytest.mark.parametrize("where", ["body", "headers"])
def test_an_endless_trickle_is_cut_by_the_wall_deadline(server, make_fetcher, where):
    # One byte every 50 ms never trips a 0.4 s read timeout; only the deadline ends it.
    response = Response(200, b'<?xml version="1.0"?><rss version="2.0"><channel>', headers=RSS,
                        trickle=b" ", trickle_interval_s=0.05, trickle_headers=where == "headers")
    server.route("/trickle", response)
    fetcher, feeds = make_fetcher({"trickle": "/trickle"}, connect_timeout_s=0.2, read_timeout_s=0.4)
    started = time.monotonic()
    result = one(fetcher, feeds)
    elapsed = time.monotonic() - started
    assert result.status == "error" and "deadline" in result.error
    assert 0.9 < elapsed < 2.5  # deadline = 0.2 + 2 * 0.4 s


def test_an_entity_bomb_is_refused_quickly(server, make_fetcher):
    lol = b'<!ENTITY l0 "lol">' + b"".join(
        b'<!ENTITY l%d "%s">' % (i, b"&l%d;" % (i - 1) * 10) for i in range(1, 12))
    bomb = b'<?xml version="1.0"?><!DOCTYPE rss [' + lol + b']><rss version="2.0"><channel><title>&l11;</title></channel></rss>'
    assert bomb.count(b"\n") == 0
    server.route("/bomb", Response(200, bomb, headers=RSS))
    fetcher, feeds = make_fetcher({"bomb": "/bomb"})
    started = time.monotonic()
    result = one(fetcher, feeds)
    assert result.status == "error" and "entities" in result.error
    assert time.monotonic() - started < 1.0


# Not a feed ---------------------------------------------------------------------------

def test_html_instead_of_a_feed_is_a_failure_the_breaker_counts(server, make_fetcher):
    server.route("/html", Response(200, b"<!doctype html><html><body>Login</body></html>",
                                   headers={"Content-Type": "text/html"}))
    fetcher, feeds = make_fetcher({"html": "/html"})
    result = one(fetcher, feeds)
    assert result.status == "error" and "HTML" in result.error and "text/html" in result.error
    assert fetcher.stats()["feeds"]["html"]["breaker"]["consecutive_failures"] == 1


def test_an_empty_200_is_a_failure_not_no_news(server, make_fetcher):
    server.route("/empty", Response(200, b"", headers=RSS))
    fetcher, feeds = make_fetcher({"empty": "/empty"})
    result = one(fetcher, feeds)
    assert result.status == "error" and "empty" in result.error


def test_a_redirect_loop_is_an_error_not_a_hang(server, make_fetcher):
    server.route("/loop", Response(302, b"", headers={"Location": "/loop"}))
    fetcher, feeds = make_fetcher({"loop": "/loop"})
    started = time.monotonic()
    result = one(fetcher, feeds)
    assert result.status == "error" and "redirect" in result.error
    assert len(server.requests("/loop")) <= MAX_REDIRECTS + 1
    assert time.monotonic() - started < 2.0


def test_a_redirect_is_followed_without_reading_its_body(server, make_fetcher):
    server.route("/old", Response(301, b"x" * 20_000_000, headers={"Location": "/new"}))
    server.route("/new", Response(200, feed_body(2), headers=RSS))
    fetcher, feeds = make_fetcher({"moved": "/old"})
    result = one(fetcher, feeds)
    assert result.status == "ok" and len(result.items) == 2 and result.bytes_read < 100_000


def test_http_errors_are_failures(server, make_fetcher):
    server.route("/gone", Response(503, b"busy"))
    fetcher, feeds = make_fetcher({"gone": "/gone"})
    result = one(fetcher, feeds)
    assert (result.status, result.error, result.http_status) == ("error", "HTTP 503", 503)


# Breakers -----------------------------------------------------------------------------

def test_the_breaker_opens_then_a_half_open_trial_recovers(server, make_fetcher):
    broken = Response(200, b"<html>down for maintenance</html>", headers={"Content-Type": "text/html"})
    server.route("/f", broken)
    fetcher, feeds = make_fetcher({"f": "/f"}, breaker_failures=2, breaker_backoff_initial_s=0.2,
                                  breaker_backoff_max_s=0.3)
    assert [one(fetcher, feeds).status for _ in range(2)] == ["error", "error"]
    assert fetcher.stats()["feeds"]["f"]["breaker"]["state"] == "open"
    asked = len(server.requests("/f"))
    assert one(fetcher, feeds).status == "skipped"
    assert len(server.requests("/f")) == asked  # an open breaker sends nothing

    # The half-open trial fails: open again, for longer.
    trial = wait_until(lambda: (lambda r: r if r.status != "skipped" else None)(one(fetcher, feeds)))
    assert trial.status == "error"
    breaker = fetcher.stats()["feeds"]["f"]["breaker"]
    assert breaker["state"] == "open" and breaker["backoff_s"] == 0.3 and breaker["opened"] == 2

    server.route("/f", Response(200, feed_body(2), headers=RSS))
    result = wait_until(lambda: (lambda r: r if r.status != "skipped" else None)(one(fetcher, feeds)))
    assert result.status == "ok" and len(result.items) == 2
    assert fetcher.stats()["feeds"]["f"]["breaker"]["state"] == "closed"


# EDGAR ----------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [403, 200])
def test_the_edgar_rate_threshold_page_backs_off_all_of_edgar(server, make_fetcher, status):
    server.route("/sec-8k", Response(status, RATE_PAGE, headers={"Content-Type": "text/html"}))
    server.route("/sec-4", Response(200, sec_atom([]).encode(), headers=ATOM))
    server.route("/company_tickers.json", Response(200, b'{"0": {"cik_str": 1, "ticker": "A", "title": "A"}}'))
    server.route("/pr", Response(200, feed_body(1), headers=RSS))
    fetcher, feeds = make_fetcher([("sec-8k", "/sec-8k", "sec")], breaker_failures=1)
    result = one(fetcher, feeds)
    assert result.status == "error" and "rate threshold" in result.error
    edgar = fetcher.stats()["edgar"]
    assert edgar["rate_limited"] == 1 and edgar["backoff_remaining_s"] > EDGAR_BACKOFF_S - 5
    assert fetcher.stats()["feeds"]["sec-8k"]["breaker"]["state"] == "closed"  # the host's fault

    more = feeds + [FeedConfig("sec-4", server.url("/sec-4"), "sec"), FeedConfig("pr", server.url("/pr"), "pr")]
    statuses = [r.status for r in fetcher.fetch_cycle(more)]
    assert statuses == ["skipped", "skipped", "ok"]
    assert server.requests("/sec-4") == [] and len(server.requests("/sec-8k")) == 1


def test_the_edgar_request_rate_stays_under_the_limit_across_a_burst(server, make_fetcher):
    names = [f"sec-{i}" for i in range(10)]
    for name in names:
        server.route(f"/{name}", Response(200, sec_atom([]).encode(), headers=ATOM))
    server.route("/company_tickers.json", Response(200, b'{"0": {"cik_str": 1, "ticker": "A", "title": "A"}}'))
    # Two fetcher instances share 10 rps: this one may send 5 a second.
    fetcher, feeds = make_fetcher([(n, f"/{n}", "sec") for n in names], instances=2, edgar_max_rps=10)
    assert {r.status for r in fetcher.fetch_cycle(feeds)} == {"ok"}
    times = sorted(s.at for s in server.requests())
    assert len(times) == 11  # the CIK map is an EDGAR request too
    limit = 5
    # Arrival times wobble around the client's pacing (connection set-up, a busy CI host):
    # paced at exactly the limit, jitter alone put limit + 1 arrivals within one second.
    # The pacing margin absorbs it: no window of 1 s ever holds more than the limit.
    for i in range(len(times) - limit):
        assert times[i + limit] - times[i] >= 1.0, f"more than {limit} EDGAR requests within 1 s"
    assert times[-1] - times[0] >= (len(times) - 1) / limit
    assert fetcher.stats()["edgar"]["requests"] == 11


# CIK map -----------------------------------------------------------------------------

def _company_tickers() -> bytes:
    return json.dumps({"0": {"cik_str": 1779981, "ticker": "ACMB", "title": "Acme Bio Inc"},
                       "1": {"cik_str": 1779981, "ticker": "ACMBW", "title": "Acme Bio Inc"},
                       "2": {"cik_str": 320193, "ticker": "AAPL", "title": "Apple Inc."}}).encode()


def test_filing_tickers_come_from_the_cik_map_cached_on_disk(server, make_fetcher, tmp_path):
    now = time.time()
    server.route("/company_tickers.json", Response(200, _company_tickers(), headers={"Content-Type": "application/json"}))
    server.route("/sec", Response(200, sec_atom([{"form": "8-K", "company": "ACME BIO INC", "cik": 1779981,
                                                  "accession": "0001779981-26-000001", "updated": now}]).encode(),
                                  headers=ATOM))
    fetcher, feeds = make_fetcher([("sec", "/sec", "sec")])
    item = one(fetcher, feeds).items[0]
    assert item.tickers == ["ACMB", "ACMBW"] and item.cik == "0001779981" and item.form == "8-K"
    cache = tmp_path / "data" / "company_tickers.json"
    assert json.loads(cache.read_bytes())["2"]["ticker"] == "AAPL"
    assert len(server.requests("/company_tickers.json")) == 1

    # A new fetcher (a restarted actor) uses the fresh disk copy.
    fetcher2, _ = make_fetcher([("sec", "/sec", "sec")])
    assert one(fetcher2, feeds).items[0].tickers == ["ACMB", "ACMBW"]
    assert len(server.requests("/company_tickers.json")) == 1

    # Stale and the refresh fails: the old map stays in use and on disk.
    old = time.time() - 30 * 86400
    os.utime(cache, (old, old))
    server.route("/company_tickers.json", Response(500, b"oops"))
    fetcher3, _ = make_fetcher([("sec", "/sec", "sec")])
    assert one(fetcher3, feeds).items[0].tickers == ["ACMB", "ACMBW"]
    assert len(server.requests("/company_tickers.json")) == 2
    assert json.loads(cache.read_bytes())["0"]["ticker"] == "ACMB"
    assert "HTTP 500" in fetcher3.stats()["cik_map"]["last_error"]

    # Stale and the refresh works: the new map replaces it.
    server.route("/company_tickers.json", Response(200, b'{"0": {"cik_str": 1779981, "ticker": "NEWT", "title": "x"}}'))
    fetcher4, _ = make_fetcher([("sec", "/sec", "sec")])
    assert one(fetcher4, feeds).items[0].tickers == ["NEWT"]


def test_sec_role_duplicates_collapse_and_an_amendment_has_its_own_key(server, make_fetcher):
    now = time.time()
    server.route("/company_tickers.json", Response(200, _company_tickers()))
    server.route("/sec", Response(200, sec_atom([
        {"form": "8-K", "company": "ACME BIO INC", "cik": 1779981, "role": "Filer", "accession": "0001779981-26-000001", "updated": now},
        {"form": "8-K/A", "company": "ACME BIO INC", "cik": 1779981, "role": "Filer", "accession": "0001779981-26-000002", "updated": now},
        {"form": "4", "company": "Doe John", "cik": 1999999, "role": "Reporting", "accession": "0001999999-26-000009", "updated": now},
        {"form": "4", "company": "ACME BIO INC", "cik": 1779981, "role": "Issuer", "accession": "0001999999-26-000009", "updated": now},
    ]).encode(), headers=ATOM))
    fetcher, feeds = make_fetcher([("sec", "/sec", "sec")])
    items = one(fetcher, feeds).items
    assert [(i.key, i.form) for i in items] == [("sec:0001779981-26-000001", "8-K"),
                                                 ("sec:0001779981-26-000002", "8-K/A"),
                                                 ("sec:0001999999-26-000009", "4")]
    assert items[2].cik == "0001779981" and items[2].tickers == ["ACMB", "ACMBW"]


# Press releases ------------------------------------------------------------------------

def test_cross_wire_copies_share_a_signature_but_not_a_key(server, make_fetcher):
    title = "Acme Bio Announces FDA Approval of ACM-101 for Rare Disease"
    server.route("/gnw", Response(200, rss([{"title": title + " - GlobeNewswire", "published": time.time(),
                                             "link": "https://www.globenewswire.com/news-release/2026/1/2/1/0/en/acme.html",
                                             "description": "Acme Bio, Inc. (NASDAQ: ACMB) today announced"}]).encode(),
                                  headers=RSS))
    server.route("/bw", Response(200, rss([{"title": title.upper(), "published": time.time(),
                                            "link": "https://www.businesswire.com/news/home/1/en/?feedref=abc",
                                            "description": "BOSTON--(BUSINESS WIRE)--Acme Bio (Nasdaq: ACMB)"}]).encode(),
                                 headers=RSS))
    fetcher, feeds = make_fetcher({"gnw": "/gnw", "bw": "/bw"})
    gnw, bw = (r.items[0] for r in fetcher.fetch_cycle(feeds))
    assert gnw.signature == bw.signature == "ACMB|acme bio announces fda approval of acm 101 for rare disease"
    assert gnw.key != bw.key and bw.key == "https://www.businesswire.com/news/home/1/en"
    assert gnw.tickers == bw.tickers == ["ACMB"]


def test_tracking_parameters_are_removed_from_keys(server, make_fetcher):
    link = "http://Wire.Example:80/news/1/?utm_source=rss&utm_campaign=x&fbclid=y&id=7#section"
    server.route("/feed", Response(200, rss([release(1, link=link)]).encode(), headers=RSS))
    fetcher, feeds = make_fetcher({"wire": "/feed"})
    item = one(fetcher, feeds).items[0]
    assert item.key == "https://wire.example/news/1?id=7"
    assert item.link == link.strip()


def test_items_pass_protocol_validation_and_stats_are_json(server, make_fetcher, caplog):
    hostile = rss([release(1, title="T" * 9000, description="<b>" + "d" * 90_000 + "</b> (NASDAQ: ACMB)",
                           link="https://wire.example/" + "p" * 3000)]).encode()
    server.route("/feed", Response(200, hostile, headers=RSS))
    fetcher, feeds = make_fetcher({"wire": "/feed"})
    with caplog.at_level(logging.INFO, logger="catalyst.fetcher"):
        result = one(fetcher, feeds)
    message = protocol.Claim(req_id=1, items=result.items)
    decoded = protocol.Codec(protocol.Claim).decode(protocol.encode(message))
    # A link is never cut: a 3,000-character one arrives whole, keyed by a hash of its form.
    assert len(decoded.items) == 1 and decoded.items[0].link == "https://wire.example/" + "p" * 3000
    assert len(decoded.items[0].key) <= 1024
    stats = json.loads(json.dumps(fetcher.stats()))
    assert stats["feeds"]["wire"]["last_status"] == "ok" and stats["feeds"]["wire"]["last_elapsed_s"] > 0
    assert any("feed wire: ok" in r.getMessage() for r in caplog.records)


def test_a_cycle_of_many_feeds_runs_concurrently(server, make_fetcher):
    for i in range(12):
        server.route(f"/f{i}", Response(200, feed_body(2), headers=RSS, delay_s=0.3))
    fetcher, feeds = make_fetcher({f"f{i}": f"/f{i}" for i in range(12)}, max_workers=16)
    started = time.monotonic()
    results = fetcher.fetch_cycle(feeds)
    assert [r.feed for r in results] == [f"f{i}" for i in range(12)]
    assert all(r.status == "ok" and len(r.items) == 2 for r in results)
    assert time.monotonic() - started < 1.5  # 12 x 0.3 s sequentially would be 3.6 s


def test_wrong_and_mixed_encodings_do_not_crash_and_read_right(server, make_fetcher):
    title = "Société Générale “signs” café deal – Zürich"
    doc = rss([{"title": title, "link": "https://wire.example/1", "published": time.time()}])
    server.route("/latin1", Response(200, doc.encode("latin-1", "replace"),
                                     headers={"Content-Type": "application/rss+xml; charset=utf-8"}))
    server.route("/bom", Response(200, b"\xef\xbb\xbf" + doc.encode(), headers=RSS))
    server.route("/cp1252", Response(200, doc.replace("UTF-8", "windows-1252").encode("cp1252"),
                                     headers={"Content-Type": "text/xml; charset=windows-1252"}))
    mixed = doc.encode().replace("Zürich".encode(), "Zürich".encode("latin-1"))
    server.route("/mixed", Response(200, mixed, headers=RSS))
    fetcher, feeds = make_fetcher({"latin1": "/latin1", "bom": "/bom", "cp1252": "/cp1252", "mixed": "/mixed"})
    results = {r.feed: r for r in fetcher.fetch_cycle(feeds)}
    assert {name: r.status for name, r in results.items()} == dict.fromkeys(results, "ok")
    assert results["latin1"].items[0].title == title.encode("latin-1", "replace").decode("latin-1")
    for name in ("bom", "cp1252", "mixed"):
        assert results[name].items[0].title == title, name


def test_a_bug_on_one_feed_costs_only_that_feed(server, make_fetcher, monkeypatch):
    import actors.feeds.fetch
    real = actors.feeds.fetch.build_items

    def flaky(entries, **kw):
        if kw["source"] == "bad":
            raise RuntimeError("parser bug")
        return real(entries, **kw)
    monkeypatch.setattr(actors.feeds.fetch, "build_items", flaky)
    server.route("/feed", Response(200, feed_body(2), headers=RSS))
    fetcher, feeds = make_fetcher({"bad": "/feed", "good": "/feed"})
    bad, good = fetcher.fetch_cycle(feeds)
    assert bad.status == "error" and "parser bug" in bad.error
    assert good.status == "ok" and len(good.items) == 2
