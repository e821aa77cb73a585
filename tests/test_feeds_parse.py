"""Keys, signatures and document checks of the feed library, without a network."""

import time
import tracemalloc

import pytest

from actors.feeds import OutageDetector, keys
from actors.feeds.items import build_items, parse_sec_title
from actors.feeds.parse import (
    HostileFeed,
    NotAFeed,
    check_document,
    clean_text,
    parse_document,
)
from actors.resilience import CircuitBreaker
from tests.hostile_server import rss, sec_atom

NOW = time.time()
BOMB = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                   for i in range(1, 10))
        + b']><rss version="2.0"><channel><title>&lol9;</title></channel></rss>')


def items_of(doc: str | bytes, *, kind="pr", source="wire", content_type="application/rss+xml",
             cik_tickers=lambda cik: [], freshness_s=86400.0):
    body = doc.encode("utf-8") if isinstance(doc, str) else doc
    parsed = parse_document(body, content_type, "https://wire.example/feed")
    return build_items(parsed.entries, source=source, kind=kind, now=NOW, freshness_s=freshness_s,
                       include_otc=False, cik_tickers=cik_tickers)


# Links and keys ---------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("http://WWW.Example.COM:80/news/Item-1/?utm_source=rss&utm_medium=feed&b=2&a=1#top",
     "https://www.example.com/news/Item-1?a=1&b=2"),
    ("https://example.com:443/a/", "https://example.com/a"),
    ("https://example.com:8443/a", "https://example.com:8443/a"),
    ("https://www.businesswire.com/news/home/2026/en/Title?feedref=JjAwJuNH", "https://www.businesswire.com/news/home/2026/en/Title"),
    ("https://x.example/p?fbclid=1&gclid=2&mc_cid=3&mc_eid=4&ref=5&id=9", "https://x.example/p?id=9"),
    ("https://x.example/p?source=rss&page=2", "https://x.example/p?page=2"),
    ("https://x.example/p?source=sec-filing", "https://x.example/p?source=sec-filing"),
    ("https://x.example/", "https://x.example"),
])
def test_links_are_normalised_for_keys(raw, expected):
    assert keys.normalise_link(raw) == expected


@pytest.mark.parametrize("raw", [None, "", "javascript:alert(1)", "mailto:a@b.c", "/relative/only", "http://[::1"])
def test_non_web_links_give_no_key(raw):
    assert keys.normalise_link(raw) is None


def test_a_guid_keys_an_item_without_link_and_is_scoped_to_its_feed():
    assert keys.pr_key(None, "12345", "wire-a") == "guid:wire-a:12345"
    assert keys.pr_key(None, "12345", "wire-b") != keys.pr_key(None, "12345", "wire-a")
    assert keys.pr_key(None, "https://X.example/n/1/?utm_source=rss", "w") == "https://x.example/n/1"
    assert keys.pr_key(None, None, "w") is None


def test_overlong_keys_fit_the_protocol():
    key = keys.pr_key("https://x.example/" + "a" * 5000, None, "w")
    assert len(key) <= keys.MAX_KEY_CHARS
    assert key != keys.pr_key("https://x.example/" + "a" * 4999 + "b", None, "w")


def test_accession_from_id_link_or_summary():
    acc = "0001234567-26-000123"
    assert keys.accession_number(f"urn:tag:sec.gov,2008:accession-number={acc}", None, None) == acc
    link = "https://www.sec.gov/Archives/edgar/data/1234567/000123456726000123/"
    assert keys.accession_number("x", link, None) == acc
    assert keys.accession_number(None, None, f"Filed: 2026-01-02 AccNo: {acc} Size: 1 MB") == acc
    assert keys.accession_number("tag:other", "https://www.sec.gov/x", "no number") is None


# Signatures ------------------------------------------------------------------------

def test_the_same_release_on_two_wires_has_one_signature():
    a = keys.signature("Acme Bio Announces FDA Approval of ACM-101 for Rare Disease", ["ACMB"])
    b = keys.signature("PRESS RELEASE: ACME BIO ANNOUNCES FDA APPROVAL OF ACM-101 FOR RARE DISEASE"
                       " - GlobeNewswire", ["ACMB"])
    c = keys.signature("Acme Bio announces FDA approval of ACM 101 for rare disease | Business Wire", ["ACMB"])
    assert a == b == c == "ACMB|acme bio announces fda approval of acm 101 for rare disease"


