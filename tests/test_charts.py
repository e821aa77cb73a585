"""Alert charts and their price data: rendering, the HTTP provider and the bounded cache."""

from __future__ import annotations

import gc
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from matplotlib import _pylab_helpers

from actors.charts import price_provider_from_config
from actors.charts.prices import (
    CachedPrices,
    HttpReplayProvider,
    PriceBar,
    PriceProvider,
    PriceSeries,
    parse_series,
)
from actors.charts.render import render_chart
from catalyst_config import ChartsConfig
from supervisor.demo_server import DemoFeedServer
from tests.conftest import free_port

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADLINE = ("Acme Biosciences Receives FDA Approval of ZELVANTRA (acmetinib) for Relapsed "
            "Follicular Lymphoma After Two or More Lines of Systemic Therapy")


@pytest.fixture(scope="module")
def demo():
    with DemoFeedServer() as server:
        yield server


@pytest.fixture(scope="module")
def acmb(demo) -> PriceSeries:
    provider = HttpReplayProvider(demo.price_url)
    series = provider.series("ACMB")
    provider.close()
    assert series is not None
    return series


def assert_png(path, min_bytes=10_000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes


# Rendering ----------------------------------------------------------------


def test_chart_from_demo_prices_is_a_png(acmb, tmp_path):
    news = acmb.bars[-11].t + 20
    out = render_chart(acmb, title=HEADLINE, ticker="ACMB", news_time=news,
                       path=tmp_path / "charts" / "acmb.png")
    assert out == tmp_path / "charts" / "acmb.png"
    assert_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["acmb.png"], "a temp file was left behind"


def test_chart_replaces_an_existing_file_whole(acmb, tmp_path):
    target = tmp_path / "acmb.png"
    target.write_bytes(b"old")
    render_chart(acmb, title=HEADLINE, ticker="ACMB", news_time=None, path=str(target))
    assert_png(target)


def test_empty_series_raises_value_error_and_writes_nothing(tmp_path):
    empty = PriceSeries(ticker="ACMB", previous_close=4.12, bars=[])
    with pytest.raises(ValueError, match="no price bars"):
        render_chart(empty, title=HEADLINE, ticker="ACMB", news_time=None, path=tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("previous_close", [4.12, None])
def test_single_bar_still_renders(tmp_path, previous_close):
    bar = PriceBar(t=1_795_000_000.0, o=4.1, h=4.2, l=4.0, c=4.15, v=0.0)
    series = PriceSeries(ticker="ACMB", previous_close=previous_close, bars=[bar])
    out = render_chart(series, title="x", ticker="ACMB", news_time=bar.t + 10,
                       path=tmp_path / "one.png")
    assert_png(out, min_bytes=1_000)


def test_news_time_off_the_chart_and_sub_dollar_prices(tmp_path):
    bars = [PriceBar(t=1_795_000_000.0 + 60 * i, o=0.41, h=0.42, l=0.40, c=0.41 + 0.001 * (i % 5),
                     v=1000.0 * i) for i in range(120)]
    series = PriceSeries(ticker="CRPT", previous_close=0.4, bars=bars)
    out = render_chart(series, title="Coralpoint Announces 1-for-20 Reverse Stock Split",
                       ticker="CRPT", news_time=1_700_000_000.0, path=tmp_path / "crpt.png")
    assert_png(out)


def test_rendering_leaves_no_pyplot_figures_and_works_in_threads(acmb, tmp_path):
    before = _pylab_helpers.Gcf.get_num_fig_managers()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            render_chart(acmb, title=HEADLINE, ticker="ACMB", news_time=acmb.bars[200].t,
                         path=tmp_path / f"t{n}.png")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert not errors
    for n in range(3):
        assert_png(tmp_path / f"t{n}.png")
    assert _pylab_helpers.Gcf.get_num_fig_managers() == before


def render_in_new_thread(series, path, **kwargs) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            render_chart(series, path=path, **kwargs)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and not errors, errors


def test_a_chart_carries_nothing_over_from_the_previous_one(acmb, tmp_path):
    other = PriceSeries(ticker="CRPT", previous_close=None,
                        bars=[PriceBar(t=acmb.bars[0].t + 60 * i, o=0.4, h=0.41, l=0.39, c=0.4,
                                       v=10.0) for i in range(30)])
    kwargs = {"title": HEADLINE, "ticker": "ACMB", "news_time": acmb.bars[300].t}
    render_in_new_thread(acmb, tmp_path / "fresh.png", **kwargs)  # a thread's first figure
    render_chart(other, title="other", ticker="CRPT", news_time=None, path=tmp_path / "o.png")
    render_chart(acmb, path=tmp_path / "redrawn.png", **kwargs)
    assert (tmp_path / "fresh.png").read_bytes() == (tmp_path / "redrawn.png").read_bytes()


def test_a_failed_write_does_not_spoil_the_next_chart(acmb, tmp_path):
    kwargs = {"title": HEADLINE, "ticker": "ACMB", "news_time": acmb.bars[300].t}
    render_in_new_thread(acmb, tmp_path / "fresh.png", **kwargs)
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OSError):
        render_chart(acmb, path=tmp_path / "file" / "x.png", **kwargs)
    render_chart(acmb, path=tmp_path / "after.png", **kwargs)
    assert (tmp_path / "fresh.png").read_bytes() == (tmp_path / "after.png").read_bytes()


def test_many_charts_leave_no_objects_behind(acmb, tmp_path):
    kwargs = {"title": HEADLINE, "ticker": "ACMB", "news_time": acmb.bars[300].t,
              "path": tmp_path / "loop.png"}
    render_chart(acmb, **kwargs)
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(60):
        render_chart(acmb, **kwargs)
    gc.collect()
    assert len(gc.get_objects()) - before < 200


# HTTP provider ------------------------------------------------------------


class _Bodies(BaseHTTPRequestHandler):
    """Serves canned bodies by path (tickers arrive upper-cased): /GOOD, /GARBAGE, ..."""

    bodies = {
        "/GOOD": (200, json.dumps({"ticker": "X", "previous_close": 2.0, "bars": [
            {"t": 60, "o": 2, "h": 2.1, "l": 1.9, "c": 2.05, "v": 5}]})),
        "/GARBAGE": (200, "this is not json {"),
        "/BAD-SHAPE": (200, json.dumps({"ticker": "X", "bars": [{"t": 60, "o": -1, "h": 1, "l": 1,
                                                                  "c": 1}]})),
        "/HUGE": (200, json.dumps({"ticker": "X", "bars": [], "pad": "x" * 1_100_000})),
        "/ERROR": (500, "boom"),
    }

    def do_GET(self):  # noqa: N802
        streamed = self.path == "/STREAMED"  # no Content-Length: the body ends when we close
        status, body = self.bodies.get("/HUGE" if streamed else self.path, (404, "missing"))
        data = body.encode()
        self.send_response(status)
        if not streamed:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the provider hung up on an oversized body, as it should

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def canned():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Bodies)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_provider_turns_every_failure_into_no_chart(canned):
    provider = HttpReplayProvider(canned + "/{ticker}", connect_timeout_s=1, read_timeout_s=2)
    try:
        assert provider.series("good").bars[0].c == 2.05
        for path in ("garbage", "bad-shape", "huge", "streamed", "error", "missing"):
            assert provider.series(path) is None, path
        assert provider.series("../etc") is None
        stats = provider.stats()
    finally:
        provider.close()
    assert stats["ok"] == 1 and stats["not_found"] == 1 and stats["failed"] == 1
    assert stats["bad_payload"] == 2 and stats["too_large"] == 2 and stats["bad_ticker"] == 1



