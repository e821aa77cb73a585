"""Fetch-to-alert latency of the whole running system at a steady item rate.

A loopback wire publishes items at --rate per second for --seconds: item i becomes visible
at t0 + i / rate. Each GET of the feed answers every item published since the previous
answer plus the --repeats items before them (already seen: dedupe drops them), newest
first, with no validators, so every poll is a 200 to parse. The real system runs against
it (``python -m supervisor.cli start``: fetcher, dedupe, llm, alert as processes under the
supervisor) with poll_interval_s --poll, the rules classifier, min_score 0 (every item
alerts), charts off and one JSONL sink; everything else at its default.

Per alert, from its JSONL record (both wall-clock time.time() stamps):
    fetch -> alert    alerted_at - fetched_at (fetched_at: the fetcher built the item,
                      right after parsing the document; alerted_at: the alert actor built
                      the record)
    publish -> alert  alerted_at - the moment the wire made the item visible (adds the
                      polling delay, up to poll_interval_s, and the HTTP fetch and parse)
Every published item must be alerted exactly once; the run fails loudly otherwise.

Baseline, in the same run (the floor): the same FeedFetcher cycle, keyword classification
and JSONL write done inline in this one process against a fresh wire at the same rate
(no sockets, no SQLite ledger or journal, no other processes), timed the same way.

    python benchmarks/pipeline_latency.py [--rate 500] [--seconds 20] [--poll 0.1]

Prints a table and a last line ``RESULT rate=.. p50_ms=.. p99_ms=.. ...`` (fetch -> alert).
Target (docs/architecture.md, Performance targets): fetch-to-alert p99 <= 50 ms at 500
items/s. About 45 s.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import sys
import threading
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    Neighbours,
    SupervisorProcess,
    classify_family,
    cpu_seconds,
    neighbour_note,
    percentile,
    short_tempdir,
    wait_for,
)
from supervisor.demo_server import QuietHTTPServer  # noqa: E402

TARGET_P99_MS = 50.0
TARGET_RATE = 500.0
MAX_DOCUMENT_ITEMS = 1500  # under the fetcher's 2000 a document; the rest waits a poll
LISTEN_BACKLOG = 64
CATALYSTS = ["Announces FDA Approval of", "Reports Positive Phase 3 Results for",
             "Announces Pricing of Public Offering of", "to Acquire",
             "Reports Record Revenue for", "Signs Supply Contract for",
             "Announces Strategic Partnership for", "Receives Breakthrough Designation for"]


def ticker(i: int) -> str:
    letters = ""
    for _ in range(4):
        i, r = divmod(i, 26)
        letters += chr(65 + r)
    return letters


class Wire:
    """A loopback RSS feed whose items appear at a steady rate once start() is called."""

    def __init__(self, prefix: str, rate: float, total: int, repeats: int):
        self.prefix, self.rate, self.total, self.repeats = prefix, rate, total, repeats
        self.t0: float | None = None  # wall clock: item i is visible from t0 + i / rate
        self.cursor = 0  # items below this were in an earlier answer
        self.lock = threading.Lock()
        self.polls: list[tuple[float, int, int]] = []  # (answered at, items, new items)
        wire = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = wire.document()
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        QuietHTTPServer.request_queue_size = LISTEN_BACKLOG
        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/feed.xml"

    def link(self, i: int) -> str:
        return f"https://wire.example/{self.prefix}/{i}"

    def published_at(self, i: int) -> float:
        return self.t0 + i / self.rate

    def start(self) -> None:
        with self.lock:
            self.t0 = time.time()

    def visible(self, now: float) -> int:
        if self.t0 is None:
            return 0
        return min(self.total, int((now - self.t0) * self.rate) + 1)

    def item_xml(self, i: int) -> str:
        name, tick = f"{self.prefix.title()}{i} Corp", ticker(i)
        title = f"{name} {CATALYSTS[i % len(CATALYSTS)]} Widget-{i} (NASDAQ: {tick})"
        summary = (f"{name} (NASDAQ: {tick}) said today that program {i} reached its primary "
                   "endpoint, and that it expects to file for approval next quarter. The "
                   "company will host a conference call at 8:30 a.m. Eastern Time.")
        pub = format_datetime(datetime.fromtimestamp(self.published_at(i), timezone.utc),
                              usegmt=True)
        return (f"<item><title>{escape(title)}</title><link>{self.link(i)}</link>"
                f"<guid>{self.link(i)}</guid><description>{escape(summary)}</description>"
                f"<pubDate>{pub}</pubDate></item>")

    def document(self) -> bytes:
        now = time.time()
        with self.lock:
            visible = self.visible(now)
            start = max(0, self.cursor - self.repeats)
            end = min(visible, start + MAX_DOCUMENT_ITEMS)
            new = max(0, end - self.cursor)
            self.cursor = max(self.cursor, end)
            self.polls.append((now, end - start, new))
        entries = "".join(self.item_xml(i) for i in range(end - 1, start - 1, -1))
        return ('<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
                "<title>bench wire</title><link>https://wire.example/</link>"
                f"<description>bench</description>{entries}</channel></rss>").encode()

    def index_of(self, link: str) -> int | None:
        head = f"https://wire.example/{self.prefix}/"
        return int(link[len(head):]) if link.startswith(head) else None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def documents(wire: Wire, records: list[dict]) -> dict:
    """Per fetched document (its items share one fetched_at): wire answered -> fetched_at
    (HTTP read and parse), fetched_at -> its first alert and -> its last alert (ms)."""
    by_doc: dict[float, list[float]] = collections.defaultdict(list)
    for r in records:
        by_doc[r["fetched_at"]].append(r["alerted_at"])
    answered = sorted(t for t, _, new in wire.polls)
    parse, first, last = [], [], []
    for fetched, alerted in by_doc.items():
        before = bisect.bisect_right(answered, fetched)
        if before:
            parse.append((fetched - answered[before - 1]) * 1000)
        first.append((min(alerted) - fetched) * 1000)
        last.append((max(alerted) - fetched) * 1000)
    return {"parse": parse, "first": first, "last": last,
            "sizes": [len(a) for a in by_doc.values()]}


def latencies(wire: Wire, records: list[dict]) -> dict:
    """fetch -> alert and publish -> alert (ms), and the exactly-once check."""
    counts: collections.Counter[int] = collections.Counter()
    fetch_ms, publish_ms, alerted = [], [], []
    for r in records:
        i = wire.index_of(r["link"])
        if i is None:
            continue
        counts[i] += 1
        if counts[i] > 1:
            continue
        fetch_ms.append((r["alerted_at"] - r["fetched_at"]) * 1000)
        publish_ms.append((r["alerted_at"] - wire.published_at(i)) * 1000)
        alerted.append(r["alerted_at"])
    missing = [i for i in range(wire.total) if i not in counts]
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    span = max(alerted) - min(alerted) if len(alerted) > 1 else float("nan")
    return {"fetch": fetch_ms, "publish": publish_ms, "missing": missing,
            "duplicates": duplicates, "throughput": len(alerted) / span if span else 0.0,
            "documents": documents(wire, records)}


# The real system -----------------------------------------------------------------------


def run_system(workdir: Path, rate: float, seconds: float, poll: float, repeats: int) -> dict:
    total = int(rate * seconds)
    wire = Wire("sys", rate, total, repeats)
    cfg = {
        "run_dir": "run", "data_dir": "data", "log_dir": "log",
        "poll_interval_s": poll,
        "feeds": [{"name": "wire", "url": wire.url, "kind": "pr"}],
        "llm": {"provider": "rules"},
        "alerts": {"min_score": 0.0, "sinks": [{"type": "jsonl", "path": "alerts.jsonl"}],
                   "admin": {"type": "jsonl", "path": "admin.jsonl"},
                   "charts": {"enabled": False}},
        "supervisor": {"metrics_port": 0},
    }
    sup = SupervisorProcess(workdir, cfg, name="pipeline")
    alerts_path = workdir / "alerts.jsonl"
    try:
        sup.wait_running()
        family = classify_family(sup.pid)
        pids = {"supervisor": [sup.pid], **{k: v for k, v in family.items() if v}}
        time.sleep(1.0)  # a few empty polls first: the fetcher is in its steady rhythm
        cpu0 = {role: sum(cpu_seconds(p) for p in ps) for role, ps in pids.items()}
        wire.start()
        started = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        cpu = {role: 100.0 * (sum(cpu_seconds(p) for p in ps) - cpu0[role]) / elapsed
               for role, ps in pids.items()}

        def lines() -> int:
            return alerts_path.read_bytes().count(b"\n") if alerts_path.exists() else 0
        try:
            wait_for(lambda: lines() >= total, 60, 0.1, f"{total} alerts")
        except AssertionError:
            pass  # reported below as missing items
        drained_after = time.monotonic() - started - seconds
        status = sup.status()
    finally:
        code = sup.stop()
        wire.close()
    records = [json.loads(line) for line in alerts_path.read_text().splitlines() if line]
    out = latencies(wire, records)
    out.update(cpu=cpu, polls=wire.polls, exit_code=code, drained_after=drained_after,
               stats={a["name"]: a["stats"] for a in status["actors"]} if status else {},
               restarts={a["name"]: a["restarts"] for a in status["actors"]} if status else {})
    return out


# The inline floor ----------------------------------------------------------------------


def run_inline(workdir: Path, rate: float, seconds: float, poll: float, repeats: int) -> dict:
    """Fetch, parse, classify and write each item in this one process, in one loop."""
    from actors import protocol
    from actors.alert import alert_record
    from actors.classification import rules
    from actors.feeds.fetch import FeedFetcher
    from actors.sinks import JsonlSink
    from catalyst_config import config_from_dict

    total = int(rate * seconds)
    wire = Wire("inline", rate, total, repeats)
    cfg = config_from_dict({"data_dir": str(workdir / "inline-data"),
                            "feeds": [{"name": "wire", "url": wire.url, "kind": "pr"}]})
    fetcher = FeedFetcher(cfg)
    sink = JsonlSink(workdir / "inline.jsonl")
    seen: set[str] = set()
    records = []
    try:
        fetcher.fetch_cycle(cfg.feeds)  # connection and thread pool warm, as in the system
        wire.start()
        end = time.monotonic() + seconds
        next_poll = time.monotonic()
        while True:
            now = time.monotonic()
            if now < next_poll:
                time.sleep(next_poll - now)
            next_poll = time.monotonic() + poll
            for result in fetcher.fetch_cycle(cfg.feeds):
                for item in result.items:
                    if item.key in seen:
                        continue
                    seen.add(item.key)
                    analysis = rules.classify(item)
                    record = alert_record(protocol.Classified(item=item, analysis=analysis,
                                                              attempt=1), None)
                    sink.deliver(record)
                    records.append(record)
            if time.monotonic() > end and len(records) >= total:
                break
            if time.monotonic() > end + 30:
                break
    finally:
        fetcher.close()
        sink.close()
        wire.close()
    return latencies(wire, records)


# Report ---------------------------------------------------------------------------------


def row(label: str, values: list[float]) -> str:
    if not values:
        return f"{label:<44} {0:>6}"
    return (f"{label:<44} {len(values):>6} {percentile(values, 50):>8.1f} "
            f"{percentile(values, 90):>8.1f} {percentile(values, 99):>8.1f} {max(values):>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=TARGET_RATE,
                        help="items published per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the wire publishes")
    parser.add_argument("--poll", type=float, default=0.1, help="poll_interval_s")
    parser.add_argument("--repeats", type=int, default=25,
                        help="items of the previous answer repeated in the next")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    args = parser.parse_args()

    neighbours = Neighbours()
    with short_tempdir("csp-") as d:
        system = run_system(Path(d), args.rate, args.seconds, args.poll, args.repeats)
        inline = run_inline(Path(d), args.rate, min(args.seconds, args.baseline_seconds),
                            args.poll, args.repeats)

    others_pct = neighbours.cpu_pct()
    fetch, publish = system["fetch"], system["publish"]
    p50, p99 = percentile(fetch, 50), percentile(fetch, 99)
    base_p99 = percentile(inline["fetch"], 99)
    polls = [p for p in system["polls"] if p[2] > 0]
    per_poll = sum(p[1] for p in polls) / len(polls) if polls else 0
    new_per_poll = sum(p[2] for p in polls) / len(polls) if polls else 0
    total = int(args.rate * args.seconds)

    print(f"pipeline_latency: {args.rate:g} items/s for {args.seconds:g} s ({total} items), "
          f"poll_interval_s {args.poll:g}, {per_poll:.0f} items a document "
          f"({new_per_poll:.0f} new), rules classifier, charts off, one JSONL sink")
    print(f"{'latency, ms':<44} {'n':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    print(row("system: fetch -> alert", fetch))
    print(row("system: publish -> alert (incl. polling)", publish))
    docs = system["documents"]
    print(row("  per document: wire answered -> fetched_at", docs["parse"]))
    print(row("  per document: fetched_at -> its first alert", docs["first"]))
    print(row("  per document: fetched_at -> its last alert", docs["last"]))
    print(row("baseline: inline, one process: fetch -> alert", inline["fetch"]))
    print(row("baseline: inline: publish -> alert", inline["publish"]))
    ratio = p99 / base_p99 if base_p99 else float("nan")
    print(f"{'ratio system / baseline, fetch -> alert p99':<44} {'':>6} {'':>8} {'':>8} "
          f"{ratio:>8.1f}")
    print(f"throughput: system {system['throughput']:.0f} alerts/s, baseline "
          f"{inline['throughput']:.0f} alerts/s (first to last alert)")
    print(f"exactly once: system {total - len(system['missing'])}/{total} alerted, "
          f"{len(system['missing'])} missing, {system['duplicates']} duplicates; baseline "
          f"{len(inline['missing'])} missing, {inline['duplicates']} duplicates; all alerted "
          f"{system['drained_after']:.1f} s after publishing ended")
    print("CPU % of a core while publishing: " + ", ".join(
        f"{role.replace('actor:', '')} {pct:.0f}" for role, pct in sorted(system["cpu"].items())))
    if any(system["restarts"].values()):
        print(f"restarts during the run: {system['restarts']}")
    verdict = "met" if p99 <= TARGET_P99_MS else "MISSED"
    print(f"target fetch -> alert p99 <= {TARGET_P99_MS:g} ms (set at {TARGET_RATE:g} items/s; "
          f"this run {args.rate:g}/s): {verdict}")
    print(neighbour_note(others_pct))
    if system["missing"] or system["duplicates"]:
        print(f"FAILED exactly-once: first missing {system['missing'][:10]}", file=sys.stderr)
    print(f"RESULT rate={args.rate:g} p50_ms={p50:.1f} p99_ms={p99:.1f} "
          f"p90_ms={percentile(fetch, 90):.1f} max_ms={max(fetch):.1f} "
          f"publish_p99_ms={percentile(publish, 99):.1f} baseline_p99_ms={base_p99:.1f} "
          f"ratio={ratio:.1f} throughput={system['throughput']:.0f} "
          f"missing={len(system['missing'])} duplicates={system['duplicates']}")
    if system["missing"] or system["duplicates"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
