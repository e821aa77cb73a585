"""Dedupe keys and cross-wire signatures for fetched items."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Protocol limits (actors.protocol.Key / ShortText); a key past this is shortened by hash.
MAX_KEY_CHARS = 1024
MAX_SIGNATURE_CHARS = 2048
# A title shorter than this (after normalising) is too generic to identify a release
# ("Form 8-K", "Press Release", "Quarterly Report"): no signature, so no false merges.
SIGNATURE_MIN_CHARS = 20
SIGNATURE_MIN_WORDS = 4
DISAMBIGUATION_HASH_CHARS = 8

# Query parameters that only say how a reader arrived, never which page it is.
TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "igshid",
    "mc_cid", "mc_eid", "ref", "ref_src", "referrer", "feedref", "_hsenc", "_hsmi",
    "mkt_tok",
})
TRACKING_PREFIXES = ("utm_", "pk_")
# "source=rss" and the like mark the feed a link came from; "source=123" on some
# site could be content, so these names are dropped only with a feed-ish value.
FEED_MARKER_PARAMS = frozenset({"source", "src", "from", "cmpid", "feed", "channel", "origin"})
FEED_MARKER_VALUES = frozenset({"rss", "atom", "feed", "xml", "rssfeed", "rss2", "newsfeed", "syndication"})
DEFAULT_PORTS = {"http": 80, "https": 443}

_ACCESSION_IN_ID = re.compile(r"accession-number=(\d{10}-\d{2}-\d{6})", re.I)
_ACCESSION_DASHED = re.compile(r"(?<!\d)(\d{10}-\d{2}-\d{6})(?!\d)")
_ACCESSION_FOLDER = re.compile(r"/(\d{18})(?:/|$)")
_ACCESSION_ACCNO = re.compile(r"AccNo:?\s*(\d{10}-\d{2}-\d{6})", re.I)

_WIRES = (r"globe\s*newswire|business\s*wire|pr\s*newswire|access\s*newswire|accesswire"
          r"|newsfile(?:\s*corp\.?)?|cision|cnw|ein\s*presswire|newswire|marketwired")
_TITLE_PREFIX = re.compile(rf"^\s*(?:press\s+release|news\s+release|{_WIRES})\s*[:|/\-\u2013\u2014]+\s*",
                           re.I)
_TITLE_SUFFIX = re.compile(rf"[\s|/(\-\u2013\u2014]+(?:{_WIRES})[\s/)]*$", re.I)
_NON_WORD = re.compile(r"[\W_]+")


def normalise_link(url: str | None) -> str | None:
    """The canonical https form of a web link, or None when it is not an http(s) URL."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower().rstrip(".")
        port = parts.port
    except ValueError:  # a bad port or bracket: not a usable link
        return None
    if scheme not in DEFAULT_PORTS or not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    path = parts.path.rstrip("/")
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not _is_tracking(k, v)]
    query = urlencode(sorted(pairs))
    return urlunsplit(("https", netloc, path, query, ""))


def _is_tracking(name: str, value: str) -> bool:
    lowered = name.lower()
    if lowered in TRACKING_PARAMS or lowered.startswith(TRACKING_PREFIXES):
        return True
    return lowered in FEED_MARKER_PARAMS and value.strip().lower() in FEED_MARKER_VALUES


def accession_number(entry_id: str | None, link: str | None, summary: str | None) -> str | None:
    """The EDGAR accession number (0001234567-26-000123) of a filing entry, if any."""
    if entry_id:
        found = _ACCESSION_IN_ID.search(entry_id) or _ACCESSION_DASHED.search(entry_id)
        if found:
            return found.group(1)
    if link:
        path = urlsplit(link).path
        found = _ACCESSION_DASHED.search(path)
        if found:
            return found.group(1)
        folder = _ACCESSION_FOLDER.search(path)
        if folder:
            digits = folder.group(1)
            return f"{digits[:10]}-{digits[10:12]}-{digits[12:]}"
    if summary:
        found = _ACCESSION_ACCNO.search(summary)
        if found:
            return found.group(1)
    return None


def sec_key(accession: str) -> str:
    return f"sec:{accession}"


def pr_key(link: str | None, guid: str | None, source: str) -> str | None:
    """The normalised link; else the guid (scoped to the feed unless it is a URL)."""
    key = normalise_link(link)
    if key is None and guid and guid.strip():
        # A guid like "12345" is unique only within its own feed; scoping it keeps two
        # wires' "12345" apart. A URL guid is global, so it is normalised like a link.
        key = normalise_link(guid) or f"guid:{source}:{guid.strip()}"
    return fit_key(key) if key else None


def fit_key(key: str) -> str:
    """A key within the protocol's length limit; a long one keeps its start plus a hash."""
    if len(key) <= MAX_KEY_CHARS:
        return key
    digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{key[:MAX_KEY_CHARS - len(digest) - 1]}#{digest}"


def normalise_title(title: str) -> str:
    """Case-folded words of a title with wire names and punctuation removed."""
    text = unicodedata.normalize("NFKC", title)
    text = _TITLE_PREFIX.sub("", text)
    text = _TITLE_SUFFIX.sub("", text)
    return _NON_WORD.sub(" ", text.casefold()).strip()


def signature(title: str, tickers: list[str]) -> str | None:
    """Cross-wire copy signature "TICK1,TICK2|normalised title", None when too generic."""
    norm = normalise_title(title)
    if len(norm) < SIGNATURE_MIN_CHARS or norm.count(" ") + 1 < SIGNATURE_MIN_WORDS:
        return None
    return f"{','.join(sorted(set(tickers)))}|{norm}"[:MAX_SIGNATURE_CHARS]


def title_hash(title: str) -> str:
    """A short stable hash of a normalised title, to tell apart items sharing a link."""
    digest = hashlib.sha1(normalise_title(title).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:DISAMBIGUATION_HASH_CHARS]