def test_provider_gives_up_on_a_dead_server_quickly():
    provider = HttpReplayProvider(f"http://127.0.0.1:{free_port()}/{{ticker}}",
                                  connect_timeout_s=0.5, read_timeout_s=0.5)
    started = time.monotonic()
    assert provider.series("ACMB") is None
    assert time.monotonic() - started < 3.0
    assert provider.stats()["failed"] == 1


def test_unknown_demo_ticker_is_no_data(demo):
    provider = HttpReplayProvider(demo.price_url)
    assert provider.series("NOPE") is None
    assert provider.stats()["not_found"] == 1
    provider.close()


def test_parse_series_sorts_bars_and_rejects_inverted_ones():
    body = json.dumps({"ticker": "X", "bars": [{"t": 120, "o": 1, "h": 1, "l": 1, "c": 1},
                                               {"t": 60, "o": 1, "h": 1, "l": 1, "c": 1}]})
    assert [b.t for b in parse_series(body.encode(), "X").bars] == [60, 120]
    inverted = json.dumps({"ticker": "X", "bars": [{"t": 60, "o": 1, "h": 0.5, "l": 2, "c": 1}]})
    with pytest.raises(ValueError):
        parse_series(inverted.encode(), "X")


def test_config_builds_a_cached_provider_or_none(demo):
    assert price_provider_from_config(ChartsConfig(price_url=None)) is None
    assert price_provider_from_config(ChartsConfig(enabled=False, price_url=demo.price_url)) is None
    provider = price_provider_from_config(ChartsConfig(price_url=demo.price_url, cache_size=7))
    assert isinstance(provider, CachedPrices) and provider.maxsize == 7
    assert provider.series("ACMB") is not None
    provider.close()


