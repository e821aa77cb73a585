"""A circuit breaker: stop calling what keeps failing, and try it again later.

Used per feed by the fetcher and per model by the Gemini classifier."""

from __future__ import annotations

import logging
import time
from typing import Callable, Literal

log = logging.getLogger("catalyst.fetcher")

BreakerState = Literal["closed", "open", "half_open"]
BACKOFF_FACTOR = 2.0


class CircuitBreaker:
    """Closed until N consecutive failures, then open with exponential backoff; one
    half-open trial decides between closing again and a longer open period."""

    def __init__(self, name: str, failures: int, backoff_initial_s: float, backoff_max_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.threshold = failures
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = max(backoff_max_s, backoff_initial_s)
        self.clock = clock
        self.state: BreakerState = "closed"
        self.consecutive_failures = 0
        self.backoff_s = 0.0
        self.open_until = 0.0
        self.opened = 0  # how many times it has opened, for stats

    def allow(self) -> bool:
        """May the feed be fetched now? Moves open -> half_open when the backoff is over."""
        if self.state == "open" and self.clock() >= self.open_until:
            self.state = "half_open"
            log.info("breaker %s half-open: one trial fetch", self.name)
        return self.state != "open"

    def record_success(self) -> None:
        if self.state != "closed":
            log.info("breaker %s closed after a successful %s fetch", self.name, self.state)
        self.state = "closed"
        self.consecutive_failures = 0
        self.backoff_s = 0.0

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state == "half_open":
            self._open(min(self.backoff_s * BACKOFF_FACTOR, self.backoff_max_s))
        elif self.state == "closed" and self.consecutive_failures >= self.threshold:
            self._open(self.backoff_initial_s)

    def _open(self, backoff_s: float) -> None:
        self.state = "open"
        self.backoff_s = backoff_s
        self.open_until = self.clock() + backoff_s
        self.opened += 1
        log.warning("breaker %s open for %.1f s after %d consecutive failures",
                    self.name, backoff_s, self.consecutive_failures)

    def stats(self) -> dict:
        remaining = max(0.0, self.open_until - self.clock()) if self.state == "open" else 0.0
        return {"state": self.state, "consecutive_failures": self.consecutive_failures,
                "backoff_s": round(self.backoff_s, 3), "open_remaining_s": round(remaining, 3),
                "opened": self.opened}
