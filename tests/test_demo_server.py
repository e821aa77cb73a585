"""The demo feed server: fresh-looking feeds that grow and repeat, sane prices, clean stop."""

from __future__ import annotations

import calendar
import re
import socket
import time
from collections import defaultdict

import feedparser
import pytest
import requests

from supervisor.demo_server import DemoFeedServer, DemoPrices, visible_items

TIMEOUT = (2.0, 5.0)
FRESH_S = 3 * 3600
TICKER = re.compile(r"\((?:NASDAQ|NYSE American|NYSE|TSXV): ([A-Z]{1,5})\)")


@pytest.fixture(scope="module")
def server():
    with DemoFeedServer() as running:
        yield running


def parse(url: str) -> feedparser.FeedParserDict:
    response = requests.get(url, timeout=TIMEOUT)
    response.raise_for_status()
    parsed = feedparser.parse(response.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    return parsed


def entry_ids(parsed) -> list[str]:
    return [e.get("id") or e.link for e in parsed.entries]


def feed_url(server: DemoFeedServer, name: str) -> str:
    return next(f["url"] for f in server.feeds() if f["name"] == name)


def test_config_entries_name_every_feed_with_its_kind(server):
    feeds = server.feeds()
    kinds = {f["name"]: f["kind"] for f in feeds}
    assert {"globenewswire", "prnewswire", "businesswire", "accesswire"} <= set(kinds)
    assert {"edgar-8k", "edgar-424b5", "edgar-fwp", "edgar-13d", "edgar-13g"} <= set(kinds)
    assert all(kinds[n] == ("sec" if n.startswith("edgar") else "pr") for n in kinds)
    assert all(f["url"].startswith(server.base_url + "/feeds/") for f in feeds)
    assert server.price_url == server.base_url + "/prices/{ticker}.json"
    assert server.base_url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("name", ["globenewswire", "accesswire", "edgar-8k", "edgar-13g"])
def test_repeated_polls_repeat_earlier_items_and_add_new_ones(name):
    with DemoFeedServer() as server:
        url = feed_url(server, name)
        polls = [entry_ids(parse(url)) for _ in range(5)]
        assert server.polls[name] == 5
    total = len(polls[-1])
    assert 0.5 * total <= len(polls[0]) < total
    for earlier, later in zip(polls, polls[1:]):
        assert set(earlier) <= set(later), "a later poll dropped an item"
        assert len(later) >= len(earlier)
    assert len(polls[1]) > len(polls[0]), "the second poll brought nothing new"
    assert polls[3] == polls[4], "the feed keeps its full list once everything is revealed"
    # newest first: what appears later is newer than what was already there
    assert polls[1][-len(polls[0]):] == polls[0]


def test_reveal_schedule():
    assert [visible_items(10, k, 0.6, 0.2) for k in (1, 2, 3, 4)] == [6, 8, 10, 10]
    assert [visible_items(3, k, 0.6, 0.2) for k in (1, 2, 3)] == [2, 3, 3]
    assert visible_items(7, 9, 1.0, 0.0) == 7


def test_every_feed_date_is_fresh(server):
    now = time.time()
    for feed in server.feeds():
        parsed = parse(feed["url"])
        assert parsed.entries, feed["name"]
        for entry in parsed.entries:
            stamp = entry.get("published_parsed") or entry.get("updated_parsed")
            assert stamp is not None, (feed["name"], entry.title)
            age = now - calendar.timegm(stamp)
            assert -60 <= age <= FRESH_S, (feed["name"], entry.title, age)


def test_feeds_have_their_content_types(server):
    for feed in server.feeds():
        response = requests.get(feed["url"], timeout=TIMEOUT)
        media = "application/rss+xml" if feed["kind"] == "pr" else "application/atom+xml"
        assert response.headers["Content-Type"].startswith(media)
        assert "{{" not in response.text, "an unfilled date placeholder"


def test_wire_releases_carry_exchange_tickers_and_some_cross_wires(server):
    titles = defaultdict(set)
    links = defaultdict(set)
    for feed in server.feeds():
        if feed["kind"] != "pr":
            continue
        for entry in parse(feed["url"]).entries:
            titles[entry.title].add(feed["name"])
            links[entry.title].add(entry.link)
            assert entry.get("id") and entry.get("summary"), entry.title
    cross_wire = [t for t, wires in titles.items() if len(wires) == 2]
    assert len(cross_wire) >= 4
    assert all(len(links[t]) == 2 for t in cross_wire), "a cross-wire copy has its own URL"
    assert any("utm_source=rss" in link for ls in links.values() for link in ls)


def test_edgar_feeds_look_like_getcurrent(server):
    title = re.compile(r"^(\S+(?: \S+)?) - .+ \((\d{10})\) \((Filer|Subject|Filed by)\)$")
    accession = re.compile(r"^urn:tag:sec\.gov,2008:accession-number=(\d{10}-\d{2}-\d{6})$")
    forms, per_accession = set(), defaultdict(list)
    for feed in server.feeds():
        if feed["kind"] != "sec":
            continue
        for entry in parse(feed["url"]).entries:
            match = title.match(entry.title)
            assert match, entry.title
            acc = accession.match(entry.id)
            assert acc, entry.id
            assert entry.tags[0]["term"] == match.group(1)
            assert entry.link.endswith(f"/{acc.group(1)}-index.htm")
            assert f"AccNo:</b> {acc.group(1)}" in entry.summary
            forms.add(match.group(1))
            per_accession[acc.group(1)].append(match.group(3))
    assert {"8-K", "8-K/A", "424B5", "FWP", "SCHEDULE 13D", "SCHEDULE 13G"} <= forms
    pairs = [roles for roles in per_accession.values() if len(roles) == 2]
    assert len(pairs) >= 5
    assert all(sorted(roles) == ["Filed by", "Subject"] for roles in pairs)


def test_prices_are_one_minute_bars_ending_now(server):
    response = requests.get(server.price_url.format(ticker="ACMB"), timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    data = response.json()
    assert data["ticker"] == "ACMB" and data["previous_close"] > 0
    bars = data["bars"]
    assert len(bars) == 390
    times = [b["t"] for b in bars]
    assert all(b - a == 60 for a, b in zip(times, times[1:]))
    assert 0 <= time.time() - times[-1] < 120
    for bar in bars:
        assert bar["l"] <= min(bar["o"], bar["c"]) <= max(bar["o"], bar["c"]) <= bar["h"]
        assert bar["l"] > 0 and bar["v"] >= 0


def test_prices_are_deterministic_per_ticker():
    prices = DemoPrices()
    now = 1_795_000_000.0
    assert prices.payload("ACMB", now) == prices.payload("acmb", now)
    assert prices.payload("ACMB", now)["bars"] != prices.payload("ARDR", now)["bars"]


def test_most_wire_tickers_have_prices(server):
    tickers = set()
    for feed in server.feeds():
        if feed["kind"] == "pr":
            for entry in parse(feed["url"]).entries:
                tickers.update(TICKER.findall(entry.title + " " + entry.summary))
    priced = [t for t in tickers if requests.get(server.price_url.format(ticker=t),
                                                 timeout=TIMEOUT).status_code == 200]
    assert len(tickers) >= 30
    assert len(priced) >= 0.9 * len(tickers)


def test_unknown_ticker_and_unknown_path_are_404(server):
    assert requests.get(server.price_url.format(ticker="NOPE"), timeout=TIMEOUT).status_code == 404
    for path in ("/", "/feeds/nope.xml", "/feeds/prices.json", "/prices/ACMB.xml", "/prices/"):
        assert requests.get(server.base_url + path, timeout=TIMEOUT).status_code == 404, path


def test_company_tickers_map_ciks_to_tickers(server):
    rows = requests.get(server.company_tickers_url, timeout=TIMEOUT).json().values()
    by_ticker = {row["ticker"]: row["cik_str"] for row in rows}
    assert by_ticker["ACMB"] == 1234567


def test_server_stops_within_deadline_and_frees_its_port():
    server = DemoFeedServer().start()
    port = server.port
    session = requests.Session()  # a keep-alive connection must not hold the stop up
    assert session.get(feed_url(server, "prnewswire"), timeout=TIMEOUT).status_code == 200
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    session.close()