# Cache --------------------------------------------------------------------


class CountingProvider(PriceProvider):
    def __init__(self, known=("ACMB", "ARDR")):
        self.known = set(known)
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def series(self, ticker):
        with self.lock:
            self.calls[ticker] = self.calls.get(ticker, 0) + 1
        if ticker not in self.known:
            return None
        return PriceSeries(ticker=ticker, bars=[PriceBar(t=60, o=1, h=1, l=1, c=1)])


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_second_request_is_served_from_the_cache():
    inner = CountingProvider()
    cache = CachedPrices(inner, maxsize=8, ttl_s=60)
    first = cache.series("ACMB")
    assert cache.series("ACMB") is first
    assert inner.calls == {"ACMB": 1}
    assert (cache.hits, cache.misses) == (1, 1)


def test_no_data_is_cached_briefly_and_data_until_its_ttl():
    clock = FakeClock()
    inner = CountingProvider()
    cache = CachedPrices(inner, maxsize=8, ttl_s=300, negative_ttl_s=30, timer=clock)
    assert cache.series("NOPE") is None and cache.series("NOPE") is None
    assert cache.series("ACMB") is not None
    assert inner.calls == {"NOPE": 1, "ACMB": 1}
    clock.now += 31
    cache.series("NOPE")
    cache.series("ACMB")
    assert inner.calls == {"NOPE": 2, "ACMB": 1}
    clock.now += 300
    cache.series("ACMB")
    assert inner.calls["ACMB"] == 2


def test_cache_never_exceeds_maxsize_and_evicts_least_recent():
    inner = CountingProvider(known=[f"T{i}" for i in range(100)])
    cache = CachedPrices(inner, maxsize=5, ttl_s=600)
    for i in range(100):
        cache.series(f"T{i}")
        cache.series("T0")  # kept hot
        assert len(cache) <= 5
    assert len(cache) == 5
    assert inner.calls["T0"] == 1
    cache.series("T1")
    assert inner.calls["T1"] == 2


def test_cache_is_safe_under_concurrent_use():
    inner = CountingProvider(known=[f"T{i}" for i in range(20)])
    cache = CachedPrices(inner, maxsize=10, ttl_s=600)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(500):
                cache.series(f"T{(i * seed) % 20}")
                assert len(cache) <= 10
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 3, 7, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert cache.hits + cache.misses == 2000
