"""Intraday price bars for alert charts: providers behind one small interface, and a cache.

A provider answers ``series(ticker)`` with a PriceSeries or None. None means "no chart",
never "no alert": providers log and count their failures instead of raising them. Three
speak HTTP: HttpReplayProvider here (our JSON shape: the demo server, a replay), and the
vendors in price_vendors.py, TiingoProvider (IEX intraday) and AlphaVantageProvider
(TIME_SERIES_INTRADAY). API keys come from the environment through Secrets and are never
logged (no URL is).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from typing import Annotated, Any, Callable
from urllib.parse import quote

import msgspec
import requests
from cachetools import TTLCache

log = logging.getLogger(__name__)

MAX_PRICE_BYTES = 1_000_000
MAX_BARS = 5_000
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 2.0
NEGATIVE_TTL_S = 30.0  # how long "no data for this ticker" is remembered

_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,15}$")

Price = Annotated[float, msgspec.Meta(gt=0)]
Volume = Annotated[float, msgspec.Meta(ge=0)]


class PriceBar(msgspec.Struct, frozen=True):
    """One bar; ``t`` is its start in epoch seconds."""

    t: Annotated[float, msgspec.Meta(ge=0)]
    o: Price
    h: Price
    l: Price  # noqa: E741 (the field's name in the wire format)
    c: Price
    v: Volume = 0.0


class PriceSeries(msgspec.Struct, kw_only=True):
    """Bars for one ticker, oldest first, and the previous session's close when known."""

    ticker: str
    previous_close: Price | None = None
    bars: Annotated[list[PriceBar], msgspec.Meta(max_length=MAX_BARS)] = []


_series_decoder = msgspec.json.Decoder(PriceSeries)


def parse_series(body: bytes, ticker: str) -> PriceSeries:
    """Decodes and checks a JSON body; raises ValueError when it is not a usable series."""
    try:
        series = _series_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"price data for {ticker}: {exc}") from None
    for bar in series.bars:
        if not all(math.isfinite(x) for x in (bar.t, bar.o, bar.h, bar.l, bar.c, bar.v)):
            raise ValueError(f"price data for {ticker}: a bar has a non-finite value")
        if bar.h < bar.l:
            raise ValueError(f"price data for {ticker}: a bar's high is below its low")
    if series.previous_close is not None and not math.isfinite(series.previous_close):
        raise ValueError(f"price data for {ticker}: previous_close is not finite")
    bars = sorted(series.bars, key=lambda b: b.t)
    return PriceSeries(ticker=ticker, previous_close=series.previous_close, bars=bars)


class VendorAnswer(ValueError):
    """A price vendor's answer that is not data; ``count`` names the stat it counts as."""

    def __init__(self, message: str, count: str = "bad_payload"):
        super().__init__(message)
        self.count = count


def normalise_ticker(ticker: str) -> str | None:
    ticker = ticker.strip().upper()
    return ticker if _TICKER.match(ticker) else None


class PriceProvider:
    """Where chart prices come from. Subclasses override series(); close() is optional."""

    def series(self, ticker: str) -> PriceSeries | None:
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


