"""Chart prices from Tiingo and Alpha Vantage, parsed from their real JSON shapes served by
loopback fakes; provider selection from alerts.charts; keys never logged."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from actors.charts import price_provider_from_config
from actors.charts.prices import CachedPrices
from actors.charts.vendors import (
    AlphaVantageProvider,
    TiingoProvider,
    parse_alphavantage,
    parse_tiingo,
)
from actors.errors import ConfigError
from catalyst_config import ChartsConfig, Secrets, config_from_dict
from supervisor.demo_server import QuietHTTPServer

EASTERN = ZoneInfo("America/New_York")
TIINGO_KEY = "tiingo-KEY-0123456789abcdef"
AV_KEY = "AVKEY0123456789"


def tiingo_rows(day: datetime, n: int = 30, start_price: float = 10.0) -> list[dict]:
    """Tiingo IEX bars: UTC ISO dates with milliseconds and Z."""
    open_utc = day.replace(hour=9, minute=30, tzinfo=EASTERN).astimezone(timezone.utc)
    rows = []
    for i in range(n):
        t = open_utc + timedelta(minutes=i)
        p = start_price + i * 0.01
        rows.append({"date": t.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "open": p, "high": p + 0.05,
                     "low": p - 0.05, "close": p + 0.02, "volume": 1000 + i})
    return rows


def av_series(days: list[datetime], minutes: list[tuple[int, int]]) -> dict:
    """Alpha Vantage TIME_SERIES_INTRADAY: Eastern "YYYY-MM-DD HH:MM:SS" keys, newest first,
    values as strings."""
    rows = {}
    for d, day in enumerate(days):
        for i, (h, m) in enumerate(minutes):
            stamp = day.replace(hour=h, minute=m).strftime("%Y-%m-%d %H:%M:%S")
            p = 20.0 + d + i * 0.1
            rows[stamp] = {"1. open": f"{p:.4f}", "2. high": f"{p + 0.2:.4f}",
                           "3. low": f"{p - 0.2:.4f}", "4. close": f"{p + 0.1:.4f}",
                           "5. volume": str(500 + i)}
    ordered = dict(sorted(rows.items(), reverse=True))
    return {"Meta Data": {"1. Information": "Intraday (1min) open, high, low, close prices and "
                                            "volume", "2. Symbol": "ACMB",
                          "3. Last Refreshed": next(iter(ordered)), "4. Interval": "1min",
                          "5. Output Size": "Full size", "6. Time Zone": "US/Eastern"},
            "Time Series (1min)": ordered}


class Vendors:
    """Loopback Tiingo and Alpha Vantage: routes answer what the test set."""

    def __init__(self):
        self.tiingo: dict[str, tuple[int, object]] = {}
        self.tiingo_top: dict[str, tuple[int, object]] = {}
        self.av: dict[str, tuple[int, object]] = {}
        self.seen: list[tuple[str, dict, dict]] = []
        vendors = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                vendors.seen.append((parts.path, query, dict(self.headers)))
                status, body = vendors.answer(parts.path, query, self.headers)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, query: dict, headers) -> tuple[int, object]:
        if path.startswith("/iex/"):
            token = query.get("token") or (headers.get("Authorization") or "")[len("Token "):]
            if token != TIINGO_KEY:
                return 401, {"detail": "Invalid token."}
            parts = path.strip("/").split("/")
            table = self.tiingo if parts[-1] == "prices" else self.tiingo_top
            return table.get(parts[1], (404, {"detail": f"Error: Ticker '{parts[1]}' not found"}))
        if path == "/query":
            if query.get("apikey") != AV_KEY:
                return 200, {"Error Message": "the parameter apikey is invalid or missing."}
            assert query["function"] == "TIME_SERIES_INTRADAY" and query["interval"] == "1min"
            return self.av.get(query["symbol"], (200, {"Error Message": "Invalid API call."}))
        return 404, {}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vendors():
    v = Vendors()
    yield v
    v.close()


DAY1 = datetime(2025, 3, 5)
DAY2 = datetime(2025, 3, 6)


def test_tiingo_iex_intraday_parsed_with_prev_close(vendors):
    vendors.tiingo["acmb"] = (200, tiingo_rows(DAY1, 20, 9.0) + tiingo_rows(DAY2, 30))
    vendors.tiingo_top["acmb"] = (200, [{"ticker": "ACMB", "prevClose": 9.5, "last": 10.3,
                                         "timestamp": "2025-03-06T15:00:00+00:00"}])
    provider = TiingoProvider(TIINGO_KEY, base_url=vendors.base_url)
    series = provider.series("acmb")
    assert series is not None and series.ticker == "ACMB"
    assert len(series.bars) == 30  # the latest session only
    first = datetime.fromtimestamp(series.bars[0].t, EASTERN)
    assert (first.date(), first.hour, first.minute) == (DAY2.date(), 9, 30)
    assert series.bars[0].o == 10.0 and series.bars[0].v == 1000
    assert series.previous_close == 9.5
    path, query, headers = vendors.seen[0]
    assert path == "/iex/acmb/prices" and query["resampleFreq"] == "1min"
    assert "volume" in query["columns"]
    assert headers["Authorization"] == f"Token {TIINGO_KEY}"  # the key is not in the URL
    assert all(TIINGO_KEY not in p + json.dumps(q) for p, q, _ in vendors.seen)
    provider.close()


def test_tiingo_skips_bad_bars_and_counts_failures(vendors):
    rows = tiingo_rows(DAY2, 5)
    rows[1]["close"] = None  # IEX had no trade that minute
    rows[2]["high"], rows[2]["low"] = 1.0, 2.0
    vendors.tiingo["acmb"] = (200, rows)
    vendors.tiingo_top["acmb"] = (500, {"detail": "oops"})
    provider = TiingoProvider(TIINGO_KEY, base_url=vendors.base_url)
    series = provider.series("ACMB")
    assert len(series.bars) == 3 and series.previous_close is None
    assert provider.series("NOPE") is None  # 404 with Tiingo's detail body
    vendors.tiingo["odd"] = (200, {"detail": "Error: Ticker 'ODD' not found"})
    assert provider.series("ODD") is None
    assert TiingoProvider("wrong", base_url=vendors.base_url).series("ACMB") is None
    stats = provider.stats()
    assert stats["ok"] == 1 and stats["not_found"] == 2


def test_parse_tiingo_rejects_garbage():
    with pytest.raises(ValueError):
        parse_tiingo(b"<html>", "ACMB")
    with pytest.raises(ValueError):
        parse_tiingo(b"[]", "ACMB")


def test_alpha_vantage_intraday_parsed_in_eastern_time(vendors):
    minutes = [(9, 30), (9, 31), (15, 59), (16, 0), (19, 59)]
    vendors.av["ACMB"] = (200, av_series([DAY1, DAY2], minutes))
    provider = AlphaVantageProvider(AV_KEY, base_url=vendors.base_url)
    series = provider.series("ACMB")
    assert series is not None and len(series.bars) == len(minutes)
    first = datetime.fromtimestamp(series.bars[0].t, EASTERN)
    assert (first.date(), first.hour, first.minute) == (DAY2.date(), 9, 30)
    assert series.bars[0].t < series.bars[-1].t  # oldest first, though AV sends newest first
    assert series.bars[0].o == pytest.approx(21.0) and series.bars[0].v == 500
    # the previous close is the regular session's last bar (15:59), not the 19:59 one
    assert series.previous_close == pytest.approx(20.0 + 2 * 0.1 + 0.1)
    _, query, _ = vendors.seen[0]
    assert query["outputsize"] == "full" and query["extended_hours"] == "true"
    provider.close()


def test_alpha_vantage_notes_errors_and_bad_keys_are_no_chart(vendors, caplog):
    caplog.set_level(logging.DEBUG, logger="actors")
    vendors.av["BUSY"] = (200, {"Information": "Thank you for using Alpha Vantage! Our standard "
                                               "API rate limit is 25 requests per day."})
    provider = AlphaVantageProvider(AV_KEY, base_url=vendors.base_url)
    assert provider.series("BUSY") is None
    assert provider.series("NOPE") is None
    assert AlphaVantageProvider("bad", base_url=vendors.base_url).series("ACMB") is None
    stats = provider.stats()
    assert stats["rate_limited"] == 1 and stats["not_found"] == 1
    assert AV_KEY not in caplog.text


def test_parse_alphavantage_handles_strings_and_missing_series():
    with pytest.raises(ValueError):
        parse_alphavantage(b'{"Meta Data": {}}', "ACMB")
    body = av_series([DAY2], [(10, 0)])
    body["Time Series (1min)"]["2025-03-06 10:01:00"] = {"1. open": "n/a"}
    series = parse_alphavantage(json.dumps(body).encode(), "ACMB")
    assert len(series.bars) == 1 and series.previous_close is None


def test_config_selects_the_provider_behind_the_bounded_cache(vendors):
    secrets = Secrets({"TIINGO_API_KEY": TIINGO_KEY, "ALPHAVANTAGE_API_KEY": AV_KEY})
    tiingo = price_provider_from_config(
        ChartsConfig(provider="tiingo", base_url=vendors.base_url, cache_size=9), secrets)
    assert isinstance(tiingo, CachedPrices) and isinstance(tiingo.provider, TiingoProvider)
    assert tiingo.maxsize == 9
    av = price_provider_from_config(ChartsConfig(provider="alphavantage",
                                                 base_url=vendors.base_url), secrets)
    assert isinstance(av.provider, AlphaVantageProvider)
    assert price_provider_from_config(ChartsConfig(provider="tiingo"), Secrets({})) is None
    custom = price_provider_from_config(
        ChartsConfig(provider="tiingo", api_key_env="MY_TIINGO"), Secrets({"MY_TIINGO": "k"}))
    assert isinstance(custom.provider, TiingoProvider)


def test_a_vendor_without_its_key_means_no_charts_not_no_alerts(caplog):
    cfg = config_from_dict({"alerts": {"charts": {"provider": "alphavantage"}}},
                           secrets=Secrets({}))
    assert cfg.alerts.charts.key_env() == "ALPHAVANTAGE_API_KEY"
    assert price_provider_from_config(cfg.alerts.charts, cfg.secrets) is None
    assert "ALPHAVANTAGE_API_KEY" in caplog.text
    with pytest.raises(ConfigError) as err:
        config_from_dict({"alerts": {"charts": {"provider": "tiingo", "base_url": "ftp://x"}}})
    assert err.value.path == "alerts.charts.base_url"
