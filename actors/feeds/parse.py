"""From response bytes to feed entries: refuse non-feeds and hostile XML, then parse."""

from __future__ import annotations

import codecs
import html
import io
import re
from dataclasses import dataclass

import feedparser

from actors.errors import FeedError

# The prolog (XML declaration, comments, DOCTYPE) must end within this many bytes; a
# DOCTYPE bigger than that is no feed's, and the scan stays bounded.
PROLOG_MAX_BYTES = 64 * 1024
FEED_ROOTS = frozenset({"rss", "feed", "rdf"})
# Raw HTML is cut to this multiple of the output limit before cleaning, so cleaning
# costs the same for a 16 KB summary and a 5 MB one.
CLEAN_INPUT_FACTOR = 4


class NotAFeed(FeedError):
    """A 200 whose body is empty, HTML, or no RSS/Atom/RDF document: a failure, not "no news"."""


class HostileFeed(FeedError):
    """A document that declares entities or has a DOCTYPE internal subset (billion laughs
    and kin), in whatever encoding it is spelled; refused unparsed."""


@dataclass
class ParsedFeed:
    entries: list
    complaint: str | None  # what feedparser objected to while still reading entries


_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_PROLOG_ITEM = re.compile(rb"\s*(?:<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^\[>]*(?:\[.*?\]\s*)?>)", re.S | re.I)
_ROOT = re.compile(rb"\s*<(?:[A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]*)")
# XML is case-sensitive: a parser honours only these exact spellings.
_DOCTYPE_ENTITY = tuple(("<!DOCTYPE".encode(enc), "<!ENTITY".encode(enc))
                        for enc in ("utf-8", "utf-16-le", "utf-16-be"))
_HTML_START = re.compile(rb"\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)\b", re.S | re.I)
_XML_ENCODING = re.compile(rb"<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._:\-]+)", re.I)
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:\-]+)", re.I)
_UTF8_NAMES = frozenset({"utf-8", "utf8"})
_INTERNAL_SUBSET = re.compile(r"<!DOCTYPE[^\[>]*\[")


def _ascii_view(body: bytes) -> bytes:
    """The document's first bytes in an ASCII-compatible form, BOM removed, for scanning."""
    head = body[:PROLOG_MAX_BYTES * 2]
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            head = head[len(bom):]
            if encoding != "utf-8":
                return head.decode(encoding, "replace").encode("utf-8")[:PROLOG_MAX_BYTES]
            break
    else:
        if head.startswith((b"<\x00", b"\x00<")):  # UTF-16 without a BOM
            encoding = "utf-16-le" if head[0:1] == b"<" else "utf-16-be"
            return head.decode(encoding, "replace").encode("utf-8")[:PROLOG_MAX_BYTES]
    return head[:PROLOG_MAX_BYTES]


def declares_entities(body: bytes, content_type: str = "") -> bool:
    """Does a DOCTYPE declare entities or carry an internal subset? Billion laughs and
    external entities need one; no feed does.

    The whole body is scanned (bytes.find runs at memory speed), not just what looks like
    the prolog: a comment inside the internal subset could fake where the prolog ends. It
    is scanned as bytes in UTF-8 and UTF-16 and, decoded, in the encoding the document
    declares, so a declaration spelled in UTF-7 (``<!+AEU-NTITY``) or EBCDIC is seen too.
    """
    for doctype, entity in _DOCTYPE_ENTITY:
        start = body.find(doctype)
        if start >= 0 and body.find(entity, start) >= 0:
            return True
    text = _decoded(body, content_type)
    start = text.find("<!DOCTYPE")
    if start < 0:
        return False
    return "<!ENTITY" in text[start:] or _INTERNAL_SUBSET.match(text, start) is not None


def _decoded(body: bytes, content_type: str) -> str:
    """The body as text in the encoding a parser would pick (BOM, XML declaration,
    charset, else UTF-8), undecodable bytes replaced; an unknown encoding is refused."""
    declared = None
    match = _XML_ENCODING.search(body, 0, 512)
    if match:
        declared = match.group(1).decode("ascii")
    elif (charset := _CHARSET.search(content_type)) is not None:
        declared = charset.group(1)
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            declared = encoding
            break
    try:
        codec = codecs.lookup(declared or "utf-8")
    except LookupError:
        raise HostileFeed(f"declared encoding {declared!r} is unknown: refused") from None
    return body.decode(codec.name, "replace")


