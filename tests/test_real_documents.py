"""Real feed documents through the product's own parsing, keys, tickers, dedupe and fetcher.

The documents in tests/data/real/ are captures of live EDGAR and GlobeNewswire answers
that others published in public repositories; they are kept unchanged, and PROVENANCE.md
says where each comes from and what it is. Synthetic fixtures only ever showed the
product what their author expected (they used the retired "SC 13D" form names, and so
never noticed that those feeds are empty); these show it what the wire really sends.

Expected values are read from each document with xml.etree (not with feedparser, which
the product uses), so a test compares the product's reading with an independent one.

Freshness: every capture is older than the freshness window (fetch.freshness_pr_s and
fetch.freshness_sec_s, product defaults), so build_items is given `now` a minute after
the capture's own timestamp (the poll that would have fetched it). The loopback fetch
path reads the wall clock itself, so there the freshness windows are configured wide
enough to reach back to the capture; no clock is patched.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from actors.feeds.fetch import FeedFetcher
from actors.feeds.items import ItemBatch, build_items
from actors.feeds.parse import parse_document
from actors.protocol import Item
from actors.seen_store import SqliteSeenStore
from catalyst_config import SqliteConfig, config_from_dict
from tests.hostile_server import HostileServer, Response

pytestmark = pytest.mark.timeout(60)

DATA = Path(__file__).parent / "data" / "real"
ATOM = "{http://www.w3.org/2005/Atom}"
UA = "Catalyst Test Desk ops@example.com"
DEFAULTS = config_from_dict({}).fetch  # the shipped freshness windows and OTC setting
POLL_AFTER_CAPTURE_S = 60.0  # the poll that fetched a capture ran about this long after it


@dataclass(frozen=True)
class Capture:
    """One real document: its file, feed kind, how it was served and when."""

    file: str
    kind: str  # "pr" or "sec", as in FeedConfig.kind
    content_type: str
    captured: str  # UTC, from the document's own timestamp (feed <updated>, lastBuildDate)

    @property
    def body(self) -> bytes:
        return (DATA / self.file).read_bytes()

    @property
    def captured_at(self) -> float:
        return float(calendar.timegm(time.strptime(self.captured, "%Y-%m-%dT%H:%M:%SZ")))

    def __str__(self) -> str:
        return self.file


GLOBENEWSWIRE = Capture("globenewswire_public_companies_2026-07-10.rss", "pr",
                        "application/rss+xml; charset=utf-8", "2026-07-10T21:26:00Z")
EDGAR_8K = Capture("edgar_getcurrent_8k_2026-09-23.atom", "sec",
                   "application/atom+xml", "2026-09-23T17:55:59Z")
EDGAR_13D = Capture("edgar_getcurrent_schedule13d_2026-08-16.atom", "sec",
                    "application/atom+xml", "2026-08-16T16:41:35Z")
EDGAR_SC13D_EMPTY = Capture("edgar_getcurrent_sc13d_empty_2026-08-16.atom", "sec",
                            "application/atom+xml", "2026-08-16T16:41:15Z")
EDGAR_10K_2016 = Capture("edgar_getcurrent_10k_2016-02-25.atom", "sec",
                         "application/atom+xml", "2016-02-25T23:54:17Z")
ALL = [GLOBENEWSWIRE, EDGAR_8K, EDGAR_13D, EDGAR_SC13D_EMPTY, EDGAR_10K_2016]
EDGAR = [EDGAR_8K, EDGAR_13D, EDGAR_SC13D_EMPTY, EDGAR_10K_2016]
WITH_ENTRIES = [c for c in ALL if c is not EDGAR_SC13D_EMPTY]


# sha256 of each document as PROVENANCE.md records it: an editor that strips the
# GlobeNewswire capture's CRLFs, or a checkout that converts line ends, is caught here.
SHA256 = {
    GLOBENEWSWIRE: "9265e483a67ca024e59809f83cd258f5545de381b828dc5deaec2822b39681c1",
    EDGAR_8K: "66b7eee7868e6a99056c0352d66a63d7afb6a3944ff1818029e437d07b896bc7",
    EDGAR_13D: "50130a0a7788f3b39f9c69b41a0e24e8511d8e4c0534467f4dd85ab212c223fb",
    EDGAR_SC13D_EMPTY: "2ec970c27a0c89b9b4ad02ec58604cef780c493b060f595a2d1846595cba504b",
    EDGAR_10K_2016: "b6da18e49ebb1f30f89230165c6f7340df56032b431f6bbc5bdd26f884572a1c",
}


def symbol_for(cik: str) -> str:
    """The symbol our CIK map gives a company in these tests: made up and visibly so
    ("C" + the CIK), so an alert's tickers say whose they are."""
    return f"C{int(cik)}"


