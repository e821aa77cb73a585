"""The alert actor: applies the score policy, attaches a chart, delivers to every sink
exactly once through the delivery journal, each sink at its own pace, and acknowledges an
item to dedupe only once every sink has it.

An item that passes the policy becomes a Pending. It waits, in arrival order, for its chart
(rendered on the ChartMaker thread) up to ``alerts.charts.max_wait_s``, then joins one Lane
per sink. A lane delivers its backlog in arrival order, so alerts for one ticker arrive in
the order they came: a fast sink (console, JSONL) on the loop, a blocking one (Discord) one
item at a time on its SinkWorker thread, which waits out Discord's rate limits while the
loop keeps heartbeating and receiving.

Nothing is dropped:
- Memory is bounded: at ``alerts.max_backlog`` pending items input pauses, and ZeroMQ holds
  the rest upstream (the dedupe ledger has them all anyway).
- An item is acked only when every sink has it. A redelivered copy (its lease ran out while
  it waited for Discord) is merged with the one still here; a copy of one already delivered
  is answered "already" by the journal for every sink and acked again.
- A sink that fails an item (a JSONL write error; Discord rejecting it even as plain text)
  leaves it unacked: the ledger sends it again after its lease, the sinks that have it
  answer "already", and after ``dedupe.max_attempts`` it becomes a dead letter with an
  admin event.
- A sink disabled by a 401/403/404 raises a ``sink_disabled`` admin event and is skipped
  until the actor restarts (``catalyst-supervisor restart alert-0`` once the webhook is
  fixed): its items go to the other sinks and stay unacked, pending in the ledger, which
  sends them again each lease (so a restart delivers them) and dead-letters them, each with
  an admin event, after ``dedupe.max_attempts``. They are never acked as delivered.
- While the journal (alerts.db) cannot be written (disk full, I/O error, locked:
  StoreUnavailableError), nothing is delivered, since nothing could be recorded: alerts
  wait in their lanes, one already delivered waits for its "done" row before it is acked,
  input pauses (so memory stays bounded and the rest waits upstream, pending in the
  ledger), and the journal is tried again with backoff; all of it resumes by itself.
"""

from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import zmq

from actors import protocol
from actors.base import Actor
from actors.charts import ChartMaker
from actors.errors import CommandError, SinkError, StoreUnavailableError
from actors.sinks import Route, Sink, SinkWorker, UnavailableSink, build_sink, sink_name
from actors.sinks.journal import (
    ALREADY,
    BUSY,
    UNSURE,
    DeliveryJournal,
    journal_label,
    open_journal,
)
from actors.storage import StoreOutage
from actors.storage.sqlite import backup_command

log = logging.getLogger("catalyst.alert")