def test_signatures_differ_by_tickers_and_are_none_when_too_short():
    title = "Acme Bio Announces FDA Approval of ACM-101"
    assert keys.signature(title, ["ACMB"]) != keys.signature(title, ["OTHR"])
    assert keys.signature(title, ["B", "A"]) == keys.signature(title, ["A", "B"])
    assert keys.signature("Form 8-K", []) is None
    assert keys.signature("Press Release", ["ACMB"]) is None


# Documents -------------------------------------------------------------------------

def test_a_billion_laughs_bomb_is_refused_in_bounded_time_and_memory():
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(HostileFeed):
        parse_document(BOMB, "application/rss+xml", "https://x.example/")
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 1_000_000


def test_an_entity_declaration_hidden_behind_a_fake_prolog_end_is_refused():
    body = (b'<!DOCTYPE x [ <!-- ]><rss> --> <!ENTITY a "aaaa"> ]>'
            b'<rss version="2.0"><channel><title>&a;</title></channel></rss>')
    with pytest.raises(HostileFeed):
        check_document(body)


def test_utf16_entity_bomb_is_refused():
    with pytest.raises(HostileFeed):
        check_document(BOMB.decode().replace("<?xml version=\"1.0\"?>", "").encode("utf-16"))


def test_a_plain_doctype_without_entities_is_accepted():
    body = (b'<?xml version="1.0"?><!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
            b'"http://my.netscape.com/publish/formats/rss-0.91.dtd"><!-- hi --><rss version="0.91"></rss>')
    assert check_document(body) == "rss"


