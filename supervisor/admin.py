"""The admin sink, owned by the supervisor: the one process that is always there.

Repeats of the same (event, actor, reason) within a quiet period are counted, not sent,
and at most a burst of events a minute go out, so a crash loop cannot flood the sink.
"""

from __future__ import annotations

import collections
import logging
import time

import cachetools

from actors.errors import SinkError
from actors.sinks import build_sink

log = logging.getLogger("catalyst.admin")

REPEAT_QUIET_S = 60.0  # the same event again within this is only counted
MAX_PER_MINUTE = 30
RECENT_KEPT = 200


class AdminNotifier:
    def __init__(self, config):
        try:
            self.sink = build_sink(config.alerts.admin, config, role="admin")
        except SinkError as exc:
            log.error("admin sink unavailable (%s); admin events go to the log only", exc)
            self.sink = None
        self.recent_keys: cachetools.TTLCache = cachetools.TTLCache(1024, REPEAT_QUIET_S)
        self.sent_times: collections.deque[float] = collections.deque(maxlen=MAX_PER_MINUTE)
        self.events: collections.deque[dict] = collections.deque(maxlen=RECENT_KEPT)
        self.suppressed = 0

    def event(self, event: str, actor: str, reason: str, message: str, *,
              level: str = "warning", at: float | None = None) -> None:
        record = {"event": event, "actor": actor, "reason": reason, "at": at or time.time(),
                  "level": level, "message": message}
        self.events.append(record)
        key = (event, actor, reason)
        now = time.monotonic()
        if key in self.recent_keys:
            self.recent_keys[key] += 1
            self.suppressed += 1
            return
        if len(self.sent_times) == MAX_PER_MINUTE and now - self.sent_times[0] < 60.0:
            self.suppressed += 1
            return
        self.recent_keys[key] = 0
        self.sent_times.append(now)
        if self.sink is None:
            return
        try:
            self.sink.deliver(record)
        except SinkError as exc:
            log.error("admin sink failed: %s (event %s %s)", exc, event, actor)

    def recent(self) -> list[dict]:
        return list(self.events)

    def close(self) -> None:
        if self.sink:
            self.sink.close()