def cik_tickers(cik: str) -> list[str]:
    return [symbol_for(cik)]


def build(capture: Capture, *, now: float | None = None, include_otc: bool = False) -> ItemBatch:
    """What the fetcher builds from this document, the way fetch.py calls the parsers."""
    parsed = parse_document(capture.body, capture.content_type, f"https://feed.test/{capture.file}")
    freshness = DEFAULTS.freshness_sec_s if capture.kind == "sec" else DEFAULTS.freshness_pr_s
    return build_items(parsed.entries, source=capture.file, kind=capture.kind,
                       now=capture.captured_at + POLL_AFTER_CAPTURE_S if now is None else now,
                       freshness_s=freshness, include_otc=include_otc, cik_tickers=cik_tickers)


# The documents read independently of the product -----------------------------------


@dataclass
class Raw:
    """One entry as the document itself spells it."""

    title: str
    link: str
    published: float
    accession: str | None = None  # EDGAR
    form: str | None = None  # EDGAR <category term>
    cik: str | None = None  # EDGAR, 10 digits
    company: str | None = None  # EDGAR
    role: str | None = None  # EDGAR: Filer, Filed by, Subject, ...
    stocks: tuple[str, ...] = ()  # GlobeNewswire <category domain=".../rss/stock">


def raw_entries(capture: Capture) -> list[Raw]:
    """The document's entries, read with xml.etree and the feed formats' own rules."""
    root = ET.fromstring(capture.body)
    if capture.kind == "pr":
        out = []
        for item in root.find("channel").findall("item"):
            stocks = tuple(c.text.split(":", 1)[-1] for c in item.findall("category")
                           if c.get("domain", "").endswith("/rss/stock"))
            out.append(Raw(title=item.findtext("title"), link=item.findtext("link"),
                           published=parsedate_to_datetime(item.findtext("pubDate")).timestamp(),
                           stocks=stocks))
        return out
    out = []
    for entry in root.findall(ATOM + "entry"):
        title = entry.findtext(ATOM + "title")
        # "SCHEDULE 13D/A - Better Home & Finance Holding Co (0001835856) (Subject)"
        form_part, rest = title.split(" - ", 1)
        company, cik_part, role_part = rest.rsplit(" (", 2)
        out.append(Raw(title=title, link=entry.find(ATOM + "link").get("href"),
                       published=datetime.fromisoformat(entry.findtext(ATOM + "updated")).timestamp(),
                       accession=entry.findtext(ATOM + "id").rsplit("=", 1)[1],
                       form=entry.find(ATOM + "category").get("term"),
                       cik=cik_part.rstrip(")"), company=company, role=role_part.rstrip(")")))
    return out


def by_key(items: list[Item]) -> dict[str, Item]:
    keyed = {item.key: item for item in items}
    assert len(keyed) == len(items), "two items share a key"
    return keyed


# Items, keys, titles, links ----------------------------------------------------------


@pytest.mark.parametrize("capture", ALL, ids=str)
def test_the_real_documents_are_kept_byte_for_byte(capture):
    assert hashlib.sha256(capture.body).hexdigest() == SHA256[capture]
    assert capture.file in (DATA / "PROVENANCE.md").read_text(encoding="utf-8")



