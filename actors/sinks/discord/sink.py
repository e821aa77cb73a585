"""The Discord webhook sink: alerts (and admin events) as embeds, a chart attached, at the
pace Discord's rate-limit headers allow, and nothing dropped.

``deliver`` blocks until Discord has the message (``?wait=true``, so an error is seen), which
may be minutes while Discord is limiting or down: the alert actor runs it on a SinkWorker
thread. It waits out 429s (retry_after, the global flag) and retries 5xx and network errors
with backoff, without end for alerts. A 401, 403 or 404 means the webhook is gone or wrong:
the sink disables itself and every later delivery fails at once (permanent), with no retry
storm, until the process restarts.

Discord's webhooks take no idempotency key: a post whose answer is lost (a read timeout, or
a crash before the journal records it) is sent again, so at that one edge an alert can show
twice. Everything else is exactly once through the alert journal.

The webhook URL carries its token, so it is a secret: it is never logged, never put in an
exception message or a stat; the sink is known by the environment variable it came from.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import requests

from actors.errors import SinkError
from actors.logsetup import add_secret
from actors.sinks.base import Sink
from actors.sinks.discord.embed import (
    CHART_FILENAME,
    message_payload,
    payload_json,
    plain_payload,
)
from actors.sinks.discord.pacing import (
    DEFAULT_LIMIT,
    DEFAULT_WINDOW_S,
    RateLimits,
    process_limits,
)
from catalyst_config import parse_webhook_url

if TYPE_CHECKING:
    from catalyst_config import SinkConfig

log = logging.getLogger("catalyst.discord")

CONNECT_TIMEOUT_S = 5.0
MAX_CHART_BYTES = 8 * 1024 * 1024  # Discord's smallest upload limit (non-boosted servers)
MAX_ANSWER_BYTES = 256 * 1024  # Discord's answers are small; a bigger one is not Discord's
EVENTS_KEPT = 100
DISABLING_STATUSES = {401: "unauthorized", 403: "forbidden", 404: "unknown webhook"}

class DiscordSink(Sink):
    """Posts to one webhook; thread-safe to close from another thread, not to deliver from two."""

    blocking = True  # deliver() may wait for minutes: run it off the actor loop

    def __init__(self, url: str, *, name: str, timeout_s: float = 10.0,
                 default_limit: int = DEFAULT_LIMIT, default_window_s: float = DEFAULT_WINDOW_S,
                 retry_initial_s: float = 1.0, retry_max_s: float = 60.0,
                 outage_after_s: float = 60.0, give_up_after_s: float | None = None,
                 username: str | None = None, limits: RateLimits | None = None,
                 clock: Callable[[], float] = time.monotonic):
        try:
            webhook_id, self._token = parse_webhook_url(url)
        except ValueError as exc:
            raise SinkError(f"{name}: {exc}", permanent=True) from None
        add_secret(self._token)
        self.name = name
        self._url = url.rstrip("/")
        self.route = f"webhook:{webhook_id}"
        self.timeout = (min(CONNECT_TIMEOUT_S, timeout_s), timeout_s)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.outage_after_s = outage_after_s
        self.give_up_after_s = give_up_after_s
        self.username = username
        self.limits = limits or process_limits()
        self.limits.register(self.route, default_limit, default_window_s)
        self.clock = clock
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "catalyst-supervisor (discord webhook sink)"
        self.disabled: str | None = None  # why, once a 401/403/404 disabled the sink
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._events: collections.deque[dict[str, str]] = collections.deque(maxlen=EVENTS_KEPT)
        self._failing_since: float | None = None
        self._outage_reported = False
        self._counts: collections.Counter[str] = collections.Counter()

    # Sink interface ------------------------------------------------------

    def deliver(self, record: dict[str, Any], chart: str | None = None) -> None:
        if self.disabled:
            raise SinkError(f"{self.name} is disabled ({self.disabled})", permanent=True)
        image = self._read_chart(chart)
        payload = message_payload(record, with_chart=image is not None, username=self.username)
        started = self.clock()
        failures = 0
        downgraded = False
        while True:
            self._wait_for_turn(started)
            try:
                status, headers, answer = self._post(payload, image)
            except requests.RequestException as exc:
                failures += 1
                self._failed(f"{type(exc).__name__}", failures, started)
                continue
            verdict = self.limits.update(self.route, status, headers, answer)
            if 200 <= status < 300:
                self._succeeded(image is not None)
                return
            if status == 429:
                self._count("429_global" if verdict.is_global else "429")
                log.info("%s: rate limited (%s), retrying in %.2fs", self.name,
                         "global" if verdict.is_global else f"scope {verdict.scope or 'user'}",
                         verdict.retry_after or 0.0)
                continue  # the limiter now holds the route (or everything) until retry_after
            if status in DISABLING_STATUSES:
                self._disable(status, answer)
            if status == 413 and image is not None:  # too large: the text matters, not the chart
                self._count("chart_dropped")
                image = None
                payload = message_payload(record, with_chart=False, username=self.username)
                continue
            if status == 400:
                self._count("rejected")
                if not downgraded:  # our embed broke a rule we do not know of: send plain text
                    downgraded, image = True, None
                    payload = plain_payload(record, username=self.username)
                    self._event("sink_rejected", "bad_request", "Discord rejected an embed "
                                f"({self._describe(answer)}); sent as plain text", "warning")
                    continue
                raise SinkError(f"{self.name}: Discord rejected the message "
                                f"({self._describe(answer)})")
            failures += 1
            self._failed(f"HTTP {status}", failures, started)

    def close(self) -> None:
        self._closed.set()
        self.session.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
        out.update(self.limits.snapshot(self.route))
        out["disabled"] = 1 if self.disabled else 0
        return out

    def pop_events(self) -> list[dict[str, str]]:
        """Admin events raised since the last call (taken by the owner's thread)."""
        out = []
        while self._events:
            try:
                out.append(self._events.popleft())
            except IndexError:
                break
        return out

    # Internals ----------------------------------------------------------

    def _wait_for_turn(self, started: float) -> None:
        while True:
            if self._closed.is_set():
                raise SinkError(f"{self.name}: closed")
            if self.disabled:
                raise SinkError(f"{self.name} is disabled ({self.disabled})", permanent=True)
            wait = self.limits.delay(self.route)
            if wait <= 0:
                self.limits.sent(self.route)
                return
            self._check_give_up(started, wait)
            self._count("waits")
            self._closed.wait(wait)

    def _check_give_up(self, started: float, wait: float) -> None:
        if self.give_up_after_s is not None and \
                self.clock() + wait - started > self.give_up_after_s:
            raise SinkError(f"{self.name}: not delivered within {self.give_up_after_s:.0f}s",
                            retry_after=wait)

    def _post(self, payload: dict[str, Any], image: bytes | None) -> tuple[int, Any, Any]:
        url = self._url + ("&" if "?" in self._url else "?") + "wait=true"
        if image is None:
            response = self.session.post(url, data=payload_json(payload).encode(),
                                         headers={"Content-Type": "application/json"},
                                         timeout=self.timeout, stream=True)
        else:
            response = self.session.post(
                url, data={"payload_json": payload_json(payload)},
                files={"files[0]": (CHART_FILENAME, image, "image/png")},
                timeout=self.timeout, stream=True)
        with response:
            raw = b""
            for chunk in response.iter_content(16384):
                raw += chunk
                if len(raw) > MAX_ANSWER_BYTES:
                    break
            try:
                answer = json.loads(raw) if raw else None
            except ValueError:
                answer = None
            self._count("requests")
            return response.status_code, response.headers, answer

    def _read_chart(self, chart: str | None) -> bytes | None:
        if not chart:
            return None
        try:
            if os.path.getsize(chart) > MAX_CHART_BYTES:
                self._count("chart_too_large")
                return None
            with open(chart, "rb") as f:
                return f.read()
        except OSError:
            self._count("chart_missing")
            return None

    def _succeeded(self, with_chart: bool) -> None:
        self._count("posted")
        if with_chart:
            self._count("charts")
        if self._outage_reported:
            down = self.clock() - (self._failing_since or self.clock())
            self._event("sink_recovered", "recovered",
                        f"{self.name} delivers again after {down:.0f}s of failures", "info")
        self._failing_since, self._outage_reported = None, False

    def _failed(self, what: str, failures: int, started: float) -> None:
        """A transient failure (5xx, timeout, no connection): back off, then try again."""
        self._count("failures")
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now
        if not self._outage_reported and now - self._failing_since >= self.outage_after_s:
            self._outage_reported = True
            self._event("sink_outage", "unreachable",
                        f"{self.name} failing for {now - self._failing_since:.0f}s ({what}); "
                        "alerts wait in order and are sent when it answers", "error")
        backoff = min(self.retry_max_s, self.retry_initial_s * 2 ** min(failures - 1, 16))
        backoff *= random.uniform(0.8, 1.0)
        log.warning("%s: %s, retry %d in %.1fs", self.name, what, failures, backoff)
        self._check_give_up(started, backoff)
        self._closed.wait(backoff)

    def _describe(self, answer: Any) -> str:
        """Discord's error body in a few words; the token masked should a proxy echo it."""
        return _describe(answer).replace(self._token, "***")

    def _disable(self, status: int, answer: Any) -> None:
        """The webhook is wrong or gone: stop here, with no retry storm (its owner reports)."""
        self.disabled = f"HTTP {status} {DISABLING_STATUSES[status]}: {self._describe(answer)}"
        self._count(f"disabled_by_{status}")
        log.error("%s disabled: Discord answered %s", self.name, self.disabled)
        raise SinkError(f"{self.name} disabled: Discord answered {self.disabled}", permanent=True)

    def _event(self, event: str, reason: str, message: str, level: str) -> None:
        self._events.append({"event": event, "reason": reason, "message": message,
                             "level": level})

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1


def _describe(answer: Any) -> str:
    """Discord's error body in a few words (it never carries the token)."""
    if isinstance(answer, dict):
        code, message = answer.get("code"), answer.get("message")
        return f"code {code}: {str(message)[:200]}" if code is not None else str(message)[:200]
    return "no JSON body"


def discord_sink_from_config(sink_cfg: SinkConfig, url: str, *, name: str,
                             give_up_after_s: float | None = None) -> DiscordSink:
    """A DiscordSink with a SinkConfig's settings (alerts never give up; admin events may)."""
    return DiscordSink(url, name=name, timeout_s=sink_cfg.timeout_s,
                       default_limit=sink_cfg.rate_limit, default_window_s=sink_cfg.rate_window_s,
                       retry_initial_s=sink_cfg.retry_initial_s, retry_max_s=sink_cfg.retry_max_s,
                       outage_after_s=sink_cfg.outage_after_s, username=sink_cfg.username,
                       give_up_after_s=give_up_after_s)
