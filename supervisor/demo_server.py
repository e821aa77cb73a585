"""A loopback HTTP server that replays the bundled demo feeds and price bars.

`catalyst-supervisor demo` and the tests point the fetchers and the chart price provider at
it, so the whole system runs offline on data that always looks fresh:

- ``/feeds/<name>.xml`` serves a bundled RSS or EDGAR Atom file. Dates in the files are
  placeholders (``{{ago:35m}}``) filled in at serve time, and items are revealed
  progressively: every poll repeats what the last one showed and, until the file is
  exhausted, adds newer items.
- ``/prices/<TICKER>.json`` serves 390 one-minute bars ending now, a random walk seeded by the
  ticker with a jump at the time of the ticker's news in the feeds.
- ``/files/company_tickers.json`` serves a CIK -> ticker map shaped like the SEC's.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("America/New_York")
LOOPBACK = "127.0.0.1"
DATA_PACKAGE = "supervisor.demo_data"

# (feed name, kind); the file is <name>.xml in demo_data.
DEMO_FEEDS: tuple[tuple[str, str], ...] = (
    ("globenewswire", "pr"),
    ("prnewswire", "pr"),
    ("businesswire", "pr"),
    ("accesswire", "pr"),
    ("edgar-8k", "sec"),
    ("edgar-424b5", "sec"),
    ("edgar-fwp", "sec"),
    ("edgar-13d", "sec"),
    ("edgar-13g", "sec"),
)

BARS = 390  # one regular session of one-minute bars
BAR_SECONDS = 60
STOP_TIMEOUT_S = 5.0
IDLE_CONNECTION_TIMEOUT_S = 5.0  # a keep-alive connection idle this long is closed

_PLACEHOLDER = re.compile(r"\{\{(ago|date|dateline|rfc822et|et):(\d+)([smh])\}\}")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
_AP_MONTHS = ("Jan.", "Feb.", "March", "April", "May", "June", "July", "Aug.", "Sept.", "Oct.",
              "Nov.", "Dec.")
_FEED_PATH = re.compile(r"^/feeds/([a-z0-9-]{1,64})\.xml$")
_PRICE_PATH = re.compile(r"^/prices/([A-Za-z0-9.\-]{1,16})\.json$")
_ENCODING = re.compile(r"""^<\?xml[^>]*encoding=["']([A-Za-z0-9_\-]+)["']""")


# Templates ----------------------------------------------------------------


def fill_dates(text: str, now: float, kind: str) -> str:
    """Replaces ``{{format:age}}`` placeholders with the time ``age`` before ``now``.

    Formats: ``ago`` (RFC 822 in GMT for RSS, ISO 8601 with the Eastern offset for EDGAR
    Atom), ``rfc822et`` (RFC 822 with the Eastern offset), ``date`` (EDGAR's Filed: date),
    ``dateline`` (a wire dateline, "Nov. 23, 2026") and ``et`` ("Mon, 23 Nov 2026 16:05:12 EST").
    """

    def replace(match: re.Match[str]) -> str:
        fmt, amount, unit = match.group(1), int(match.group(2)), match.group(3)
        at = datetime.fromtimestamp(int(now) - amount * _UNIT_SECONDS[unit], timezone.utc)
        eastern = at.astimezone(EASTERN)
        if fmt == "ago" and kind == "pr":
            return email.utils.format_datetime(at, usegmt=True)
        if fmt == "ago":
            return eastern.isoformat()
        if fmt == "rfc822et":
            return email.utils.format_datetime(eastern)
        if fmt == "date":
            return eastern.strftime("%Y-%m-%d")
        if fmt == "dateline":
            return f"{_AP_MONTHS[eastern.month - 1]} {eastern.day}, {eastern.year}"
        return eastern.strftime("%a, %d %b %Y %H:%M:%S %Z")

    return _PLACEHOLDER.sub(replace, text)


@dataclass(frozen=True)
class FeedTemplate:
    """One bundled feed file split into its head, its items (newest first) and its tail."""

    name: str
    kind: str  # "pr" (RSS) or "sec" (EDGAR Atom)
    head: str
    items: tuple[str, ...]
    tail: str
    encoding: str

    @classmethod
    def parse(cls, name: str, kind: str, text: str) -> FeedTemplate:
        tag = "item" if kind == "pr" else "entry"
        blocks = list(re.finditer(rf"<{tag}\b.*?</{tag}>\s*", text, re.S))
        if not blocks:
            raise ValueError(f"demo feed {name} has no <{tag}> elements")
        match = _ENCODING.match(text)
        return cls(name=name, kind=kind, head=text[:blocks[0].start()],
                   items=tuple(b.group(0) for b in blocks), tail=text[blocks[-1].end():],
                   encoding=match.group(1) if match else "utf-8")

    @property
    def content_type(self) -> str:
        media = "application/rss+xml" if self.kind == "pr" else "application/atom+xml"
        return f"{media}; charset={self.encoding}"

    def render(self, visible: int, now: float) -> bytes:
        """The feed with its ``visible`` oldest items, newest first, dates filled in."""
        shown = self.items[len(self.items) - visible:] if visible > 0 else ()
        text = self.head + "".join(shown) + self.tail
        return fill_dates(text, now, self.kind).encode(self.encoding, "xmlcharrefreplace")


def visible_items(total: int, poll: int, first: float, step: float) -> int:
    """How many items the ``poll``-th poll (1-based) of a feed of ``total`` items shows."""
    shown_first = max(1, math.ceil(total * first))
    shown_step = math.ceil(total * step) if step > 0 else 0
    return min(total, shown_first + (poll - 1) * shown_step)


def _read_data(name: str) -> str:
    return resources.files(DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def load_feed_templates() -> dict[str, FeedTemplate]:
    return {name: FeedTemplate.parse(name, kind, _read_data(f"{name}.xml"))
            for name, kind in DEMO_FEEDS}


# Prices -------------------------------------------------------------------


def _price_round(value: float) -> float:
    return round(value, 2 if value >= 1 else 4)


class DemoPrices:
    """One-minute bars from prices.json: a seeded random walk that ends at ``now``."""

    def __init__(self, specs: dict[str, dict[str, Any]] | None = None):
        if specs is None:
            specs = json.loads(_read_data("prices.json"))["tickers"]
        self.specs = {ticker.upper(): spec for ticker, spec in specs.items()}

    def tickers(self) -> list[str]:
        return sorted(self.specs)

    def payload(self, ticker: str, now: float, bars: int = BARS) -> dict[str, Any] | None:
        """The JSON body for a ticker, or None when the demo has no prices for it."""
        spec = self.specs.get(ticker.upper())
        if spec is None:
            return None
        last_start = int(now) // BAR_SECONDS * BAR_SECONDS  # the bar in progress
        first_start = last_start - (bars - 1) * BAR_SECONDS
        rng = random.Random(f"demo-prices:{ticker.upper()}")  # str seeds are stable across runs
        jumps = {bars - 1 - int(j["minutes_ago"]): float(j["move"]) for j in spec.get("jumps", ())}
        vol = float(spec["volatility"])
        mean_volume = float(spec["volume"])
        anchor = price = float(spec["open"])
        since_jump = 10_000
        out = []
        for i in range(bars):
            log_return = rng.gauss(0.0, vol) - 0.02 * math.log(price / anchor)
            if i in jumps:
                anchor *= 1.0 + jumps[i]
                log_return += math.log(1.0 + jumps[i])
                since_jump = 0
            excitement = 1.0 + 3.0 * math.exp(-since_jump / 12.0)  # volatility after news
            log_return += rng.gauss(0.0, vol) * (excitement - 1.0)
            o = price
            c = price * math.exp(log_return)
            h = max(o, c) * (1.0 + abs(rng.gauss(0.0, vol * 0.6 * excitement)))
            lo = min(o, c) * (1.0 - abs(rng.gauss(0.0, vol * 0.6 * excitement)))
            spike = 1.0 + 14.0 * math.exp(-since_jump / 15.0)
            v = mean_volume * rng.lognormvariate(-0.18, 0.6) * spike
            out.append({"t": first_start + i * BAR_SECONDS, "o": _price_round(o),
                        "h": _price_round(h), "l": _price_round(lo), "c": _price_round(c),
                        "v": int(v)})
            price = c
            since_jump += 1
        return {"ticker": ticker.upper(), "previous_close": spec["previous_close"], "bars": out}


# Server -------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _DemoHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_TIMEOUT_S
    server_version = "CatalystDemo/1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        owner = self.server.owner
        feed = _FEED_PATH.match(path)
        price = _PRICE_PATH.match(path)
        if feed and feed.group(1) in owner.templates:
            body, content_type = owner.serve_feed(feed.group(1))
        elif price:
            payload = owner.serve_prices(price.group(1))
            if payload is None:
                return self._send(404, b'{"error": "unknown ticker"}', "application/json")
            body, content_type = payload, "application/json"
        elif path == "/files/company_tickers.json":
            body, content_type = owner.company_tickers, "application/json"
        else:
            return self._send(404, b"not found\n", "text/plain; charset=utf-8")
        self._send(200, body, content_type)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the demo's console belongs to the alerts


class QuietHTTPServer(ThreadingHTTPServer):
    """A loopback server for which a client hanging up mid-request is not an error."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _DemoHTTPServer(QuietHTTPServer):

    def __init__(self, address: tuple[str, int], owner: DemoFeedServer):
        self.owner = owner
        super().__init__(address, _Handler)


class DemoFeedServer:
    """The demo feeds and prices on 127.0.0.1, served from a daemon thread.

    Use as a context manager (``with DemoFeedServer() as server:``) or call start()/stop().
    ``reveal_first`` and ``reveal_step`` are fractions of a feed's items: the first poll of a
    feed shows the oldest ``reveal_first`` of them, each later poll ``reveal_step`` more.
    """

    def __init__(self, port: int = 0, *, reveal_first: float = 0.6, reveal_step: float = 0.2,
                 clock: Callable[[], float] = time.time):
        if not 0 < reveal_first <= 1 or not 0 <= reveal_step <= 1:
            raise ValueError("reveal_first must be in (0, 1] and reveal_step in [0, 1]")
        self.port = port
        self.reveal_first = reveal_first
        self.reveal_step = reveal_step
        self.clock = clock
        self.templates = load_feed_templates()
        self.prices = DemoPrices()
        self.company_tickers = _read_data("company_tickers.json").encode("utf-8")
        self._lock = threading.Lock()
        self._polls: dict[str, int] = {name: 0 for name in self.templates}
        self._price_requests = 0
        self._httpd: _DemoHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> DemoFeedServer:
        if self._httpd is not None:
            raise RuntimeError("demo server already started")
        self._httpd = _DemoHTTPServer((LOOPBACK, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="demo-feed-server", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> DemoFeedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # what clients configure

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def price_url(self) -> str:
        return self.base_url + "/prices/{ticker}.json"

    @property
    def company_tickers_url(self) -> str:
        return self.base_url + "/files/company_tickers.json"

    def feeds(self) -> list[dict[str, str]]:
        """Feed entries for a configuration: ``{"name", "url", "kind"}``."""
        return [{"name": name, "url": f"{self.base_url}/feeds/{name}.xml", "kind": kind}
                for name, kind in DEMO_FEEDS]

    # counters

    @property
    def polls(self) -> dict[str, int]:
        """Requests served per feed so far."""
        with self._lock:
            return dict(self._polls)

    @property
    def price_requests(self) -> int:
        with self._lock:
            return self._price_requests

    # serving (called from handler threads)

    def serve_feed(self, name: str) -> tuple[bytes, str]:
        template = self.templates[name]
        with self._lock:
            self._polls[name] += 1
            poll = self._polls[name]
        shown = visible_items(len(template.items), poll, self.reveal_first, self.reveal_step)
        return template.render(shown, self.clock()), template.content_type

    def serve_prices(self, ticker: str) -> bytes | None:
        with self._lock:
            self._price_requests += 1
        payload = self.prices.payload(ticker, self.clock())
        return None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