@pytest.mark.parametrize("capture", ALL, ids=str)
def test_every_real_entry_becomes_a_keyed_item_with_its_title_and_link(capture):
    raw = raw_entries(capture)
    batch = build(capture)
    assert batch.entries == len(raw) and batch.stale == 0 and batch.unkeyed == 0
    items = by_key(batch.items)
    if capture.kind == "pr":
        # One item per release: the English and French versions of one release are two.
        assert len(items) == len(raw)
        for entry in raw:
            item = items[entry.link]  # these links are canonical already: the key is the link
            assert item.link == entry.link and item.title == entry.title
            assert item.published == entry.published and item.kind == "pr"
        return
    # EDGAR: one item per accession number, keyed "sec:<accession>", whatever the roles.
    accessions = {e.accession for e in raw}
    assert set(items) == {f"sec:{a}" for a in accessions}
    for item in items.values():
        listed = [e for e in raw if f"sec:{e.accession}" == item.key]
        kept = next(e for e in listed if e.title == item.title)  # the title is one entry's, whole
        assert item.link == kept.link and item.cik == kept.cik and item.kind == "sec"
        assert item.published == kept.published


@pytest.mark.parametrize("capture", EDGAR, ids=str)
def test_edgar_form_types_are_the_ones_edgar_wrote(capture):
    raw = raw_entries(capture)
    items = build(capture).items
    for item in items:
        assert {e.form for e in raw if f"sec:{e.accession}" == item.key} == {item.form}
    assert {i.form for i in items} == {e.form for e in raw}
    if capture is EDGAR_13D:  # EDGAR's names since 2024; the retired "SC 13D" is nowhere
        assert {i.form for i in items} == {"SCHEDULE 13D", "SCHEDULE 13D/A"}
    if capture is EDGAR_8K:
        assert {i.form for i in items} == {"8-K", "8-K/A"}


def test_an_empty_edgar_answer_is_no_news_not_a_failure():
    parsed = parse_document(EDGAR_SC13D_EMPTY.body, EDGAR_SC13D_EMPTY.content_type,
                            "https://www.sec.gov/cgi-bin/browse-edgar")
    assert parsed.entries == [] and parsed.complaint is None
    assert b"No recent filings" in EDGAR_SC13D_EMPTY.body
    assert build(EDGAR_SC13D_EMPTY).items == []


@pytest.mark.parametrize("capture", WITH_ENTRIES, ids=str)
def test_a_capture_polled_after_the_freshness_window_alerts_nothing(capture):
    freshness = DEFAULTS.freshness_sec_s if capture.kind == "sec" else DEFAULTS.freshness_pr_s
    newest = max(e.published for e in raw_entries(capture))
    batch = build(capture, now=newest + freshness + 1)
    assert batch.items == [] and batch.stale == batch.entries > 0


# SEC: 8-K and Schedule 13D ------------------------------------------------------------


def test_an_8k_alert_carries_the_filers_tickers_and_item_numbers():
    items = by_key(build(EDGAR_8K).items)
    trinseo = items["sec:0001104659-26-109915"]
    assert trinseo.title == "8-K - Trinseo PLC (0001519061) (Filer)"
    assert trinseo.tickers == [symbol_for("0001519061")]
    assert "Item 5.07: Submission of Matters to a Vote of Security Holders" in trinseo.summary
    assert "Item 8.01: Other Events" in trinseo.summary
    amended = items["sec:0001493152-26-043864"]
    assert amended.form == "8-K/A" and "Item 7.01: Regulation FD Disclosure" in amended.summary
    # One filing by two co-registrants (a trust and its depositor): one alert, both filers' tickers.
    hyundai = items["sec:0001104659-26-109902"]
    assert sorted(hyundai.tickers) == sorted([symbol_for("0002151096"), symbol_for("0001260125")])
    assert len(items) == 9  # ten entries, nine filings


