"""EDGAR fair access: pace this instance's share of SEC's request rate, and back the
whole host off after SEC's rate-limit answer."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from actors.feeds.http import ERROR_BODY_BYTES, BackingOff, HttpResponse

log = logging.getLogger("catalyst.fetcher")

# EDGAR fair access (https://www.sec.gov/os/accessing-edgar-data): at most 10 requests
# a second, and after the "Request Rate Threshold Exceeded" page SEC asks clients to stay
# away for about ten minutes.
EDGAR_BACKOFF_S = 600.0
# Longest a request waits for its EDGAR turn; past it the feed is skipped this cycle.
EDGAR_MAX_WAIT_S = 60.0
EDGAR_RATE_PAGE_MARKER = b"request rate threshold exceeded"
# Requests are spaced this much wider than the rate allows: spaced at exactly 0.1 s, 11
# arrived within one second on loopback from timing jitter alone, and SEC blocks a client
# for ten minutes when it sees that.
EDGAR_PACING_MARGIN = 0.1


class EdgarGate:
    """Paces this instance's EDGAR requests at its share of the fair-access rate (a
    token bucket holding one token, so no burst can pass the rate) and backs the whole
    host off after a rate-limit answer."""

    def __init__(self, max_rps: float, instances: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.max_rps = max_rps
        self.interval_s = max(1, instances) / max_rps * (1.0 + EDGAR_PACING_MARGIN)
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self.backoff_until = 0.0
        self.requests = 0
        self.rate_limited = 0

    def share(self, fraction: float) -> None:
        """This fetcher's share of all EDGAR feeds (several hosts: the ones whose leases
        it holds): its pace is that share of the fair-access rate, so all hosts together
        stay under it."""
        base = self.max_rps * min(1.0, max(fraction, 1e-6))
        with self._lock:
            self.interval_s = 1.0 / base * (1.0 + EDGAR_PACING_MARGIN)

    def acquire(self) -> None:
        """Wait for this request's turn; BackingOff when the host is backed off."""
        with self._lock:
            now = self.clock()
            if now < self.backoff_until:
                raise BackingOff(f"EDGAR backed off for {self.backoff_until - now:.0f} s more "
                                 "after a rate-limit answer")
            slot = max(now, self._next_slot)
            if slot - now > EDGAR_MAX_WAIT_S:
                raise BackingOff(f"EDGAR queue longer than {EDGAR_MAX_WAIT_S:g} s; not sent this cycle")
            self._next_slot = slot + self.interval_s
            self.requests += 1
        if slot > now:
            self.sleep(slot - now)

    def back_off(self, reason: str) -> None:
        with self._lock:
            self.backoff_until = self.clock() + EDGAR_BACKOFF_S
            self.rate_limited += 1
        log.warning("EDGAR rate limit (%s): no EDGAR requests for %.0f s", reason, EDGAR_BACKOFF_S)

    def stats(self) -> dict:
        remaining = max(0.0, self.backoff_until - self.clock())
        return {"max_rps": round(1.0 / self.interval_s, 3), "requests": self.requests,
                "rate_limited": self.rate_limited, "backoff_remaining_s": round(remaining, 1)}


def is_rate_limit_answer(response: HttpResponse) -> bool:
    """EDGAR's "Request Rate Threshold Exceeded" page (sent with 403 or 200), or a 429."""
    if response.status == 429:
        return True
    return EDGAR_RATE_PAGE_MARKER in response.body[:ERROR_BODY_BYTES].lower()
