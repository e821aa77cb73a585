"""Feed entries to protocol Items: keys, tickers, SEC fields, freshness."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from actors.feeds import keys
from actors.feeds.parse import clean_text
from actors.feeds.tickers import extract_tickers
from actors.protocol import Item

# Protocol limits (actors.protocol.ShortText / LongText / LinkText), in characters, and
# in UTF-8 bytes so that one item's size is bounded whatever its script: a 2 KB-character
# CJK title is 6 KB, a 16 K-character summary up to 64 KB before this cut. A summary keeps
# its first part (the lede carries the news).
MAX_TITLE_CHARS = 2048
MAX_TITLE_BYTES = 6 * 1024
MAX_SUMMARY_CHARS = 16384
MAX_SUMMARY_BYTES = 32 * 1024
# A link is never cut (a cut link is a broken link); one longer than a key may be is keyed
# by a hash of its canonical form (keys.fit_key). Past this no link is sane: the entry is
# refused, counted and named in the feed's status.
MAX_LINK_CHARS = 8192
# One document yields at most this many items; a feed listing more is not a news feed.
MAX_ITEMS_PER_FEED = 2000

# "8-K - ACME BIO INC (0001234567) (Filer)"
_SEC_TITLE = re.compile(r"^\s*(?P<form>.+?)\s+-\s+(?P<company>.+?)\s+\((?P<cik>\d{1,10})\)"
                        r"(?:\s+\((?P<role>[^()]*)\))?\s*$")
# When a filing is listed once per role, the company the news is about wins.
_ROLE_RANK = {"issuer": 0, "subject": 1, "filer": 2, "filed by": 2}
_OTHER_ROLE_RANK = 3
# Roles naming who filed: on a beneficial-ownership filing, the holder.
_FILER_ROLES = frozenset({"filer", "filed by", "reporting"})


def is_ownership_form(form: str | None) -> bool:
    """Schedule 13D/13G and amendments: "SCHEDULE 13D/A" since EDGAR's 2024 change,
    "SC 13G" before it. The issuer (Subject) is the news; the filer is the holder."""
    name = (form or "").upper()
    return name.startswith(("SCHEDULE 13D", "SCHEDULE 13G", "SC 13D", "SC 13G"))


@dataclass
class SecTitle:
    form: str
    company: str
    cik: str  # 10 digits, zero padded
    role: str | None


@dataclass
class ItemBatch:
    items: list[Item] = field(default_factory=list)
    entries: int = 0
    stale: int = 0  # older than the freshness window
    unkeyed: int = 0  # no link, guid or accession to key them by
    merged: int = 0  # listed twice in one document (roles, repeats)
    refused: int = 0  # entries refused (a link past MAX_LINK_CHARS)
    refused_reason: str | None = None


def parse_sec_title(title: str) -> SecTitle | None:
    """Form, company, CIK and role from an EDGAR feed title."""
    match = _SEC_TITLE.match(title)
    if match is None:
        return None
    return SecTitle(match.group("form").strip(), match.group("company").strip(),
                    match.group("cik").zfill(10), (match.group("role") or "").strip() or None)


def _epoch(parsed) -> float | None:  # type: ignore[no-untyped-def]
    """feedparser's UTC struct_time to epoch seconds."""
    if not parsed:
        return None
    try:
        return float(calendar.timegm(parsed))
    except (TypeError, ValueError, OverflowError):
        return None


class _Refused(Exception):
    """An entry that cannot become an item; the reason is counted and shown."""


def _web_link(link: str) -> str:
    """The entry's link when it is a usable http(s) URL, whole; _Refused past any sane
    size (a link is never cut)."""
    link = link.strip()
    if len(link) > MAX_LINK_CHARS:
        raise _Refused(f"link of {len(link)} characters (over {MAX_LINK_CHARS})")
    return link if link.lower().startswith(("http://", "https://")) else ""


def clip(text: str, max_chars: int, max_bytes: int) -> str:
    """text cut to at most max_chars characters and max_bytes UTF-8 bytes, on a character
    boundary; its first part kept."""
    text = text[:max_chars]
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore").rstrip()


def build_items(entries: Iterable, *, source: str, kind: str, now: float, freshness_s: float,
                include_otc: bool, cik_tickers: Callable[[str], list[str]]) -> ItemBatch:
    """Items from one document's entries, stale ones dropped, in-document repeats merged."""
    batch = ItemBatch()
    fresh: list[tuple[Item, str | None]] = []
    for entry in entries:
        batch.entries += 1
        published = _epoch(entry.get("published_parsed") or entry.get("updated_parsed"))
        if published is not None and now - published > freshness_s:
            batch.stale += 1
            continue
        raw_summary = entry.get("summary") or entry.get("description") or ""
        try:
            built = (_sec_item if kind == "sec" else _pr_item)(
                entry, raw_summary, source=source, published=published, now=now,
                include_otc=include_otc, cik_tickers=cik_tickers)
        except _Refused as exc:
            batch.refused += 1
            batch.refused_reason = str(exc)
            continue
        if built is None:
            batch.unkeyed += 1
            continue
        fresh.append(built)
        if len(fresh) >= MAX_ITEMS_PER_FEED:
            break
    merged = _merge_roles(fresh) if kind == "sec" else _disambiguate(fresh)
    batch.merged = len(fresh) - len(merged)
    batch.items = merged
    return batch