def test_a_schedule_13d_alert_is_about_the_subject_company_with_the_filer_as_holder():
    raw = raw_entries(EDGAR_13D)
    items = by_key(build(EDGAR_13D).items)
    assert len(raw) == 40 and len(items) == 20  # each filing listed as (Filed by) and (Subject)
    for key, item in items.items():
        listed = {e.role: e for e in raw if f"sec:{e.accession}" == key}
        assert set(listed) == {"Filed by", "Subject"}
        subject, filer = listed["Subject"], listed["Filed by"]
        assert item.title == subject.title and item.link == subject.link and item.cik == subject.cik
        assert item.tickers == [symbol_for(subject.cik)], "the holder's own ticker is not the news"
        assert item.holder == filer.company
    qvc = items["sec:0001493152-26-038541"]
    assert qvc.title == "SCHEDULE 13D - QVC Group, Inc. (0001254699) (Subject)"
    assert qvc.holder == "GOLDENTREE ASSET MANAGEMENT LP"
    # Listed Subject first (the other filings list the filer first): the same reading.
    power = items["sec:0001042634-26-000011"]
    assert power.holder == "POSNER HENRY III" and power.tickers == [symbol_for("0001532619")]


def test_two_filings_about_one_company_are_two_alerts_not_one():
    items = by_key(build(EDGAR_13D).items)
    maase = [i for i in items.values() if "Maase Inc." in i.title]
    assert sorted(i.key for i in maase) == ["sec:0001213900-26-090314", "sec:0001213900-26-090315"]
    assert {i.holder for i in maase} == {"YU DEJUN", "REN BARON"}
    perceptive = sorted(i.title for i in items.values() if i.holder == "PERCEPTIVE ADVISORS LLC")
    assert perceptive == ["SCHEDULE 13D/A - Nautilus Biotechnology, Inc. (0001808805) (Subject)",
                          "SCHEDULE 13D/A - Solid Biosciences Inc. (0001707502) (Subject)"]


# Wire tickers --------------------------------------------------------------------------

# Title start -> the tickers the release text names ("(NYSE: AZO)", "(TSX : GDL)").
GLOBENEWSWIRE_TEXT_TICKERS = {
    "Goodfellow Reports": ["GDL"],
    "Goodfellow annonce": ["GDL"],
    "AutoZone Announces": ["AZO"],
    "TOP Financial Group": ["TOP"],
    "LB Pharmaceuticals": ["LBRX"],
    "Japan Smaller Capitalization": ["JOF"],
    "InterDigital Announces": ["IDCC"],
    "Artisan Partners": ["APAM"],
    "Coca-Cola Consolidated": ["COKE"],
    "Korro Bio": ["KRRO"],
    "Context Therapeutics": ["CNTX"],
}
B2GOLD = "B2Gold Second Quarter 2026 Results"
MAIN_STREET = "Main Street Financial Services"  # "(OTCQX:MSWV)": an OTC listing


def test_wire_alerts_carry_the_tickers_their_release_text_names():
    raw = {e.title: e for e in raw_entries(GLOBENEWSWIRE)}
    items = build(GLOBENEWSWIRE).items
    assert len(items) == 20
    named = set()
    for item in items:
        start = next((s for s in GLOBENEWSWIRE_TEXT_TICKERS if item.title.startswith(s)), None)
        if start is not None:
            assert item.tickers == GLOBENEWSWIRE_TEXT_TICKERS[start], item.title
            named.add(start)
        elif not item.title.startswith((B2GOLD, MAIN_STREET)):
            # No exchange-qualified symbol in the text: none invented (the wire's own stock
            # categories may be used one day, never anything else).
            assert set(item.tickers) <= set(raw[item.title].stocks), item.title
    assert named == set(GLOBENEWSWIRE_TEXT_TICKERS)


def test_otc_tickers_on_a_real_release_follow_the_otc_setting():
    def main_street(include_otc: bool) -> Item:
        return next(i for i in build(GLOBENEWSWIRE, include_otc=include_otc).items
                    if i.title.startswith(MAIN_STREET))

    assert DEFAULTS.otc_tickers is False and main_street(False).tickers == []
    assert main_street(True).tickers == ["MSWV"]