@pytest.mark.parametrize("body, why", [
    (b"", "empty"),
    (b"   \n\t ", "empty"),
    (b"<!DOCTYPE html><html><body>Sorry</body></html>", "HTML"),
    (b"\xef\xbb\xbf<html><head></head></html>", "HTML"),
    (b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"></html>', "<html>"),
    (b'{"items": []}', "root"),
    (b'<?xml version="1.0"?><urlset></urlset>', "<urlset>"),
])
def test_non_feeds_are_failures_not_empty_news(body, why):
    with pytest.raises(NotAFeed, match=why):
        check_document(body, "text/html")


@pytest.mark.parametrize("body, root", [
    (b'\xef\xbb\xbf<?xml version="1.0"?>\n<rss version="2.0"/>', "rss"),
    (b'<feed xmlns="http://www.w3.org/2005/Atom"/>', "feed"),
    (b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/>', "rdf"),
    ('<?xml version="1.0" encoding="UTF-16"?><rss version="2.0"/>'.encode("utf-16"), "rss"),
])
def test_feed_roots_are_recognised(body, root):
    assert check_document(body) == root


def test_latin1_declared_as_utf8_still_parses():
    doc = rss([{"title": "Société Générale signs café deal with Acme Corp", "link": "https://w.example/1",
                "published": NOW}]).encode("latin-1")
    batch = items_of(doc, content_type="application/rss+xml; charset=utf-8")
    assert [i.title for i in batch.items] == ["Société Générale signs café deal with Acme Corp"]


def test_utf8_bom_and_windows_1252_bodies_parse():
    bom = b"\xef\xbb\xbf" + rss([{"title": "Zürich “quoted” news", "link": "https://w.example/1"}]).encode()
    assert items_of(bom).items[0].title == "Zürich “quoted” news"
    cp = rss([{"title": "Acme “smart quotes” – dash", "link": "https://w.example/2"}],
             encoding="windows-1252").encode("cp1252")
    assert items_of(cp, content_type="text/xml").items[0].title == "Acme “smart quotes” – dash"
    undeclared = rss([{"title": "Acme “smart quotes” – dash", "link": "https://w.example/3"}],
                     declare=False).encode("cp1252")
    assert items_of(undeclared, content_type="application/rss+xml").items[0].title == "Acme “smart quotes” – dash"


def test_mixed_encodings_keep_both_kinds_of_text_readable():
    doc = rss([{"title": "TITLE_A", "link": "https://w.example/1"},
               {"title": "TITLE_B", "link": "https://w.example/2"}]).encode()
    doc = doc.replace(b"TITLE_A", "Café in UTF-8".encode()).replace(b"TITLE_B", "Naïve in latin-1".encode("latin-1"))
    titles = [i.title for i in items_of(doc, content_type="application/rss+xml; charset=utf-8").items]
    assert titles == ["Café in UTF-8", "Naïve in latin-1"]


def test_broken_xml_that_still_has_entries_parses_and_garbage_does_not():
    doc = rss([{"title": "Acme Corp wins big contract today", "link": "https://w.example/1"}])
    assert len(items_of(doc.replace("</channel></rss>", "<item><title>cut")).items) >= 1
    with pytest.raises(NotAFeed):
        parse_document(b"<rss><<<>>>", "application/rss+xml", "https://x.example/")


# Items -----------------------------------------------------------------------------

def test_titles_and_summaries_are_plain_text_within_limits():
    assert clean_text("<p>Acme&nbsp;<b>wins</b>\n\n  big</p><script>alert(1)</script>", 100) == "Acme wins big"
    assert clean_text("x" * 50_000, 16384) == "x" * 16384
    doc = rss([{"title": "T" * 5000, "link": "https://w.example/1",
                "description": "<div>" + "word " * 10_000 + "</div>"}])
    item = items_of(doc).items[0]
    assert len(item.title) == 2048 and len(item.summary) <= 16384


def test_published_is_utc_epoch_or_none_and_stale_items_are_dropped_and_counted():
    doc = rss([{"title": "Fresh news from Acme Corp today", "link": "https://w.example/1", "published": NOW - 60},
               {"title": "Old news from Acme Corp last week", "link": "https://w.example/2", "published": NOW - 9 * 86400},
               {"title": "Undated news from Acme Corp here", "link": "https://w.example/3"}])
    batch = items_of(doc)
    assert [i.link for i in batch.items] == ["https://w.example/1", "https://w.example/3"]
    assert batch.items[0].published == float(int(NOW - 60))
    assert batch.items[1].published is None
    assert batch.stale == 1 and batch.entries == 3


def test_distinct_releases_sharing_a_link_get_distinct_stable_keys():
    old = {"title": "Acme Corp reports first quarter results", "link": "https://w.example/ir?utm_source=rss",
           "published": NOW - 3600}
    new = {"title": "Acme Corp announces new chief executive", "link": "https://w.example/ir",
           "published": NOW - 60}
    alone = items_of(rss([old])).items
    both = items_of(rss([new, old])).items
    assert alone[0].key == "https://w.example/ir"
    by_title = {i.title: i.key for i in both}
    assert by_title[old["title"]] == "https://w.example/ir"  # the one seen before keeps its key
    assert by_title[new["title"]].startswith("https://w.example/ir#")
    assert items_of(rss([new, old])).items[0].key == both[0].key  # stable across cycles


def test_a_release_listed_twice_in_one_document_is_one_item():
    entry = {"title": "Acme Corp reports first quarter results", "link": "https://w.example/1"}
    batch = items_of(rss([entry, dict(entry, link="https://w.example/1?utm_medium=x")]))
    assert len(batch.items) == 1 and batch.merged == 1


def test_sec_title_gives_form_company_cik_and_role():
    parsed = parse_sec_title("8-K/A - ACME (HOLDINGS) INC (1234567) (Filer)")
    assert (parsed.form, parsed.company, parsed.cik, parsed.role) == ("8-K/A", "ACME (HOLDINGS) INC", "0001234567", "Filer")


def test_a_filing_listed_once_per_role_is_one_item_keyed_by_accession():
    acc = "0001958713-26-011239"
    doc = sec_atom([
        {"form": "SC 13D", "company": "Activist Partners LP", "cik": 1912345, "role": "Filed by", "accession": acc, "updated": NOW},
        {"form": "SC 13D", "company": "Acme Bio Inc", "cik": 1779981, "role": "Subject", "accession": acc, "updated": NOW},
    ])
    batch = items_of(doc, kind="sec", content_type="application/atom+xml",
                     cik_tickers=lambda cik: {"0001779981": ["ACMB"], "0001912345": []}[cik])
    assert len(batch.items) == 1
    item = batch.items[0]
    assert item.key == f"sec:{acc}" and item.cik == "0001779981" and item.tickers == ["ACMB"]
    assert item.form == "SC 13D" and item.signature is None and item.kind == "sec"


# Breakers and outages --------------------------------------------------------------

def test_outage_is_reported_once_and_recovery_once():
    outage = OutageDetector(cycles=3)
    assert [outage.observe(0) for _ in range(5)] == [None, None, "outage", None, None]
    assert [outage.observe(n) for n in (4, 2, 0)] == ["recovered", None, None]


def test_breaker_opens_backs_off_exponentially_and_closes_after_a_good_trial():
    now = [0.0]
    breaker = CircuitBreaker("f", failures=2, backoff_initial_s=10, backoff_max_s=25, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.allow() and breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.allow() and breaker.state == "half_open"
    breaker.record_failure()
    assert breaker.state == "open" and breaker.backoff_s == 20
    now[0] = 30.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.backoff_s == 25  # capped
    now[0] = 55.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.stats()["consecutive_failures"] == 0