def check_document(body: bytes, content_type: str = "") -> str:
    """The root element's local name of a feed document; NotAFeed or HostileFeed otherwise."""
    if not body or body.isspace():
        raise NotAFeed("empty body")
    if declares_entities(body, content_type):
        raise HostileFeed("document declares XML entities or a DOCTYPE internal subset: "
                          "refused")
    head = _ascii_view(body)
    if _HTML_START.match(head):
        raise NotAFeed(f"an HTML page, not a feed (content-type {content_type or 'unset'})")
    pos = 0
    while True:
        item = _PROLOG_ITEM.match(head, pos)
        if item is None or item.end() == pos:
            break
        pos = item.end()
    root = _ROOT.match(head, pos)
    if root is None:
        raise NotAFeed(f"no XML root element in the first {PROLOG_MAX_BYTES} bytes "
                       f"(content-type {content_type or 'unset'})")
    name = root.group(1).decode("ascii", "replace").lower()
    if name not in FEED_ROOTS:
        raise NotAFeed(f"root element <{name}> is not rss, feed or rdf "
                       f"(content-type {content_type or 'unset'})")
    return name


def _cp1252_or_latin1(exc: UnicodeError):  # type: ignore[no-untyped-def]
    bad = exc.object[exc.start:exc.end]  # type: ignore[attr-defined]
    return "".join(_decode_byte(b) for b in bad), exc.end  # type: ignore[attr-defined]


def _decode_byte(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined
        return chr(byte)


codecs.register_error("catalyst-cp1252", _cp1252_or_latin1)


def repair_utf8(body: bytes, content_type: str) -> bytes:
    """Bytes that say UTF-8 (or nothing) but are not: stray bytes read as windows-1252.

    Feeds glued together from several sources mix UTF-8 with latin-1 bytes. Decoding
    the whole document as windows-1252 (feedparser's fallback) would garble every UTF-8
    character; repairing only the invalid bytes keeps both kinds readable.
    """
    declared = {m.group(1).decode("ascii").lower() for m in [_XML_ENCODING.search(body, 0, 512)] if m}
    declared |= {m.group(1).lower() for m in [_CHARSET.search(content_type)] if m}
    if declared - _UTF8_NAMES or body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return body  # another encoding is declared: feedparser honours it
    try:
        body.decode("utf-8")
        return body
    except UnicodeDecodeError:
        return body.decode("utf-8", "catalyst-cp1252").encode("utf-8")


def parse_document(body: bytes, content_type: str, url: str) -> ParsedFeed:
    """Entries of an RSS/Atom/RDF document; NotAFeed/HostileFeed when it is not one."""
    check_document(body, content_type)
    body = repair_utf8(body, content_type)
    # A file object, never bytes or str: feedparser treats a string as a URL or a file
    # name and would fetch or open it.
    parsed = feedparser.parse(io.BytesIO(body),
                              response_headers={"content-type": content_type or "application/xml",
                                                "content-location": url},
                              sanitize_html=False, resolve_relative_uris=False)
    complaint = None
    if parsed.get("bozo"):
        exc = parsed.get("bozo_exception")
        complaint = f"{type(exc).__name__}: {exc}"[:300]
        if not parsed.entries and not _is_encoding_note(exc):
            raise NotAFeed(f"unparseable feed: {complaint}")
    return ParsedFeed(entries=list(parsed.entries), complaint=complaint)


def _is_encoding_note(exc: object) -> bool:
    return isinstance(exc, (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType))


# Text cleaning -------------------------------------------------------------------

_HIDDEN = re.compile(r"<!--.*?(?:-->|$)|<(script|style)\b.*?(?:</\1\s*>|$)", re.S | re.I)
_TAG = re.compile(r"</?[A-Za-z!?][^>]*>?")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_SPACES = re.compile(r"\s+")


def clean_text(text: str | None, limit: int) -> str:
    """Plain text: tags, scripts and entities gone, whitespace runs collapsed, truncated."""
    if not text:
        return ""
    text = text[:limit * CLEAN_INPUT_FACTOR]
    if "<" in text:
        text = _TAG.sub(" ", _HIDDEN.sub(" ", text))
    if "&" in text:
        text = html.unescape(text)
    text = _SPACES.sub(" ", _CONTROL.sub("", text)).strip()
    return text[:limit].rstrip()