class HttpPriceProvider(PriceProvider):
    """What every provider over HTTP shares: a Session per thread, timeouts, a body size
    limit, a wall deadline, and counts. URLs may carry an API key, so none is ever logged."""

    def __init__(self, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S, deadline_s: float | None = None,
                 max_bytes: int = MAX_PRICE_BYTES, user_agent: str = "catalyst-supervisor"):
        self.timeout = (connect_timeout_s, read_timeout_s)
        # read_timeout_s bounds each read; the deadline bounds a body that trickles in.
        if deadline_s is None:
            deadline_s = connect_timeout_s + read_timeout_s
        self.deadline_s = deadline_s
        self.max_bytes = max_bytes
        self.user_agent = user_agent
        self._local = threading.local()  # a Session per thread: Sessions are not thread-safe
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "ok": 0, "not_found": 0, "failed": 0, "bad_payload": 0,
                        "too_large": 0, "bad_ticker": 0, "unauthorized": 0, "rate_limited": 0}

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.user_agent
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def series(self, ticker: str) -> PriceSeries | None:
        symbol = normalise_ticker(ticker)
        if symbol is None:
            self._count("bad_ticker")
            return None
        self._count("requests")
        try:
            series = self._fetch(symbol)
        except requests.RequestException as exc:
            self._count("failed")
            log.debug("prices for %s: %s", symbol, type(exc).__name__)
            return None
        except ValueError as exc:
            self._count(getattr(exc, "count", "bad_payload"))
            log.debug("%s", exc)
            return None
        if series is not None:
            self._count("ok")
        return series

    def _fetch(self, symbol: str) -> PriceSeries | None:
        """The series for a normalised symbol; None (counted) or ValueError when unusable."""
        raise NotImplementedError

    def _get(self, url: str, symbol: str, headers: dict[str, str] | None = None) -> bytes | None:
        deadline = time.monotonic() + self.deadline_s
        with self._session().get(url, timeout=self.timeout, stream=True,
                                 headers=headers) as response:
            if response.status_code == 404:
                self._count("not_found")
                return None
            if response.status_code in (401, 403):
                self._count("unauthorized")
                log.debug("prices for %s: HTTP %s (API key?)", symbol, response.status_code)
                return None
            if response.status_code == 429:
                self._count("rate_limited")
                return None
            if response.status_code != 200:
                self._count("failed")
                log.debug("prices for %s: HTTP %s", symbol, response.status_code)
                return None
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                self._count("too_large")
                return None
            chunks, size = [], 0
            for chunk in response.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > self.max_bytes:
                    self._count("too_large")
                    log.debug("prices for %s: body over %d bytes", symbol, self.max_bytes)
                    return None
                if time.monotonic() > deadline:
                    self._count("failed")
                    log.debug("prices for %s: body slower than %.1fs", symbol, self.deadline_s)
                    return None
                chunks.append(chunk)
            return b"".join(chunks)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


class HttpReplayProvider(HttpPriceProvider):
    """Bars from a URL template that returns our JSON shape (the demo server, or a replay).

    ``price_url`` may carry an API token in its query, so it is never logged.
    """

    def __init__(self, price_url: str, **http: Any):
        if "{ticker}" not in price_url:
            raise ValueError('price_url must contain "{ticker}"')
        super().__init__(**http)
        self.price_url = price_url

    def _fetch(self, symbol: str) -> PriceSeries | None:
        body = self._get(self.price_url.format(ticker=quote(symbol, safe="")), symbol)
        return None if body is None else parse_series(body, symbol)


_MISSING = object()


class CachedPrices(PriceProvider):
    """A bounded TTL + LRU cache in front of a provider; "no data" is remembered briefly.

    Thread-safe. The lock guards the cache only, never a fetch: two threads missing the same
    ticker at once both ask the provider, which is cheaper than making one wait on the other.
    """

    def __init__(self, provider: PriceProvider, *, maxsize: int = 256, ttl_s: float = 300.0,
                 negative_ttl_s: float = NEGATIVE_TTL_S,
                 timer: Callable[[], float] = time.monotonic):
        self.provider = provider
        self.negative_ttl_s = negative_ttl_s
        self._timer = timer
        # TTLCache evicts least recently used entries first once maxsize is reached.
        self._cache: TTLCache[str, tuple[float, PriceSeries | None]] = TTLCache(
            maxsize=maxsize, ttl=ttl_s, timer=timer)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def maxsize(self) -> int:
        return int(self._cache.maxsize)

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def series(self, ticker: str) -> PriceSeries | None:
        key = normalise_ticker(ticker) or ticker
        with self._lock:
            entry: Any = self._cache.get(key, _MISSING)
            if entry is not _MISSING:
                stored_at, value = entry
                if value is not None or self._timer() - stored_at < self.negative_ttl_s:
                    self.hits += 1
                    return value
            self.misses += 1
        value = self.provider.series(ticker)
        with self._lock:
            self._cache[key] = (self._timer(), value)
        return value

    def stats(self) -> dict[str, int]:
        with self._lock:
            own = {"cache_hits": self.hits, "cache_misses": self.misses,
                   "cache_size": len(self._cache), "cache_maxsize": self.maxsize}
        return {**self.provider.stats(), **own}

    def close(self) -> None:
        self.provider.close()