HOUSEKEEPING_S = 3600.0
HOLD_ACK_KEYS = 5000  # keys per "held" Ack frame
TEARDOWN_FLUSH_S = 2.0  # a post under way at stop gets this long to finish and be journaled
# Upper bounds (seconds) of the fetch-to-alert and publication-to-alert histograms: fixed,
# so the stats stay the same size however many alerts go out. From tens of milliseconds
# (rules, a local sink) through a Gemini call (seconds) to Discord's rate limits (minutes).
# The newest delivered alerts in the heartbeat (the console shows them): a few hundred
# bytes each, so a heartbeat stays small.
RECENT_ALERTS = 10
RECENT_TITLE_CHARS = 200
RECENT_LINK_CHARS = 500
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class LatencyHistogram:
    """Cumulative counts per upper bound (the last one +Inf), sum and count: what a
    Prometheus histogram needs, in the actor's stats."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)  # clocks of two machines (the feed's) may disagree
        i = next((i for i, b in enumerate(self.bounds) if seconds <= b), len(self.bounds))
        self.counts[i] += 1
        self.sum += seconds

    def stats(self) -> dict:
        cumulative, total = [], 0
        for n in self.counts:
            total += n
            cumulative.append(total)
        return {"le": list(self.bounds), "cumulative": cumulative, "sum": round(self.sum, 6),
                "count": total}


@dataclass(eq=False)
class Pending:
    """One alert on its way: waiting for its chart, then for every sink."""

    msg: protocol.Classified
    chart: Future | None
    chart_deadline: float
    record: dict | None = None
    chart_path: str | None = None
    waiting: set[int] = field(default_factory=set)  # indexes of lanes that still owe it
    held: bool = False  # a sink could not take it: not acked, the ledger sends it again

    @property
    def key(self) -> str:
        return self.msg.item.key


class Lane:
    """One sink's backlog, delivered in arrival order at the sink's pace."""

    def __init__(self, index: int, sink: Sink, worker: SinkWorker | None, route: Route):
        self.index = index
        self.sink = sink
        self.worker = worker
        self.route = route
        self.backlog: collections.deque[Pending] = collections.deque()
        self.in_flight: Pending | None = None
        self.disabled: str | None = None
        # Delivered by the sink, not yet journaled "done" (the journal was away): acked
        # only once it is, so a redelivery meanwhile merges with it instead of alerting.
        self.unrecorded: collections.deque[Pending] = collections.deque()

    @property
    def name(self) -> str:
        return self.sink.name

    def __len__(self) -> int:
        return len(self.backlog) + (self.in_flight is not None) + len(self.unrecorded)


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
        "holder": item.holder,  # Schedule 13D/G: who filed (the tickers are the issuer's)
    }


class AlertActor(Actor):

    def setup(self) -> None:
        cfg = self.config
        self._lanes_waker = self.waker()
        self.lanes: list[Lane] = []
        for i, sink_cfg in enumerate(cfg.alerts.sinks):
            try:
                sink = build_sink(sink_cfg, cfg)
            except SinkError as exc:  # e.g. its webhook URL is not in the environment
                sink = UnavailableSink(sink_name(sink_cfg), str(exc))
            worker = SinkWorker(sink, notify=self._wake) if sink.blocking else None
            self.lanes.append(Lane(i, sink, worker, Route(sink_cfg, cfg.alerts.min_score)))
            if isinstance(sink, UnavailableSink):
                self._disable(self.lanes[-1], SinkError(sink.reason, permanent=True))
        self.journal: DeliveryJournal | None = None
        self.journal_outage = StoreOutage(
            journal_label(cfg), notify=self.admin,
            effect="alerts are held (not delivered, not acked) and input pauses")
        self._open_journal(time.monotonic())  # one that is away is tried again later
        charts = cfg.alerts.charts
        self.charts = ChartMaker.from_config(cfg) if charts.enabled else None
        if charts.enabled and self.charts is None and charts.key_env():
            self.admin("charts_unavailable", f"charts need ${charts.key_env()} for "
                       f"{charts.provider}; alerts go without charts", reason=charts.provider)
        self.inbox = self.socket(zmq.PULL,
                                 bind=cfg.instance_endpoint("alert_in", self.spec.index))
        self.acks = self.socket(zmq.PUSH, connect=cfg.targets("dedupe_acks"))
        self.add_reader(self.inbox, self._on_items)
        self.codec = protocol.Codec(protocol.Classified)
        self.pending: dict[str, Pending] = {}
        self.chart_queue: collections.deque[Pending] = collections.deque()
        self.to_ack: dict[str, list[str]] = {"delivered": [], "filtered": []}
        self.next_housekeeping = time.monotonic() + 60.0
        self.next_hold = 0.0  # while the journal is away: when to renew our items' leases
        # The last alerts delivered, small and bounded, for the operator console's page.
        self.recent: collections.deque[dict] = collections.deque(maxlen=RECENT_ALERTS)
        self.fetch_to_alert = LatencyHistogram()
        self.publication_to_alert = LatencyHistogram()

    # The journal and its outages -----------------------------------------------

    def _open_journal(self, now: float) -> bool:
        cfg = self.config
        try:  # alerts.db, or the shared PostgreSQL journal (dedupe.backend: postgres)
            self.journal = open_journal(
                cfg, name=self.name,
                on_corrupt=lambda msg: self.admin("store_corrupt", msg, reason="corrupt",
                                                  level="error"))
        except StoreUnavailableError as exc:
            self.journal_outage.failed(exc, now)
            return False
        self.journal_outage.ok(now)
        return True

    def _journal_ready(self, now: float) -> bool:
        """Whether lanes may use the journal now. While it is away, a due try opens it or
        writes a probe, then journals what was delivered meanwhile; any failure keeps
        the lanes still until the next try."""
        outage = self.journal_outage
        if self.journal is None:
            if now < outage.next_try or not self._open_journal(now):
                return False
        elif outage.down:
            if now < outage.next_try:
                return False
            try:
                self.journal.probe()
            except StoreUnavailableError as exc:
                outage.failed(exc, now)
                return False
            outage.ok(now)
        for lane in self.lanes:
            while lane.unrecorded:
                if not self._record_done(lane.unrecorded[0], lane, now):
                    return False
                lane.unrecorded.popleft()
        return True

    def _record_done(self, p: Pending, lane: Lane, now: float) -> bool:
        """Journals (key, sink) done and settles it; False when the journal is away
        (the caller keeps p in lane.unrecorded for the next try)."""
        try:
            self.journal.done(p.key, lane.name)
        except StoreUnavailableError as exc:
            self.journal_outage.failed(exc, now)
            return False
        self._settle(p, lane, ok=True)
        return True

    def _delivered(self, p: Pending, lane: Lane) -> bool:
        """The sink has p: journal it, or keep it to journal later. False: the journal
        is away, stop pumping."""
        if self._record_done(p, lane, time.monotonic()):
            return True
        lane.unrecorded.append(p)
        return False

    def _release(self, key: str, lane: Lane) -> None:
        """Forgets a sending row after a failure; if even that fails, the row is ours and
        reads as UNSURE next time, which asks the sink, so nothing is lost."""
        try:
            self.journal.release(key, lane.name)
        except StoreUnavailableError as exc:
            self.counters["journal_release_failed"] += 1
            self.journal_outage.failed(exc, time.monotonic())

    # Waking from other threads ----------------------------------------------

    def _wake(self, *_: object) -> None:
        """Called from the chart and sink threads: a result is waiting for the loop."""
        self._lanes_waker.wake()

    # Receiving ---------------------------------------------------------------

    def _on_items(self) -> None:
        now = time.monotonic()
        alerts = self.config.alerts
        for _, msg in self.recv_messages(self.inbox, self.codec):
            key = msg.item.key
            if not any(lane.route.accepts(msg) for lane in self.lanes):  # no sink takes it
                self.counters["filtered"] += 1
                self.to_ack["filtered"].append(key)
                continue
            if key in self.pending:  # its lease ran out while it waited here
                self.counters["redelivery_merged"] += 1
                continue
            if msg.attempt > 1:
                self.counters["redelivered_in"] += 1
            tickers = msg.analysis.tickers or msg.item.tickers
            chart = self.charts.submit(msg.item, tickers) if self.charts else None
            if chart is not None:
                chart.add_done_callback(self._wake)
            p = Pending(msg, chart, now + alerts.charts.max_wait_s)
            self.pending[key] = p
            self.chart_queue.append(p)
            if len(self.pending) >= alerts.max_backlog:
                break
        self._advance(now)

    # Delivering --------------------------------------------------------------

    def _chart_of(self, p: Pending) -> str | None:
        if p.chart is None:
            return None
        if not p.chart.done():
            self.counters["chart_timeouts"] += 1
            return None
        try:
            path = p.chart.result()
        except Exception as exc:  # a chart is decoration; its failure never blocks the alert
            self.counters["chart_errors"] += 1
            log.warning("chart for %s failed: %s", p.key, exc)
            return None
        if path:
            self.counters["charts"] += 1
        return path

    def _release_charted(self, now: float) -> None:
        """Moves alerts whose chart is ready (or too late) to every lane, in arrival order."""
        while self.chart_queue:
            head = self.chart_queue[0]
            if head.chart is not None and not head.chart.done() and now < head.chart_deadline:
                return
            self.chart_queue.popleft()
            head.chart_path = self._chart_of(head)
            head.record = alert_record(head.msg, head.chart_path)
            routed = [lane for lane in self.lanes if lane.route.accepts(head.msg)]
            head.waiting = {lane.index for lane in routed}
            for lane in routed:
                lane.backlog.append(head)
            if not head.waiting:
                self._finish(head)

    def _pump(self, lane: Lane) -> None:
        """Starts the lane's next deliveries: all of them inline, one at a time on a worker.
        Stops when the journal is away (the caller checked it was there before)."""
        while lane.backlog and lane.in_flight is None and not self.journal_outage.down:
            p = lane.backlog.popleft()
            if lane.disabled:
                self.counters["skipped_disabled_sink"] += 1
                self._settle(p, lane, ok=False)
                continue
            try:
                verdict, old_mark = self.journal.begin(p.key, lane.name, lane.sink.mark())
            except StoreUnavailableError as exc:  # nothing written: it waits its turn
                lane.backlog.appendleft(p)
                self.journal_outage.failed(exc, time.monotonic())
                return
            if verdict == ALREADY:
                self._settle(p, lane, ok=True)
                continue
            if verdict == BUSY:  # another live instance is delivering it; it will ack
                self.counters["busy_elsewhere"] += 1
                self._settle(p, lane, ok=False)
                continue
            if verdict == UNSURE and lane.sink.written(p.key, old_mark):
                if not self._delivered(p, lane):
                    return
                continue
            if lane.worker is not None:
                if not lane.worker.submit(p.key, p.record, p.chart_path):
                    self._release(p.key, lane)
                    lane.backlog.appendleft(p)
                    return
                lane.in_flight = p
                return
            try:
                lane.sink.deliver(p.record, p.chart_path)
            except SinkError as exc:
                self._failed(p, lane, exc)
                continue
            if not self._delivered(p, lane):
                return

    def _collect(self, lane: Lane) -> None:
        """Outcomes of the lane's worker: journal them and settle the items."""
        if lane.worker is None:
            return
        for key, error in lane.worker.results():
            p, lane.in_flight = lane.in_flight, None
            if p is None or p.key != key:  # cannot happen: one job at a time
                log.error("%s: result for an unexpected item %s", lane.name, key)
                continue
            if error is None:
                self._delivered(p, lane)
            else:
                self._failed(p, lane, error)

    def _failed(self, p: Pending, lane: Lane, exc: SinkError) -> None:
        self._release(p.key, lane)
        if exc.permanent:
            self._disable(lane, exc)
        else:
            self.counters["sink_errors"] += 1
            log.warning("sink %s failed for %s: %s", lane.name, p.key, exc)
        self._settle(p, lane, ok=False)

    def _disable(self, lane: Lane, exc: SinkError) -> None:
        """Skips the sink from now on, loudly: its alerts are held in the ledger, not lost."""
        if lane.disabled:
            return
        lane.disabled = str(exc)
        self.counters["sinks_disabled"] += 1
        message = (f"{lane.name} disabled ({exc}). Its alerts still go to the other sinks but "
                   "stay pending in the ledger, sent again each lease and dead-lettered after "
                   f"dedupe.max_attempts; fix it, then `catalyst-supervisor restart {self.name}`")
        log.error("%s", message)
        self.admin("sink_disabled", message, reason=lane.name, level="error")

    def _settle(self, p: Pending, lane: Lane, *, ok: bool) -> None:
        p.waiting.discard(lane.index)
        if not ok:
            p.held = True
        if not p.waiting:
            self._finish(p)

    def _finish(self, p: Pending) -> None:
        self.pending.pop(p.key, None)
        if p.held:  # not acked: pending in the ledger, which sends it again after its lease
            self.counters["held_unacked"] += 1
            return
        self.counters["delivered"] += 1
        self.to_ack["delivered"].append(p.key)
        self._observe_latency(p)
        self._remember(p)

    def _remember(self, p: Pending) -> None:
        r = p.record or {}
        item = p.msg.item
        self.recent.append({
            "title": item.title[:RECENT_TITLE_CHARS], "link": item.link[:RECENT_LINK_CHARS],
            "source": item.source, "form": item.form, "tickers": list(r.get("tickers") or [])[:8],
            "category": r.get("category"), "score": r.get("score"),
            "alerted_at": r.get("alerted_at", time.time())})

    def _observe_latency(self, p: Pending) -> None:
        """How long the delivered alert took from fetch, and from publication when the
        feed said when, to its alert record (alerted_at, as in the JSONL)."""
        alerted_at = p.record["alerted_at"] if p.record else time.time()
        item = p.msg.item
        if item.fetched_at:
            self.fetch_to_alert.observe(alerted_at - item.fetched_at)
        if item.published:
            self.publication_to_alert.observe(alerted_at - item.published)

    def _advance(self, now: float) -> None:
        self._release_charted(now)
        for lane in self.lanes:
            self._collect(lane)
        if self._journal_ready(now):
            for lane in self.lanes:
                self._pump(lane)

    def _forward_sink_events(self) -> None:
        for lane in self.lanes:
            for ev in lane.sink.pop_events():
                self.admin(ev["event"], ev["message"], reason=ev["reason"], level=ev["level"])

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

    # Hooks -------------------------------------------------------------------

    def next_deadline(self, now: float) -> float:
        deadline = min(self.next_housekeeping, now + self.heartbeat_interval,
                       self.journal_outage.deadline())
        if self.chart_queue:
            deadline = min(deadline, self.chart_queue[0].chart_deadline)
        return deadline

    def tick(self, now: float) -> None:
        self.journal_outage.settle(now)
        self._hold_leases(now)
        self._advance(now)
        self._forward_sink_events()
        self._flush_acks()
        if now >= self.next_housekeeping:
            self.next_housekeeping = now + HOUSEKEEPING_S
            if self.journal is not None and not self.journal_outage.down:
                try:
                    self.counters["journal_purged"] += self.journal.purge()
                except StoreUnavailableError as exc:
                    self.journal_outage.failed(exc, now)
            if self.charts:
                self.counters["charts_pruned"] += self.charts.prune()

    def _hold_leases(self, now: float) -> None:
        """While the journal is away, tell dedupe every lease_s / 3 that the items here are
        held, not lost: their leases are renewed without a send counted, so a full disk
        makes no dead letters."""
        if not self.journal_outage.down and self.journal is not None:
            self.next_hold = 0.0
            return
        if not self.pending or now < self.next_hold:
            return
        self.next_hold = now + self.config.dedupe.lease_s / 3
        keys = list(self.pending)
        for i in range(0, len(keys), HOLD_ACK_KEYS):
            try:
                self.acks.send(protocol.encode(protocol.Ack(keys=keys[i:i + HOLD_ACK_KEYS],
                                                            outcome="held")), zmq.NOBLOCK)
            except zmq.Again:
                return  # dedupe is away; tried again next time
        self.counters["leases_held"] += len(keys)

    def input_paused(self) -> bool:
        # While the journal is away nothing is delivered, but items are still taken in (up
        # to max_backlog) and held, their leases renewed (_hold_leases); the rest waits
        # upstream, where a resend the llm cannot take is not counted.
        return len(self.pending) >= self.config.alerts.max_backlog

    def idle(self) -> bool:
        return not self.pending and not any(self.to_ack.values())

    def stats(self) -> dict:
        out: dict = {"queued": len(self.chart_queue), "pending": len(self.pending),
                     "journal": self.journal_outage.state,
                     "journal_outages": self.journal_outage.outages,
                     "fetch_to_alert_seconds": self.fetch_to_alert.stats(),
                     "publication_to_alert_seconds": self.publication_to_alert.stats()}
        out["recent_alerts"] = list(self.recent)
        for lane in self.lanes:
            out[f"{lane.name}.backlog"] = len(lane)
            for k, v in lane.sink.stats().items():
                out[f"{lane.name}.{k}"] = v
            if lane.disabled:  # any sink, not only those that say so in their own stats
                out[f"{lane.name}.disabled"] = 1
        return out

    def command(self, name: str, args: dict) -> dict:
        """backup: a consistent copy of alerts.db (the instances share it, so any one
        answers for all)."""
        if name != "backup":
            return super().command(name, args)
        if self.journal is None:
            raise CommandError(f"the alert journal is unavailable "
                               f"({self.journal_outage.error}); nothing to back up until it opens")
        return {"actor": self.name, **backup_command(
            args, self.config.path(self.config.data_dir), self.journal.backup)}

    def teardown(self) -> None:
        for lane in getattr(self, "lanes", []):
            if lane.worker is None:
                lane.sink.close()
                continue
            for key in lane.worker.close(TEARDOWN_FLUSH_S):  # never started: nothing sent
                if lane.in_flight is not None and lane.in_flight.key == key:
                    if self.journal is not None:
                        self._release(key, lane)
                    lane.in_flight = None
            self._collect(lane)  # a post that finished in time is journaled, not sent twice
        if hasattr(self, "acks"):
            self._forward_sink_events()
            self._flush_acks()
        if getattr(self, "charts", None):
            self.charts.close()
        if getattr(self, "journal", None) is not None:
            self.journal.close()
        if hasattr(self, "_lanes_waker"):
            self._lanes_waker.close()
