"""Gemini classification throughput against a fake generateContent answering in 200 ms.

The fake (tests/fake_gemini.py) runs in its own process and answers every request after
--latency seconds, with a valid structured answer for every headline in it. Each run
drives a GeminiClassifier the way the llm actor does (submit while the backlog has room,
wait on the wake socket, collect answers) over unique items, with a fresh cache:

    baseline     one request per item, one at a time (max_concurrency 1, batch_size 1)
    concurrency  one request per item, max_concurrency requests in flight
    default      max_concurrency in flight and up to batch_size headlines a request
    redelivery   the default run's items again: answered from the cache

requests_per_minute is raised out of the way (the limiter would otherwise be what is
measured); everything else is the configured default.

    python benchmarks/llm_throughput.py [--items 1000] [--baseline-items 50] [--latency 0.2]

Prints a table and a last line
``RESULT items_per_s=.. calls_per_1000=.. baseline_items_per_s=.. ratio=..`` for the
default run (ratio = items_per_s / baseline_items_per_s).
"""

from __future__ import annotations

import argparse
import collections
import json
import select
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.classification import make_classifier  # noqa: E402
from actors.protocol import Item  # noqa: E402
from catalyst_config import LLMConfig, Secrets, config_from_dict  # noqa: E402

KINDS = ["Announces FDA Approval of", "to Acquire", "Announces Pricing of Public Offering of",
         "Reports Record Revenue for", "Signs Supply Contract for"]
UNLIMITED_RPM = 600_000


def make_items(prefix: str, n: int) -> list[Item]:
    return [Item(key=f"https://wire.example/{prefix}/{i}", source="wire", kind="pr",
                 title=f"{prefix.title()} Corp{i} {KINDS[i % len(KINDS)]} Widget{i} "
                       f"(NASDAQ: {prefix[:2].upper()}{i:04d})",
                 link=f"https://wire.example/{prefix}/{i}",
                 summary=f"{prefix} Corp{i} said today that item {i} matters because of "
                         + "several reasons. " * 6, tickers=[f"{prefix[:2].upper()}{i:04d}"])
            for i in range(n)]


def drive(classifier, items: list[Item], attempt: int = 1) -> dict:
    """Feeds items like the llm actor does; returns timing and the calls it took."""
    calls_before = classifier.stats()["calls"]
    todo = collections.deque(items)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < len(items):
        while todo and not classifier.saturated():
            item = todo.popleft()
            sent[item.key] = time.perf_counter()
            if classifier.submit(item, attempt) is not None:
                latencies.append(time.perf_counter() - sent[item.key])
        classifier.tick(time.monotonic())
        for answer in classifier.answers():
            latencies.append(time.perf_counter() - sent[answer.item.key])
        if len(latencies) < len(items):
            wait = classifier.next_deadline(time.monotonic()) - time.monotonic()
            select.select([classifier.wake_fd], [], [], min(max(wait, 0.0), 0.05))
    elapsed = time.perf_counter() - started
    stats = classifier.stats()
    calls = stats["calls"] - calls_before
    latencies.sort()
    return {"items": len(items), "calls": calls, "seconds": elapsed,
            "items_per_s": len(items) / elapsed, "calls_per_1000": 1000.0 * calls / len(items),
            "p50_s": statistics.median(latencies),
            "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "fallbacks": stats["fallbacks"]}


def classifier_for(base_url: str, data_dir: str, **llm):
    cfg = config_from_dict(
        {"data_dir": data_dir, "llm": {"provider": "gemini", "base_url": base_url,
                                       "requests_per_minute": UNLIMITED_RPM, **llm}},
        secrets=Secrets({"GEMINI_API_KEY": "benchmark-key"}))
    return make_classifier(cfg, name="llm-bench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000, help="unique items, default run")
    parser.add_argument("--baseline-items", type=int, default=50)
    parser.add_argument("--concurrency-items", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2, help="the fake's answer time")
    args = parser.parse_args()
    defaults = LLMConfig()
    server = subprocess.Popen([sys.executable, "-m", "tests.fake_gemini", "--latency",
                               str(args.latency)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    base_url = server.stdout.readline().strip()
    rows = []
    try:
        runs = [("baseline: sequential, 1 item/request", args.baseline_items,
                 {"max_concurrency": 1, "batch_size": 1}),
                (f"concurrency {defaults.max_concurrency}, 1 item/request",
                 args.concurrency_items, {"batch_size": 1}),
                (f"default: concurrency {defaults.max_concurrency}, batch {defaults.batch_size}",
                 args.items, {})]
        for name, n, llm in runs:
            with tempfile.TemporaryDirectory() as data_dir:
                classifier = classifier_for(base_url, data_dir, **llm)
                items = make_items(name.split(":")[0].split()[0], n)
                rows.append((name, drive(classifier, items)))
                if not llm:
                    rows.append(("redelivery of the same items (cache)",
                                 drive(classifier, items, attempt=2)))
                classifier.close()
        with urllib.request.urlopen(base_url + "/stats", timeout=5) as response:
            served = json.loads(response.read())
    finally:
        server.stdin.close()
        server.wait(10)
    print(f"fake generateContent answering in {args.latency * 1000:.0f} ms "
          f"(own process); requests_per_minute raised to {UNLIMITED_RPM}; p50/p99: submit "
          f"to answer, items offered as fast as the backlog takes them")
    header = (f"{'run':44} {'items':>6} {'calls':>6} {'calls/1000':>10} {'seconds':>8} "
              f"{'items/s':>9} {'p50 s':>7} {'p99 s':>7} {'fallbacks':>9}")
    print(header)
    print("-" * len(header))
    for name, r in rows:
        print(f"{name:44} {r['items']:>6} {r['calls']:>6} {r['calls_per_1000']:>10.1f} "
              f"{r['seconds']:>8.2f} {r['items_per_s']:>9.1f} {r['p50_s']:>7.3f} "
              f"{r['p99_s']:>7.3f} {r['fallbacks']:>9}")
    total_calls = sum(r["calls"] for _, r in rows)
    print(f"calls counted by the fake: {sum(served['calls'].values())} "
          f"(by the classifiers: {total_calls}); most in flight at once: "
          f"{served['max_in_flight']}")
    base = rows[0][1]
    best = rows[2][1]
    print(f"RESULT items_per_s={best['items_per_s']:.1f} "
          f"calls_per_1000={best['calls_per_1000']:.1f} "
          f"baseline_items_per_s={base['items_per_s']:.2f} "
          f"ratio={best['items_per_s'] / base['items_per_s']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
