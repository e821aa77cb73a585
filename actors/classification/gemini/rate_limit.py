"""Pacing for model calls: a requests-per-minute token bucket and retry backoff."""

from __future__ import annotations

import random
import threading
import time
from typing import Callable


class RateLimiter:
    """A token bucket shared by the actor thread and the call workers: on average at most
    ``per_minute`` requests a minute, ``burst`` at once. A 429's Retry-After pauses it for
    every worker, not only the one that was told."""

    def __init__(self, per_minute: float, burst: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = max(1.0, float(burst))
        self.clock = clock
        self.tokens = self.burst
        self.updated = clock()
        self.paused_until = 0.0
        self.lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def try_acquire(self) -> bool:
        """Takes a token if one is there now."""
        with self.lock:
            now = self.clock()
            self._refill(now)
            if now < self.paused_until or self.tokens < 1.0:
                return False
            self.tokens -= 1.0
            return True

    def wait_s(self) -> float:
        """Seconds until try_acquire() can succeed (0: now)."""
        with self.lock:
            now = self.clock()
            self._refill(now)
            refill = 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate
            return max(refill, self.paused_until - now, 0.0)

    def acquire(self, timeout_s: float, stop: threading.Event | None = None) -> bool:
        """Waits for a token up to timeout_s; False on timeout or when stop is set."""
        deadline = self.clock() + timeout_s
        while not self.try_acquire():
            wait = self.wait_s()
            if self.clock() + wait > deadline:
                return False
            if stop is not None:
                if stop.wait(max(wait, 0.001)):
                    return False
            else:
                time.sleep(max(wait, 0.001))
        return True

    def pause(self, seconds: float) -> None:
        """No request for this long (a 429 said so)."""
        with self.lock:
            self.paused_until = max(self.paused_until, self.clock() + seconds)


def backoff_s(retry: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff with jitter: retry 1 waits initial_s/2..initial_s, then doubling,
    never over max_s; the jitter keeps several workers from retrying in step."""
    ceiling = min(max_s, initial_s * (2 ** max(0, retry - 1)))
    return ceiling / 2 + random.uniform(0.0, ceiling / 2)
