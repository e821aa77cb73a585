"""One FeedFetcher cycle over 50 slow feeds against the same feeds fetched one by one.

A loopback server answers each of 50 feed paths after 300 ms with a 20-item RSS document,
without validators (so no cycle is shortened by a 304). The fetcher runs several cycles
(fetch, parse, items); the baseline fetches the same 50 URLs sequentially with plain
requests.get (fetch only, no parse), in the same run.

    python benchmarks/fetch_cycle.py [--feeds 50] [--cycles 5] [--workers 64]

Prints a table and a last line ``RESULT feeds=50 cycle_s=.. items_per_s=.. baseline_s=.. ratio=..``
(cycle_s is the median cycle; ratio = baseline_s / cycle_s). Target: cycle_s <= 1.0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.feeds.fetch import FeedFetcher  # noqa: E402
from catalyst_config import config_from_dict  # noqa: E402
from tests.hostile_server import HostileServer, Response, rss  # noqa: E402

TARGET_CYCLE_S = 1.0
SERVER_DELAY_S = 0.3
ITEMS_PER_FEED = 20
# The default fetch.max_workers (16) would take ceil(50 / 16) = 4 rounds of 300 ms.
DEFAULT_WORKERS = 64


def feed_document(feed: int) -> bytes:
    now = time.time()
    return rss([{"title": f"Company {feed} announces result number {i} of its phase 3 trial",
                 "link": f"https://wire.example/news/{feed}/{i}?utm_source=rss",
                 "guid": f"wire-{feed}-{i}", "published": now - 60 * i,
                 "description": f"<p>Company {feed} (NASDAQ: C{feed % 26 + 65:c}X) said item {i} "
                                + "matters because of several reasons. " * 8 + "</p>"}
                for i in range(ITEMS_PER_FEED)]).encode()


def run_cycles(urls: list[str], cycles: int, workers: int) -> tuple[list[float], list[int]]:
    """Wall time and item count of each FeedFetcher cycle over the urls."""
    with tempfile.TemporaryDirectory() as data_dir:
        cfg = config_from_dict({
            "data_dir": data_dir,
            "feeds": [{"name": f"feed-{i}", "url": url, "kind": "pr"} for i, url in enumerate(urls)],
            "fetch": {"max_workers": workers, "connect_timeout_s": 2.0, "read_timeout_s": 5.0}})
        fetcher = FeedFetcher(cfg)
        times, items = [], []
        try:
            for _ in range(cycles):
                started = time.perf_counter()
                results = fetcher.fetch_cycle(cfg.feeds)
                times.append(time.perf_counter() - started)
                bad = [r for r in results if r.status != "ok"]
                if bad:
                    raise SystemExit(f"feed failed: {bad[0].feed}: {bad[0].status} {bad[0].error}")
                items.append(sum(len(r.items) for r in results))
        finally:
            fetcher.close()
    return times, items


def run_baseline(urls: list[str]) -> float:
    """The same feeds one after another with plain requests.get (fetch only)."""
    started = time.perf_counter()
    for url in urls:
        requests.get(url, timeout=(2.0, 5.0)).raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    args = parser.parse_args()

    server = HostileServer().start()
    for feed in range(args.feeds):
        server.route(f"/feed/{feed}", Response(200, feed_document(feed), delay_s=SERVER_DELAY_S,
                                               headers={"Content-Type": "application/rss+xml"}))
    urls = [server.url(f"/feed/{feed}") for feed in range(args.feeds)]
    try:
        cycles, items = run_cycles(urls, args.cycles, args.workers)
        baseline_s = run_baseline(urls)
    finally:
        server.stop()

    cycle_s = statistics.median(cycles)
    items_per_s = statistics.median(items) / cycle_s
    print(f"fetch_cycle: {args.feeds} feeds x {ITEMS_PER_FEED} items, server delay "
          f"{SERVER_DELAY_S * 1000:.0f} ms, max_workers {args.workers}, {args.cycles} cycles")
    print(f"{'variant':<48} {'seconds':>8} {'items':>6}")
    for n, (seconds, count) in enumerate(zip(cycles, items), 1):
        print(f"{f'FeedFetcher.fetch_cycle #{n} (fetch+parse)':<48} {seconds:>8.3f} {count:>6}")
    print(f"{'FeedFetcher.fetch_cycle, median':<48} {cycle_s:>8.3f} {statistics.median(items):>6}")
    print(f"{'baseline: sequential requests.get (fetch only)':<48} {baseline_s:>8.3f} {'-':>6}")
    print(f"target cycle_s <= {TARGET_CYCLE_S:.1f}: {'met' if cycle_s <= TARGET_CYCLE_S else 'MISSED'}")
    print(f"RESULT feeds={args.feeds} cycle_s={cycle_s:.3f} items_per_s={items_per_s:.0f} "
          f"baseline_s={baseline_s:.3f} ratio={baseline_s / cycle_s:.1f}")


if __name__ == "__main__":
    main()
