"""Discord's rate limits as one process sees them: buckets learnt from X-RateLimit-* headers,
the global limit, and a safe default pace for a route before any header has arrived.

Discord shares one bucket between routes that it says share one (X-RateLimit-Bucket), so the
state is kept per bucket and routes only point at buckets. A route is our own name for what
we post to (``webhook:<id>``): never the URL, which carries the webhook's token.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

DEFAULT_LIMIT = 5  # posts per window for a route whose headers we have not seen yet
DEFAULT_WINDOW_S = 2.0
MARGIN_S = 0.05  # added to every reset Discord announces: transit time and clock slack
FALLBACK_RETRY_S = 1.0  # a 429 that says nothing about when to come back
MAX_WAIT_S = 3600.0  # a reset or retry_after beyond this is treated as this (a garbage value)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_WAIT_S)


@dataclass
class Bucket:
    """One of Discord's buckets: ``remaining`` posts until ``reset_at`` (monotonic)."""

    limit: int
    remaining: int
    reset_at: float


@dataclass
class Verdict:
    """What a response said about the limits; ``retry_after`` is set for a 429 only."""

    retry_after: float | None = None
    is_global: bool = False
    scope: str | None = None
    bucket: str | None = None


class RateLimits:
    """The limiter for every Discord route of one process; thread-safe.

    ``delay(route)`` says how long to wait before the next post; ``sent(route)`` is called
    as a post leaves and ``update(route, status, headers, body)`` when its answer arrives.
    """

    def __init__(self, *, margin_s: float = MARGIN_S, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.margin_s = margin_s
        self.clock = clock
        self.wall = wall
        self._lock = threading.Lock()
        self._defaults: dict[str, tuple[int, float]] = {}
        self._recent: dict[str, collections.deque[float]] = {}  # route -> recent send times
        self._route_bucket: dict[str, str] = {}
        self._buckets: dict[str, Bucket] = {}
        self._held: dict[str, float] = {}  # route -> until, after a 429 without bucket headers
        self._global_until = 0.0
        self.counts: collections.Counter[str] = collections.Counter()

    def register(self, route: str, limit: int = DEFAULT_LIMIT,
                 window_s: float = DEFAULT_WINDOW_S) -> None:
        """The safe pace for ``route`` until Discord's headers say otherwise."""
        with self._lock:
            self._defaults[route] = (max(1, int(limit)), float(window_s))
            self._recent.setdefault(route, collections.deque(maxlen=max(1, int(limit))))

    def delay(self, route: str) -> float:
        """Seconds to wait before posting to ``route``; 0 when a post may go now."""
        now = self.clock()
        with self._lock:
            wait = self._global_until - now
            wait = max(wait, self._held.get(route, 0.0) - now)
            bucket = self._buckets.get(self._route_bucket.get(route, ""))
            if bucket is not None:
                if bucket.remaining <= 0 and now < bucket.reset_at:
                    wait = max(wait, bucket.reset_at - now)
            else:
                limit, window = self._defaults.get(route, (DEFAULT_LIMIT, DEFAULT_WINDOW_S))
                recent = self._recent.get(route)
                if recent is not None and len(recent) >= limit:
                    wait = max(wait, recent[0] + window + self.margin_s - now)
            return max(0.0, wait)

    def sent(self, route: str) -> None:
        """A post to ``route`` is leaving now."""
        now = self.clock()
        with self._lock:
            limit, _ = self._defaults.get(route, (DEFAULT_LIMIT, DEFAULT_WINDOW_S))
            self._recent.setdefault(route, collections.deque(maxlen=limit)).append(now)
            bucket = self._buckets.get(self._route_bucket.get(route, ""))
            if bucket is not None:
                if now >= bucket.reset_at:  # a new window; its answer brings the new reset
                    bucket.remaining = bucket.limit
                bucket.remaining -= 1
            self.counts["sent"] += 1

    def update(self, route: str, status: int, headers: Mapping[str, str],
               body: Any = None) -> Verdict:
        """Learns from an answer's headers (and a 429's JSON body)."""
        now = self.clock()
        h = {str(k).lower(): v for k, v in headers.items()}
        verdict = Verdict(scope=h.get("x-ratelimit-scope"), bucket=h.get("x-ratelimit-bucket"))
        reset_after = _number(h.get("x-ratelimit-reset-after"))
        if reset_after is None and _number(h.get("x-ratelimit-reset")) is not None:
            reset_after = max(0.0, _number(h["x-ratelimit-reset"]) - self.wall())
        limit = _number(h.get("x-ratelimit-limit"))
        remaining = _number(h.get("x-ratelimit-remaining"))
        with self._lock:
            if limit is not None and remaining is not None and reset_after is not None:
                bucket_id = verdict.bucket or f"route:{route}"
                self._route_bucket[route] = bucket_id
                bucket = self._buckets.get(bucket_id)
                reset_at = now + _clamp(reset_after) + self.margin_s
                if bucket is None:
                    self._buckets[bucket_id] = Bucket(int(limit), int(remaining), reset_at)
                else:
                    bucket.limit, bucket.remaining, bucket.reset_at = \
                        int(limit), int(remaining), reset_at
            if status != 429:
                return verdict
            body = body if isinstance(body, dict) else {}
            retry_after = _number(body.get("retry_after"))
            if retry_after is None:
                retry_after = _number(h.get("retry-after"))
            if retry_after is None:
                retry_after = reset_after if reset_after is not None else FALLBACK_RETRY_S
            retry_after = _clamp(retry_after)
            verdict.retry_after = retry_after
            verdict.is_global = (body.get("global") is True
                                 or str(h.get("x-ratelimit-global", "")).lower() == "true"
                                 or verdict.scope == "global")
            until = now + retry_after + self.margin_s
            self.counts["429"] += 1
            if verdict.is_global:
                self.counts["429_global"] += 1
                self._global_until = max(self._global_until, until)
            else:
                bucket = self._buckets.get(self._route_bucket.get(route, ""))
                if bucket is not None:
                    bucket.remaining = 0
                    bucket.reset_at = max(bucket.reset_at, until)
                self._held[route] = max(self._held.get(route, 0.0), until)
            return verdict

    def snapshot(self, route: str) -> dict[str, Any]:
        """The route's bucket as numbers, for stats (no names that could carry a secret)."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(self._route_bucket.get(route, ""))
            out: dict[str, Any] = {"global_wait_s": round(max(0.0, self._global_until - now), 3)}
            if bucket is not None:
                out.update(limit=bucket.limit, remaining=bucket.remaining,
                           reset_in_s=round(max(0.0, bucket.reset_at - now), 3))
            return out


_process_limits: RateLimits | None = None
_process_lock = threading.Lock()


def process_limits() -> RateLimits:
    """The one RateLimits of this process: Discord's global limit is per client, not per sink."""
    global _process_limits
    with _process_lock:
        if _process_limits is None:
            _process_limits = RateLimits()
        return _process_limits
