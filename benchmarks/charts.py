"""Chart render time: actors.charts.render_chart against the same chart through pyplot.

Prices come from the demo server over loopback HTTP (fetched once per ticker, outside the
timing); each timed render draws one chart and writes its PNG. The baseline draws the same
artists through matplotlib.pyplot with default settings (figure size, savefig), in the same
process, interleaved with ours so both see the same machine state.

    python benchmarks/charts.py [-n 50]

Prints a table and a last line ``RESULT render_p50_ms=.. render_p95_ms=.. alerts_per_s=NA ...``
(alerts_per_s is filled in once the Discord sink is benchmarked).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.charts import render_chart, vwap  # noqa: E402
from actors.prices import HttpReplayProvider, PriceSeries  # noqa: E402
from supervisor.demo_server import DemoFeedServer, DemoPrices  # noqa: E402

TARGET_P50_MS = 150.0


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
    parser.add_argument("--keep", type=Path, default=None, help="write the PNGs here and keep them")
    args = parser.parse_args(argv)

    with DemoFeedServer() as server:
        cases = demo_cases(server)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args.renders, cases, args.keep)
    with tempfile.TemporaryDirectory(prefix="chart-bench-") as tmp:
        return run(args.renders, cases, Path(tmp))


def run(renders: int, cases: list[tuple[PriceSeries, str, float | None]], out_dir: Path) -> int:
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
    print(f"RESULT render_p50_ms={mine['p50']:.1f} render_p95_ms={mine['p95']:.1f} alerts_per_s=NA "
          f"baseline_p50_ms={base['p50']:.1f} ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
