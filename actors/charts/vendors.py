"""Price vendors behind the PriceProvider interface: Tiingo (IEX intraday) and Alpha Vantage
(TIME_SERIES_INTRADAY), one-minute bars of the latest trading day and the previous close.

Each parser takes the vendor's real JSON shape and keeps only bars that make sense (positive
prices, high >= low, finite numbers); anything else is a VendorAnswer, counted by kind.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import requests

from actors.charts.prices import (
    MAX_BARS,
    HttpPriceProvider,
    PriceBar,
    PriceSeries,
    VendorAnswer,
)

VENDOR_MAX_BYTES = 16_000_000  # Alpha Vantage's "full" intraday answer is a month of minutes
EASTERN = ZoneInfo("America/New_York")
REGULAR_CLOSE = (16, 0)  # US equities' regular session ends at 16:00 Eastern


def _bar(t: float, o: Any, h: Any, lo: Any, c: Any, v: Any) -> PriceBar | None:
    """A bar from a vendor's numbers (strings allowed), or None when they are not a bar."""
    try:
        o, h, lo, c = float(o), float(h), float(lo), float(c)
        v = float(v) if v is not None else 0.0
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(x) for x in (t, o, h, lo, c, v)):
        return None
    if min(o, h, lo, c) <= 0 or v < 0 or h < lo or t < 0:
        return None
    return PriceBar(t=t, o=o, h=h, l=lo, c=c, v=v)


def _latest_session(bars: list[PriceBar], tz: ZoneInfo = EASTERN) -> tuple[list[PriceBar],
                                                                         list[PriceBar]]:
    """(the last trading day's bars, the day before's), by the exchange's calendar date."""
    bars = sorted(bars, key=lambda b: b.t)
    if not bars:
        return [], []
    day = lambda b: datetime.fromtimestamp(b.t, tz).date()  # noqa: E731
    last = day(bars[-1])
    today = [b for b in bars if day(b) == last]
    earlier = [b for b in bars if day(b) < last]
    before = day(earlier[-1]) if earlier else None
    return today[-MAX_BARS:], [b for b in earlier if day(b) == before]


def _regular_close(bars: list[PriceBar], tz: ZoneInfo = EASTERN) -> float | None:
    """The close of a day's regular session: its last bar starting before 16:00."""
    regular = [b for b in bars
               if (datetime.fromtimestamp(b.t, tz).hour, datetime.fromtimestamp(b.t, tz).minute)
               < REGULAR_CLOSE]
    chosen = regular or bars
    return chosen[-1].c if chosen else None


class _TiingoBar(msgspec.Struct):
    date: str
    open: float | None = None
    high: float | None = None
    low: float | None = None
    close: float | None = None
    volume: float | None = None


_tiingo_bars = msgspec.json.Decoder(list[_TiingoBar])


def _iso_epoch(text: str) -> float:
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def parse_tiingo(body: bytes, ticker: str, previous_close: float | None = None) -> PriceSeries:
    """Tiingo IEX intraday (``/iex/<ticker>/prices``): a list of {date, open, high, low,
    close, volume}; the last day's bars are kept."""
    try:
        rows = _tiingo_bars.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        try:  # Tiingo answers errors as {"detail": "..."} with 200 for unknown tickers
            detail = json.loads(body).get("detail")
        except (ValueError, AttributeError):
            detail = None
        if detail:
            raise VendorAnswer(f"tiingo {ticker}: {str(detail)[:120]}", "not_found") from None
        raise VendorAnswer(f"tiingo {ticker}: not a list of bars") from None
    bars = []
    for row in rows:
        try:
            t = _iso_epoch(row.date)
        except ValueError:
            continue
        bar = _bar(t, row.open, row.high, row.low, row.close, row.volume)
        if bar is not None:
            bars.append(bar)
    today, _ = _latest_session(bars)
    if not today:
        raise VendorAnswer(f"tiingo {ticker}: no usable bars", "not_found")
    return PriceSeries(ticker=ticker, previous_close=previous_close, bars=today)


