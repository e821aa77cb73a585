"""When each feed is next polled: its own interval, jitter that only ever shortens a wait,
Retry-After and breaker backoff honoured; and what a "cycle" means once feeds keep their
own time.

A feed that trickles, stalls or fails delays only itself: every feed has its own due time,
and its items go on the moment its own fetch ends. A cycle ends once every feed has been
polled (fetched, or skipped by its open breaker) since the cycle began; `--cycles N`, the
outage detector and the demo count those.

Pure: the caller passes the clock, so the tests drive it without waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class _Due:
    at: float  # monotonic time the next poll may start
    interval_s: float
    in_flight: bool = False


class FeedSchedule:
    """Due times of a fetcher's feeds, and the cycle count over them."""

    def __init__(self, intervals: dict[str, float], *, jitter_fraction: float, now: float,
                 rng: random.Random | None = None):
        self.jitter_fraction = min(max(jitter_fraction, 0.0), 0.5)
        self.rng = rng or random.Random()
        # Every feed is due at once at start: the first poll is not worth a wait.
        self._due = {name: _Due(now, interval) for name, interval in intervals.items()}
        self._polled: set[str] = set()  # since the current cycle began
        self.cycles_done = 0

    @property
    def names(self) -> list[str]:
        return list(self._due)

    def update(self, intervals: dict[str, float], now: float) -> None:
        """A reload: new feeds are due at once, removed ones forgotten (a poll of one still
        running ends unscheduled), the others keep their due time under the new interval."""
        for name in list(self._due):
            if name not in intervals:
                del self._due[name]
                self._polled.discard(name)
        for name, interval in intervals.items():
            if name in self._due:
                self._due[name].interval_s = interval
            else:
                self._due[name] = _Due(now, interval)

    def known(self, name: str) -> bool:
        return name in self._due

    def due(self, now: float) -> list[str]:
        """Feeds whose time has come and that are not being fetched, most overdue first."""
        ready = [(d.at, name) for name, d in self._due.items() if not d.in_flight and d.at <= now]
        return [name for _, name in sorted(ready)]

    def started(self, name: str) -> None:
        self._due[name].in_flight = True

    def finished(self, name: str, started_at: float, *, not_before: float = 0.0) -> bool:
        """Records a poll of name that began at started_at (fetched, or skipped); returns
        True when it completes a cycle. The next poll is one interval after this one began,
        shortened by up to jitter_fraction of it (never lengthened: a desk waits no longer
        than it configured), and never before not_before (Retry-After, an open breaker)."""
        due = self._due[name]
        due.in_flight = False
        wait = due.interval_s * (1.0 - self.rng.uniform(0.0, self.jitter_fraction))
        due.at = max(started_at + wait, not_before)
        self._polled.add(name)
        if self._polled >= self._due.keys():
            self._polled.clear()
            self.cycles_done += 1
            return True
        return False

    def next_due(self) -> float:
        """The earliest due time of a feed not in flight (inf when none)."""
        return min((d.at for d in self._due.values() if not d.in_flight), default=float("inf"))

    def next_poll_in(self, name: str, now: float) -> float | None:
        due = self._due.get(name)
        if due is None or due.in_flight:
            return None
        return max(0.0, due.at - now)

    def in_flight(self) -> int:
        return sum(d.in_flight for d in self._due.values())
