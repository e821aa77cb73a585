"""The alert actor: applies the score policy, attaches a chart, delivers to every sink
exactly once through the delivery journal, and acknowledges to dedupe."""

from __future__ import annotations

import collections
import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zmq

from actors import protocol
from actors.alert_journal import ALREADY, BUSY, GO, UNSURE, AlertJournal
from actors.base import Actor
from actors.errors import SinkError
from actors.sinks import build_sink

log = logging.getLogger("catalyst.alert")

MAX_QUEUED = 500  # alerts waiting for their chart; input pauses beyond this
HOUSEKEEPING_S = 3600.0


@dataclass
class Queued:
    msg: protocol.Classified
    chart: Future | None
    deadline: float


class ChartMaker:
    """Renders charts on one worker thread, off the text alert's path."""

    def __init__(self, config):
        from actors.prices import price_provider_from_config

        c = config.alerts.charts
        self.dir = config.path(c.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep_s = c.keep_days * 86400.0
        self.prices = price_provider_from_config(c)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="chart")

    def submit(self, item: protocol.Item, tickers: list[str]) -> Future | None:
        if not tickers:
            return None
        return self.pool.submit(self._render, item, tickers[0])

    def _render(self, item: protocol.Item, ticker: str) -> str | None:
        from actors.charts import render_chart

        series = self.prices.series(ticker)
        if series is None or not series.bars:
            return None
        digest = hashlib.blake2b(item.key.encode(), digest_size=8).hexdigest()
        path = self.dir / f"{ticker}-{digest}.png"
        render_chart(series, title=item.title, ticker=ticker,
                     news_time=item.published or item.fetched_at, path=path)
        return str(path)

    def prune(self) -> int:
        """Charts are output, but months of them are not: old ones are removed."""
        cutoff = time.time() - self.keep_s
        removed = 0
        for png in self.dir.glob("*.png"):
            try:
                if png.stat().st_mtime < cutoff:
                    png.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.prices.close()


def alert_record(msg: protocol.Classified, chart: str | None) -> dict:
    """The JSONL alert: ``key`` first (the journal's crash check relies on it)."""
    item, a = msg.item, msg.analysis
    return {
        "key": item.key, "title": item.title, "link": item.link, "source": item.source,
        "kind": item.kind, "form": item.form, "tickers": a.tickers or item.tickers,
        "category": a.category, "score": round(a.score, 4), "sentiment": round(a.sentiment, 4),
        "material": a.material, "summary": a.summary, "keywords": a.keywords,
        "provider": a.provider, "published": item.published, "fetched_at": item.fetched_at,
        "alerted_at": time.time(), "attempt": msg.attempt, "chart": chart,
    }