def parse_tiingo_prev_close(body: bytes) -> float | None:
    """``prevClose`` from Tiingo's IEX top-of-book answer (``/iex/<ticker>``), if usable."""
    try:
        rows = json.loads(body)
        value = float(rows[0]["prevClose"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return value if math.isfinite(value) and value > 0 else None


class TiingoProvider(HttpPriceProvider):
    """IEX intraday one-minute bars through Tiingo; the key goes in a header, never the URL."""

    BASE_URL = "https://api.tiingo.com"

    def __init__(self, api_key: str, *, base_url: str | None = None, after_hours: bool = True,
                 **http: Any):
        super().__init__(**http)
        self._headers = {"Authorization": f"Token {api_key}", "Accept": "application/json"}
        self.base_url = (base_url or self.BASE_URL).rstrip("/")
        self.after_hours = after_hours

    def _fetch(self, symbol: str) -> PriceSeries | None:
        path = f"{self.base_url}/iex/{quote(symbol.lower(), safe='')}"
        query = urlencode({"resampleFreq": "1min", "columns": "open,high,low,close,volume",
                           "afterHours": str(self.after_hours).lower()})
        body = self._get(f"{path}/prices?{query}", symbol, self._headers)
        if body is None:
            return None
        series = parse_tiingo(body, symbol)
        try:  # the previous close is a nicety: its failure still leaves a chart
            top = self._get(path, symbol, self._headers)
        except requests.RequestException:
            top = None
        series.previous_close = parse_tiingo_prev_close(top) if top else None
        return series


def parse_alphavantage(body: bytes, ticker: str) -> PriceSeries:
    """Alpha Vantage TIME_SERIES_INTRADAY: "Time Series (1min)" keyed by "YYYY-MM-DD HH:MM:SS"
    in the zone Meta Data names (US/Eastern), values "1. open" ... "5. volume" as strings.
    The last day's bars are kept; the day before gives the previous close."""
    try:
        data = json.loads(body)
    except ValueError:
        raise VendorAnswer(f"alphavantage {ticker}: not JSON") from None
    if not isinstance(data, dict):
        raise VendorAnswer(f"alphavantage {ticker}: not an object")
    if "Error Message" in data:
        raise VendorAnswer(f"alphavantage {ticker}: {str(data['Error Message'])[:120]}",
                           "not_found")
    for notice in ("Note", "Information"):  # the free tier's limit, answered with 200
        if notice in data and not any(k.startswith("Time Series") for k in data):
            raise VendorAnswer(f"alphavantage {ticker}: {str(data[notice])[:120]}",
                               "rate_limited")
    rows = next((v for k, v in data.items() if k.startswith("Time Series")), None)
    if not isinstance(rows, dict):
        raise VendorAnswer(f"alphavantage {ticker}: no time series")
    meta = data.get("Meta Data") if isinstance(data.get("Meta Data"), dict) else {}
    zone_name = next((v for k, v in meta.items() if k.endswith("Time Zone")), "US/Eastern")
    try:
        zone = ZoneInfo("America/New_York" if zone_name == "US/Eastern" else str(zone_name))
    except (ZoneInfoNotFoundError, ValueError):
        zone = EASTERN
    bars = []
    for stamp, values in rows.items():
        if not isinstance(values, dict):
            continue
        try:
            t = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone).timestamp()
        except (TypeError, ValueError):
            continue
        bar = _bar(t, values.get("1. open"), values.get("2. high"), values.get("3. low"),
                   values.get("4. close"), values.get("5. volume"))
        if bar is not None:
            bars.append(bar)
    today, before = _latest_session(bars, zone)
    if not today:
        raise VendorAnswer(f"alphavantage {ticker}: no usable bars", "not_found")
    return PriceSeries(ticker=ticker, previous_close=_regular_close(before, zone), bars=today)


class AlphaVantageProvider(HttpPriceProvider):
    """One-minute bars from Alpha Vantage. Its key must go in the query (``apikey``): the URL
    is therefore never logged, and failures are logged by type only."""

    BASE_URL = "https://www.alphavantage.co"

    def __init__(self, api_key: str, *, base_url: str | None = None, outputsize: str = "full",
                 extended_hours: bool = True, **http: Any):
        http.setdefault("max_bytes", VENDOR_MAX_BYTES)
        super().__init__(**http)
        self._api_key = api_key
        self.base_url = (base_url or self.BASE_URL).rstrip("/")
        self.outputsize = outputsize
        self.extended_hours = extended_hours

    def _fetch(self, symbol: str) -> PriceSeries | None:
        query = urlencode({"function": "TIME_SERIES_INTRADAY", "symbol": symbol,
                           "interval": "1min", "outputsize": self.outputsize,
                           "extended_hours": str(self.extended_hours).lower(),
                           "apikey": self._api_key})
        body = self._get(f"{self.base_url}/query?{query}", symbol)
        return None if body is None else parse_alphavantage(body, symbol)