def test_a_second_exchange_label_in_a_list_is_not_read_as_a_ticker():
    b2gold = next(i for i in build(GLOBENEWSWIRE).items if i.title.startswith(B2GOLD))
    assert "NYSE AMERICAN: BTG" in b2gold.summary
    assert b2gold.tickers == ["BTO", "BTG"]


# Dedupe through a real SeenStore ---------------------------------------------------------


def open_store(path: Path) -> SqliteSeenStore:
    return SqliteSeenStore(path, sqlite_cfg=SqliteConfig(), lease_s=60, max_attempts=3,
                           ttl_s=30 * 86400)


@pytest.mark.parametrize("capture", ALL, ids=str)
def test_claiming_a_real_document_again_yields_no_new_item(capture, tmp_path):
    first = build(capture).items
    store = open_store(tmp_path / "seen.db")
    try:
        new = store.claim(first)
        assert sorted(i.key for i in new) == sorted(i.key for i in first)
        assert store.claim(build(capture).items) == []  # the next poll of the same document
    finally:
        store.close()
    store = open_store(tmp_path / "seen.db")  # and after a restart
    try:
        assert store.claim(build(capture).items) == []
    finally:
        store.close()


# The full fetch path: a loopback server, the real FeedFetcher ----------------------------


@pytest.fixture
def server():
    srv = HostileServer().start()
    yield srv
    srv.stop()


def company_tickers(capture: Capture) -> bytes:
    """company_tickers.json as SEC shapes it, for this document's companies (test symbols)."""
    ciks = sorted({e.cik for e in raw_entries(capture) if e.cik} | {"0000000001"})
    return json.dumps({str(n): {"cik_str": int(cik), "ticker": symbol_for(cik), "title": cik}
                       for n, cik in enumerate(ciks)}).encode()


@pytest.mark.parametrize("capture", ALL, ids=str)
def test_each_real_document_passes_the_full_fetch_path_and_dedupes(capture, server, tmp_path):
    server.route("/feed", Response(200, capture.body, headers={"Content-Type": capture.content_type}))
    server.route("/company_tickers.json", Response(200, company_tickers(capture),
                                                   headers={"Content-Type": "application/json"}))
    # The fetcher reads the wall clock: widen the freshness windows to reach back to the
    # capture's oldest entry (EDGAR lists Friday's filings on a Sunday).
    oldest = min([e.published for e in raw_entries(capture)], default=capture.captured_at)
    reach = time.time() - oldest + 86400
    cfg = config_from_dict({
        "data_dir": str(tmp_path / "data"), "sec_user_agent": UA,
        "fetch": {"connect_timeout_s": 1.0, "read_timeout_s": 2.0, "freshness_pr_s": reach,
                  "freshness_sec_s": reach, "company_tickers_url": server.url("/company_tickers.json")},
        "feeds": [{"name": capture.file, "url": server.url("/feed"), "kind": capture.kind}]})
    fetcher = FeedFetcher(cfg)
    store = open_store(tmp_path / "seen.db")
    try:
        (first,) = fetcher.fetch_cycle(cfg.feeds)
        assert first.status == "ok" and first.http_status == 200 and first.error is None
        assert first.entries == len(raw_entries(capture)) and first.stale == 0
        expected = build(capture).items
        assert [(i.key, i.title, i.link, i.tickers, i.form) for i in first.items] == \
            [(i.key, i.title, i.link, i.tickers, i.form) for i in expected]
        assert sorted(i.key for i in store.claim(first.items)) == sorted(i.key for i in expected)
        (second,) = fetcher.fetch_cycle(cfg.feeds)
        assert second.status == "ok" and len(second.items) == len(expected)
        assert store.claim(second.items) == []
    finally:
        store.close()
        fetcher.close()
    assert len(server.requests("/feed")) == 2