class AlertActor(Actor):
    kind = "alert"

    def setup(self) -> None:
        cfg = self.config
        self.sinks = [build_sink(s, cfg) for s in cfg.alerts.sinks]
        self.journal = AlertJournal(cfg.path(cfg.data_dir) / "alerts.db",
                                    sqlite_cfg=cfg.dedupe.sqlite,
                                    ttl_s=cfg.dedupe.ttl_days * 86400.0)
        charts = cfg.alerts.charts
        self.charts = ChartMaker(cfg) if charts.enabled and charts.price_url else None
        self.inbox = self.socket(zmq.PULL,
                                 bind=cfg.instance_endpoint("alert_in", self.spec.index))
        self.acks = self.socket(zmq.PUSH, connect=cfg.endpoint("dedupe_acks"))
        self.add_reader(self.inbox, self._on_items)
        self.codec = protocol.Codec(protocol.Classified)
        self.queue: collections.deque[Queued] = collections.deque()
        self.to_ack: dict[str, list[str]] = {"delivered": [], "filtered": []}
        self.next_housekeeping = time.monotonic() + 60.0

    def _on_items(self) -> None:
        now = time.monotonic()
        for _, msg in self.recv_messages(self.inbox, self.codec):
            if msg.analysis.score < self.config.alerts.min_score:
                self.counters["filtered"] += 1
                self.to_ack["filtered"].append(msg.item.key)
                continue
            tickers = msg.analysis.tickers or msg.item.tickers
            chart = self.charts.submit(msg.item, tickers) if self.charts else None
            self.queue.append(Queued(msg, chart, now + self.config.alerts.charts.max_wait_s))
            if len(self.queue) >= MAX_QUEUED:
                break
        self._deliver_ready(now)

    def _chart_of(self, q: Queued) -> str | None:
        if q.chart is None:
            return None
        if not q.chart.done():
            self.counters["chart_timeouts"] += 1
            return None
        try:
            path = q.chart.result()
        except Exception as exc:  # a chart is decoration; its failure never blocks the alert
            self.counters["chart_errors"] += 1
            log.warning("chart for %s failed: %s", q.msg.item.key, exc)
            return None
        if path:
            self.counters["charts"] += 1
        return path

    def _deliver_ready(self, now: float) -> None:
        # In arrival order: the head waits for its chart, up to its deadline.
        while self.queue:
            head = self.queue[0]
            if head.chart is not None and not head.chart.done() and now < head.deadline:
                return
            self.queue.popleft()
            self._deliver(head.msg, self._chart_of(head))

    def _deliver(self, msg: protocol.Classified, chart: str | None) -> None:
        key = msg.item.key
        record = alert_record(msg, chart)
        for sink in self.sinks:
            verdict, old_mark = self.journal.begin(key, sink.name, sink.mark())
            if verdict == ALREADY:
                continue
            if verdict == BUSY:  # another live instance is delivering it; it will ack
                self.counters["busy_elsewhere"] += 1
                return
            if verdict == UNSURE and sink.written(key, old_mark):
                self.journal.done(key, sink.name)
                continue
            try:
                sink.deliver(record, chart)
            except SinkError as exc:
                self.journal.release(key, sink.name)
                self.counters["sink_errors"] += 1
                log.warning("sink %s failed for %s: %s", sink.name, key, exc)
                return  # not acked: the ledger sends it again after its lease
            self.journal.done(key, sink.name)
        if msg.attempt > 1:
            self.counters["redelivered_in"] += 1
        self.counters["delivered"] += 1
        self.to_ack["delivered"].append(key)

    def _flush_acks(self) -> None:
        for outcome, keys in self.to_ack.items():
            if not keys:
                continue
            try:
                self.acks.send(protocol.encode(protocol.Ack(keys=keys, outcome=outcome)),
                               zmq.NOBLOCK)
            except zmq.Again:
                # Safe to drop: the ledger redelivers and the journal answers "already".
                self.counters["acks_dropped"] += len(keys)
            self.to_ack[outcome] = []

    def next_deadline(self, now: float) -> float:
        deadline = min(self.next_housekeeping, now + self.heartbeat_interval)
        if self.queue:
            deadline = min(deadline, now + 0.01, self.queue[0].deadline)
        return deadline

    def tick(self, now: float) -> None:
        self._deliver_ready(now)
        self._flush_acks()
        if now >= self.next_housekeeping:
            self.next_housekeeping = now + HOUSEKEEPING_S
            self.counters["journal_purged"] += self.journal.purge()
            if self.charts:
                self.counters["charts_pruned"] += self.charts.prune()

    def input_paused(self) -> bool:
        return len(self.queue) >= MAX_QUEUED

    def idle(self) -> bool:
        return not self.queue and not any(self.to_ack.values())

    def stats(self) -> dict:
        return {"queued": len(self.queue)}

    def teardown(self) -> None:
        for sink in getattr(self, "sinks", []):
            sink.close()
        if getattr(self, "charts", None):
            self.charts.close()
        if hasattr(self, "journal"):
            self.journal.close()
