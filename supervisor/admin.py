"""The admin sink, owned by the supervisor: the one process that is always there.

Repeats of the same (event, actor, reason) within a quiet period are counted, not sent, and
the next one sent says how many there were; at most a burst of events a minute go out, so a
crash loop cannot flood the sink. Every event is kept (bounded) for history and status, and
one that is not sent is logged instead.

A Discord admin sink (DISCORD_ADMIN_WEBHOOK_URL) delivers on its own thread through a bounded
queue: the supervisor's loop never waits for Discord, and one event waits at most
GIVE_UP_S for it before it is logged instead. A 401/404 disables it; events then go to the log.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import cachetools

from actors.errors import SinkError
from actors.sinks import Sink, SinkWorker, build_sink

log = logging.getLogger("catalyst.admin")

REPEAT_QUIET_S = 60.0  # the same event again within this is only counted
MAX_PER_MINUTE = 30
RECENT_KEPT = 200
QUEUE_MAX = 100  # events waiting for a blocking (Discord) admin sink
GIVE_UP_S = 120.0  # one event waits this long for Discord (rate limits, outage), then is logged
CLOSE_FLUSH_S = 5.0  # on close, queued events get this long to go out


class AdminNotifier:
    def __init__(self, config, *, sink: Sink | None = None):
        if sink is None:
            try:
                sink = build_sink(config.alerts.admin, config, role="admin",
                                  give_up_after_s=GIVE_UP_S)
            except SinkError as exc:
                log.error("admin sink unavailable (%s); admin events go to the log only", exc)
        self.sink = sink
        self.worker = (SinkWorker(sink, max_jobs=QUEUE_MAX, on_result=self._on_result)
                       if sink is not None and sink.blocking else None)
        self.recent_keys: cachetools.TTLCache = cachetools.TTLCache(1024, REPEAT_QUIET_S)
        self.unsent_repeats: cachetools.LRUCache = cachetools.LRUCache(1024)
        self.sent_times: collections.deque[float] = collections.deque(maxlen=MAX_PER_MINUTE)
        self.events: collections.deque[dict] = collections.deque(maxlen=RECENT_KEPT)
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()  # counts: the worker thread counts outcomes too
        self.held_by_rate = 0  # events the rate limit kept back since the last one sent

    @property
    def suppressed(self) -> int:
        with self._lock:
            return self.counts["repeats"] + self.counts["rate_limited"]

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def event(self, event: str, actor: str, reason: str, message: str, *,
              level: str = "warning", at: float | None = None) -> None:
        record: dict[str, Any] = {"event": event, "actor": actor, "reason": reason,
                                  "at": at or time.time(), "level": level, "message": message}
        self.events.append(record)
        key = (event, actor, reason)
        now = time.monotonic()
        if key in self.recent_keys:
            self._count("repeats")
            self.unsent_repeats[key] = self.unsent_repeats.get(key, 0) + 1
            return
        if len(self.sent_times) == MAX_PER_MINUTE and now - self.sent_times[0] < 60.0:
            self._count("rate_limited")
            self.held_by_rate += 1
            log.warning("admin event held back by the rate limit: %s %s (%s): %s",
                        event, actor, reason, message)
            return
        self.recent_keys[key] = True
        self.sent_times.append(now)
        repeats = self.unsent_repeats.pop(key, 0)
        notes = []
        if repeats:
            record["repeats"] = repeats
            notes.append(f"{repeats} earlier repeat{'s' if repeats > 1 else ''} not sent")
        if self.held_by_rate:
            record["held_back"] = self.held_by_rate
            notes.append(f"{self.held_by_rate} other event(s) held back by the rate limit, "
                         "see the supervisor log")
            self.held_by_rate = 0
        if notes:
            record = {**record, "message": f"{message} ({'; '.join(notes)})"}
        self._send(record)

    def _send(self, record: dict[str, Any]) -> None:
        if self.sink is None:
            log.warning("admin event: %s %s (%s): %s", record["event"], record["actor"],
                        record["reason"], record["message"])
            return
        if self.worker is not None:
            if self.worker.submit(record, record):
                self._count("queued")
            else:
                self._count("queue_full")
                log.warning("admin sink busy; event logged instead: %s %s (%s): %s",
                            record["event"], record["actor"], record["reason"],
                            record["message"])
            return
        try:
            self.sink.deliver(record)
            self._count("sent")
        except SinkError as exc:
            self._count("failed")
            log.error("admin sink failed: %s (event %s %s: %s)", exc, record["event"],
                      record["actor"], record["message"])

    def _on_result(self, record: dict[str, Any], error: SinkError | None) -> None:
        """On the worker thread: count the outcome; an undelivered event goes to the log."""
        if error is None:
            self._count("sent")
        else:
            self._count("failed")
            log.error("admin sink failed: %s (event %s %s: %s)", error, record["event"],
                      record["actor"], record["message"])
        for ev in self.sink.pop_events() if self.sink else ():
            log.warning("admin sink %s: %s", ev["event"], ev["message"])

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def recent(self) -> list[dict]:
        return list(self.events)

    def close(self) -> None:
        if self.worker is not None:
            if not self.worker.drain(CLOSE_FLUSH_S):
                log.warning("admin sink: events still queued at exit were logged only")
            self.worker.close()
        elif self.sink:
            self.sink.close()