def _texts(entry, raw_summary: str) -> tuple[str, str, str, str]:
    """(title, summary, raw link, web link) of an entry, clipped to the protocol's limits."""
    title = clip(clean_text(entry.get("title"), MAX_TITLE_CHARS), MAX_TITLE_CHARS,
                 MAX_TITLE_BYTES)
    summary = clip(clean_text(raw_summary, MAX_SUMMARY_CHARS), MAX_SUMMARY_CHARS,
                   MAX_SUMMARY_BYTES)
    raw_link = entry.get("link") or ""
    return title, summary, raw_link, _web_link(raw_link)


def _pr_item(entry, raw_summary: str, *, source: str, published: float | None, now: float,
             include_otc: bool, cik_tickers: Callable[[str], list[str]]) -> tuple[Item, str | None] | None:
    title, summary, raw_link, link = _texts(entry, raw_summary)
    key = keys.pr_key(raw_link, entry.get("id"), source)
    if key is None:
        return None
    tickers = extract_tickers(f"{title}\n{summary}", include_otc=include_otc)
    item = Item(key=key, title=title, link=link, source=source, kind="pr",
                published=published, fetched_at=now, summary=summary, tickers=tickers,
                signature=keys.signature(title, tickers))
    return item, None


def _sec_item(entry, raw_summary: str, *, source: str, published: float | None, now: float,
              include_otc: bool, cik_tickers: Callable[[str], list[str]]) -> tuple[Item, str | None] | None:
    title, summary, raw_link, link = _texts(entry, raw_summary)
    accession = keys.accession_number(entry.get("id"), raw_link, summary)
    if accession is None:
        return None
    parsed = parse_sec_title(title)
    tags = entry.get("tags") or []
    term = (tags[0].get("term") or "").strip() if tags else ""
    form = (term or (parsed.form if parsed else ""))[:MAX_TITLE_CHARS] or None
    cik = parsed.cik if parsed else None
    item = Item(key=keys.sec_key(accession), title=title, link=link, source=source,
                kind="sec", published=published, fetched_at=now, summary=summary,
                tickers=list(cik_tickers(cik)) if cik else [], form=form, cik=cik, signature=None)
    role = parsed.role if parsed else None
    if parsed and is_ownership_form(form) and (role or "").lower() in _FILER_ROLES:
        item.holder = parsed.company
    return item, role


def _merge_roles(built: list[tuple[Item, str | None]]) -> list[Item]:
    """One item per accession: a filing listed as Filer, Issuer, Reporting and Subject is
    one filing. The entry of the company the news is about is kept. Tickers are merged,
    except on a Schedule 13D/G, where they are the subject company's alone (the holder's
    own ticker is not the news) and the filer is named as the holder."""
    best: dict[str, tuple[int, Item]] = {}
    order: list[str] = []
    tickers: dict[str, list[str]] = {}
    holders: dict[str, str] = {}
    for item, role in built:
        if item.holder:
            holders.setdefault(item.key, item.holder)
        rank = _ROLE_RANK.get((role or "").lower(), _OTHER_ROLE_RANK)
        if item.key not in best:
            order.append(item.key)
            best[item.key] = (rank, item)
            tickers[item.key] = list(item.tickers)
            continue
        if rank < best[item.key][0]:
            best[item.key] = (rank, item)
            tickers[item.key] = list(item.tickers) + tickers[item.key]
        else:
            tickers[item.key] += item.tickers
    merged = []
    for key in order:
        rank, item = best[key]
        if is_ownership_form(item.form):
            item.holder = holders.get(key)
            if rank < _ROLE_RANK["filer"]:  # the subject's (or issuer's) entry is here
                item.tickers = list(dict.fromkeys(item.tickers))
            else:  # only the filer was listed: no issuer tickers to show
                item.tickers = []
        else:
            item.tickers = list(dict.fromkeys(tickers[key]))
        merged.append(item)
    return merged


def _disambiguate(built: list[tuple[Item, str | None]]) -> list[Item]:
    """Entries of one document that share a key: repeats collapse, distinct releases split.

    Some wires reuse one link or guid for several releases (a landing page, a recycled
    guid). The dedupe actor would merge them, losing all but the first, so each distinct
    normalised title after the first gets key + "#" + a hash of its title. "First" is the
    oldest (by published, else by position, newest-first feeds putting it last): that one
    was most likely alone in an earlier cycle under the plain key, so its key stays the
    same from cycle to cycle and the newcomers' keys are new. The title hash is stable,
    so a newcomer keeps its key in later cycles too.
    """
    groups: dict[str, list[int]] = {}
    for index, (item, _) in enumerate(built):
        groups.setdefault(item.key, []).append(index)
    keep: list[int] = []
    for key, members in groups.items():
        if len(members) == 1:
            keep.append(members[0])
            continue
        oldest_first = sorted(members, key=lambda i: (built[i][0].published is None,
                                                      built[i][0].published or 0.0, -i))
        titles: set[str] = set()
        for index in oldest_first:
            item = built[index][0]
            norm = keys.normalise_title(item.title)
            if norm in titles:
                continue  # the same release listed twice
            if titles:
                item.key = keys.fit_key(f"{key}#{keys.title_hash(item.title)}")
            titles.add(norm)
            keep.append(index)
    return [built[i][0] for i in sorted(keep)]
