"""Chart render time, and alerts per second through the Discord sink.

Render: actors.charts.render_chart against the same chart through pyplot. Prices come from
the demo server over loopback HTTP (fetched once per ticker, outside the timing); each timed
render draws one chart and writes its PNG. The baseline draws the same artists through
matplotlib.pyplot with default settings (figure size, savefig), in the same process,
interleaved with ours so both see the same machine state.

Delivery: N alerts, each with a rendered chart attached (multipart), posted one after the
other through DiscordSink (as the alert actor's Discord lane does) to the loopback fake
Discord of tests/fake_discord.py, once enforcing Discord's 5 posts per 2 s with real
headers (alerts_per_s: the pace users get; 2.5/s is the steady-state ceiling) and once with
no limit (alerts_per_s_unlimited: our own cost per post). 429s are counted.

    python benchmarks/charts.py [-n 50] [--alerts 30]

Prints a table and a last line
``RESULT render_p50_ms=.. render_p95_ms=.. alerts_per_s=.. ...``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.charts.prices import HttpReplayProvider, PriceSeries  # noqa: E402
from actors.charts.render import render_chart, vwap  # noqa: E402
from actors.sinks.discord import DiscordSink  # noqa: E402
from actors.sinks.discord.pacing import RateLimits  # noqa: E402
from supervisor.demo_server import DemoFeedServer, DemoPrices  # noqa: E402
from tests.fake_discord import FakeDiscord  # noqa: E402

TARGET_P50_MS = 150.0
DISCORD_LIMIT, DISCORD_WINDOW_S = 5, 2.0  # Discord's usual webhook bucket


def demo_cases(server: DemoFeedServer) -> list[tuple[PriceSeries, str, float | None]]:
    """(series, headline, news time) for every demo ticker with a price jump."""
    provider = HttpReplayProvider(server.price_url)
    now = time.time()
    cases = []
    for ticker, spec in DemoPrices().specs.items():
        series = provider.series(ticker)
        if series is None or not spec.get("jumps"):
            continue
        news = now - 60 * spec["jumps"][0]["minutes_ago"]
        cases.append((series, f"{spec['name']} announces a material event (demo headline)", news))
    provider.close()
    return cases


def render_pyplot_baseline(series: PriceSeries, *, title: str, ticker: str,
                           news_time: float | None, path: Path) -> None:
    """The same chart the plain way: pyplot, default figure and savefig settings."""
    import matplotlib

    matplotlib.use("Agg")  # the benchmark must not open windows
    import matplotlib.pyplot as plt
    from matplotlib import dates as mdates

    t = np.array([b.t for b in series.bars])
    h = np.array([b.h for b in series.bars])
    lo = np.array([b.l for b in series.bars])
    c = np.array([b.c for b in series.bars])
    o = np.array([b.o for b in series.bars])
    v = np.array([b.v for b in series.bars])
    x = t / 86400.0
    fig, (ax, axv) = plt.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    ax.plot(x, c, label="Price")
    ax.plot(x, vwap(h, lo, c, v), label="VWAP")
    if series.previous_close is not None:
        ax.axhline(series.previous_close, ls="--", color="gray", label="Prev close")
    axv.vlines(x, 0, v, colors=np.where(c >= o, "green", "red"))
    if news_time is not None:
        for a in (ax, axv):
            a.axvline(news_time / 86400.0, color="red")
    ax.legend()
    ax.set_title(f"{ticker} {title[:70]}")
    axv.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz="America/New_York"))
    plt.savefig(path)
    plt.close(fig)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "max": float(arr.max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--renders", type=int, default=50, help="charts per variant")
    parser.add_argument("--alerts", type=int, default=30,
                        help="alerts posted to the fake Discord per run")
    parser.add_argument("--keep", type=Path, default=None, help="write the PNGs here and keep them")
    args = parser.parse_args(argv)

    with DemoFeedServer() as server:
        cases = demo_cases(server)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args.renders, args.alerts, cases, args.keep)
    with tempfile.TemporaryDirectory(prefix="chart-bench-") as tmp:
        return run(args.renders, args.alerts, cases, Path(tmp))


def post_alerts(n: int, charts: list[Path], *, limit: int, window_s: float) -> dict[str, float]:
    """Posts n alerts with charts through DiscordSink to a fresh fake Discord; times them."""
    with FakeDiscord(limit=limit, window_s=window_s) as discord:
        url = discord.add_webhook()
        sink = DiscordSink(url, name="discord:BENCH", limits=RateLimits(),
                           default_limit=DISCORD_LIMIT, default_window_s=DISCORD_WINDOW_S)
        now = time.time()
        start = time.perf_counter()
        for i in range(n):
            record = {"key": f"bench-{i}", "title": f"Bench Corp {i} Receives FDA Approval",
                      "link": f"https://news.example.com/{i}", "source": "bench",
                      "tickers": ["ACMB"], "category": "fda_approval", "score": 0.9,
                      "sentiment": 0.7, "summary": "A material event.", "published": now}
            sink.deliver(record, str(charts[i % len(charts)]))
        elapsed = time.perf_counter() - start
        sink.close()
        received = discord.received()
        assert len(received) == n and all(m.files for m in received), "alerts went missing"
        return {"alerts_per_s": n / elapsed, "elapsed_s": elapsed,
                "rate_limited": float(discord.count(429))}


def run(renders: int, alerts: int, cases: list[tuple[PriceSeries, str, float | None]],
        out_dir: Path) -> int:
    series, headline, news = cases[0]
    cold_start = time.perf_counter()
    render_chart(series, title=headline, ticker=series.ticker, news_time=news,
                 path=out_dir / "cold.png")
    cold_ms = (time.perf_counter() - cold_start) * 1000
    render_pyplot_baseline(series, title=headline, ticker=series.ticker, news_time=news,
                           path=out_dir / "cold-baseline.png")

    ours, baseline, sizes = [], [], []
    for i in range(renders):
        series, headline, news = cases[i % len(cases)]
        target = out_dir / f"{i:03d}-{series.ticker}.png"
        start = time.perf_counter()
        render_chart(series, title=headline, ticker=series.ticker, news_time=news, path=target)
        ours.append((time.perf_counter() - start) * 1000)
        sizes.append(target.stat().st_size)
        start = time.perf_counter()
        render_pyplot_baseline(series, title=headline, ticker=series.ticker, news_time=news,
                               path=out_dir / f"{i:03d}-{series.ticker}-baseline.png")
        baseline.append((time.perf_counter() - start) * 1000)

    mine, base = percentiles(ours), percentiles(baseline)
    ratio = base["p50"] / mine["p50"]
    bars = len(cases[0][0].bars)
    print(f"charts: {renders} renders per variant, {bars} one-minute bars, "
          f"{len(cases)} demo tickers, PNG {np.median(sizes) / 1024:.0f} KB median")
    print(f"first render in this process (fonts, caches): {cold_ms:.0f} ms")
    print(f"{'variant':<44} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    print(f"{'render_chart (Figure + FigureCanvasAgg)':<44} "
          f"{mine['p50']:>8.1f} {mine['p95']:>8.1f} {mine['max']:>8.1f}")
    print(f"{'baseline: pyplot, default settings':<44} "
          f"{base['p50']:>8.1f} {base['p95']:>8.1f} {base['max']:>8.1f}")
    print(f"ratio (baseline p50 / ours p50): {ratio:.2f}   target: p50 <= {TARGET_P50_MS:.0f} ms "
          f"({'met' if mine['p50'] <= TARGET_P50_MS else 'MISSED'})")

    charts = sorted(p for p in out_dir.glob("*.png") if "baseline" not in p.name)
    paced = post_alerts(alerts, charts, limit=DISCORD_LIMIT, window_s=DISCORD_WINDOW_S)
    free = post_alerts(alerts, charts, limit=1_000_000, window_s=DISCORD_WINDOW_S)
    print()
    print(f"discord: {alerts} alerts with a chart each, posted through DiscordSink "
          "(multipart, ?wait=true) to the loopback fake")
    print(f"{'fake Discord':<44} {'alerts/s':>8} {'total s':>8} {'429s':>8}")
    print(f"{f'{DISCORD_LIMIT} posts / {DISCORD_WINDOW_S:.0f} s per webhook (real headers)':<44} "
          f"{paced['alerts_per_s']:>8.2f} {paced['elapsed_s']:>8.2f} {paced['rate_limited']:>8.0f}")
    print(f"{'no limit (our cost per post)':<44} "
          f"{free['alerts_per_s']:>8.1f} {free['elapsed_s']:>8.2f} {free['rate_limited']:>8.0f}")
    ceiling = DISCORD_LIMIT / DISCORD_WINDOW_S
    print(f"Discord's steady-state ceiling: {ceiling:.1f} alerts/s; the first {DISCORD_LIMIT} "
          "go at once, so a short burst measures a little above it")
    print(f"RESULT render_p50_ms={mine['p50']:.1f} render_p95_ms={mine['p95']:.1f} "
          f"alerts_per_s={paced['alerts_per_s']:.2f} "
          f"alerts_per_s_unlimited={free['alerts_per_s']:.1f} "
          f"discord_429s={paced['rate_limited']:.0f} "
          f"baseline_p50_ms={base['p50']:.1f} ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
