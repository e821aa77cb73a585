"""Bounded HTTP for feed polling: size caps, a wall deadline, redirects checked by hand."""

from __future__ import annotations

import datetime
import email.utils
import heapq
import http.cookiejar
import itertools
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from actors.errors import FeedError

log = logging.getLogger("catalyst.fetcher")

PRODUCT_USER_AGENT = "catalyst-supervisor/0.1 (+feed poller)"
ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
ACCEPT_ENCODING = "gzip, deflate"
MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
# An error page is read only this far: enough to recognise EDGAR's rate-limit page.
ERROR_BODY_BYTES = 64 * 1024
# The wall deadline of one request (headers, redirects and body) when the config has no
# fetch.request_deadline_s: the connect timeout plus this many read timeouts. The read
# timeout alone restarts with every byte, so a server trickling bytes would never end.
DEADLINE_READ_TIMEOUTS = 2.0
# Host pools kept by the session; feeds live on a few dozen hosts at most.
POOL_HOSTS = 64
# Longest wait a Retry-After header can impose on one feed; a server asking a day is
# treated as asking an hour, and its breaker takes it from there.
RETRY_AFTER_MAX_S = 3600.0



class FetchError(FeedError):
    """The request failed: connection, status, redirects."""


class FetchTimeout(FetchError):
    """No answer within the connect/read timeouts or the request's wall deadline."""


class BodyTooLarge(FetchError):
    """The body passed the byte cap."""


class RateLimited(FetchError):
    """EDGAR (or another host) said the request rate is too high."""


class BackingOff(FetchError):
    """The host is in a rate-limit backoff; the request was not sent."""


def check_redirect(came_from: str, location: str) -> str:
    """Where a redirect leads; FetchError when it leaves the web (another scheme) or goes
    from https down to plain http (a downgrade anyone on the path could have asked for)."""
    url = urljoin(came_from, location)
    if not url.lower().startswith(("http://", "https://")):
        raise FetchError(f"redirect to a non-web URL {url[:200]!r}")
    if came_from.lower().startswith("https://") and url.lower().startswith("http://"):
        raise FetchError(f"redirect from https to plain http {url[:200]!r}: refused")
    return url


class HttpStatusError(FetchError):
    """A status other than 2xx or 304; retry_after_s when the server named a wait."""

    def __init__(self, status: int, retry_after_s: float | None = None):
        wait = f", Retry-After {retry_after_s:.0f} s" if retry_after_s is not None else ""
        super().__init__(f"HTTP {status}{wait}")
        self.status = status
        self.retry_after_s = retry_after_s


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP-date), capped at
    RETRY_AFTER_MAX_S; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


@dataclass
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str
    bytes_read: int


# Deadline watchdog ---------------------------------------------------------------

_current = threading.local()


class _Watch:
    """One request's deadline: when it passes, the request's socket is shut down, which
    wakes a blocked recv at once (closing the fd from another thread would not)."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.expired = False
        self._finished = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def finish(self) -> None:
        # Once finished, expiry is a no-op: the connection may already serve another request.
        with self._lock:
            self._finished = True
            self._sock = None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or reset: nothing left to wake


class Watchdog:
    """One thread that expires request deadlines, earliest first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def watch(self, deadline_s: float) -> _Watch:
        watch = _Watch(self.clock() + deadline_s)
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="fetch-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (watch.deadline, next(self._seq), watch))
            self._cond.notify()
        return watch

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = self.clock()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2].expire()
                timeout = self._heap[0][0] - now if self._heap else None
                self._cond.wait(timeout)

    def close(self) -> None:
        """Stop the thread; requests still running are cut off now, not left to trickle."""
        with self._cond:
            self._closed = True
            for _, _, watch in self._heap:
                watch.expire()
            self._heap.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=1.0)


class _WatchedConnectionMixin:
    def getresponse(self):  # type: ignore[no-untyped-def]
        # Called once per request and redirect hop, after the request is sent and before
        # the status line is read: the moment a slow or trickling server can start to stall.
        watch = getattr(_current, "watch", None)
        if watch is not None and self.sock is not None:  # type: ignore[attr-defined]
            watch.attach(self.sock)  # type: ignore[attr-defined]
        return super().getresponse()  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedConnectionMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnectionMixin, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """An adapter whose connections report their socket to the current request's watch."""

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):  # type: ignore[no-untyped-def]
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


# The client ----------------------------------------------------------------------


class HttpClient:
    """One pooled requests.Session; every request bounded in bytes and wall time."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float, deadline_s: float,
                 pool_size: int):
        self.timeouts = (connect_timeout_s, read_timeout_s)
        self.deadline_s = deadline_s
        self.session = requests.Session()
        self.session.max_redirects = MAX_REDIRECTS  # _follow enforces it; this is a backstop
        # No cookies: feeds need none, and a jar a server can fill is an unbounded cache.
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = _WatchedAdapter(pool_connections=POOL_HOSTS, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"Accept": ACCEPT, "Accept-Encoding": ACCEPT_ENCODING,
                                     "User-Agent": PRODUCT_USER_AGENT})
        self.watchdog = Watchdog()

    def get(self, url: str, headers: Mapping[str, str], max_bytes: int) -> HttpResponse:
        """GET url; the body of a 2xx is read in full up to max_bytes, others in part."""
        watch = self.watchdog.watch(self.deadline_s)
        _current.watch = watch
        try:
            return self._get(url, headers, max_bytes, watch)
        finally:
            _current.watch = None
            watch.finish()

    def _get(self, url: str, headers: Mapping[str, str], max_bytes: int, watch: _Watch) -> HttpResponse:
        try:
            resp = self._follow(url, dict(headers))
        except requests.RequestException as exc:
            raise self._failure(exc, watch) from None
        try:
            body = self._read_body(resp, max_bytes)
        except requests.RequestException as exc:
            raise self._failure(exc, watch) from None
        finally:
            resp.close()
        if watch.expired:  # a shut-down socket can look like a clean end of body
            raise FetchTimeout(f"no complete answer within the {self.deadline_s:g} s deadline")
        return HttpResponse(resp.status_code, resp.headers, body, resp.url, len(body))

    def _follow(self, url: str, headers: dict[str, str]) -> requests.Response:
        """GET, following at most MAX_REDIRECTS redirects.

        Followed here rather than by requests, which reads each redirect's body whole
        into memory: a hostile 302 could send gigabytes before the deadline.
        """
        for _ in range(MAX_REDIRECTS + 1):
            resp = self.session.get(url, headers=headers, timeout=self.timeouts, stream=True,
                                    allow_redirects=False)
            if not resp.is_redirect:
                return resp
            url = check_redirect(resp.url, resp.headers["Location"])
            resp.close()  # unread: the connection is dropped, not reused
        raise FetchError(f"more than {MAX_REDIRECTS} redirects (a redirect loop?)")

    @staticmethod
    def _read_body(resp: requests.Response, max_bytes: int) -> bytes:
        if resp.status_code == 304:
            return b""
        ok = 200 <= resp.status_code < 300
        declared = resp.headers.get("Content-Length", "")
        if ok and declared.isdigit() and int(declared) > max_bytes:
            raise BodyTooLarge(f"Content-Length {declared} exceeds the {max_bytes}-byte cap")
        limit = max_bytes if ok else min(max_bytes, ERROR_BODY_BYTES)
        body = bytearray()
        # Decoded bytes are counted, so a gzip bomb stops at the cap too.
        for chunk in resp.iter_content(CHUNK_BYTES):
            body += chunk
            if len(body) > limit:
                if ok:
                    raise BodyTooLarge(f"body exceeds the {max_bytes}-byte cap")
                return bytes(body[:limit])
        return bytes(body)

    def _failure(self, exc: requests.RequestException, watch: _Watch) -> FetchError:
        if watch.expired:
            return FetchTimeout(f"no complete answer within the {self.deadline_s:g} s deadline")
        if isinstance(exc, requests.Timeout):
            return FetchTimeout(f"timed out: {_short(exc)}")
        return FetchError(f"{type(exc).__name__}: {_short(exc)}")

    def close(self) -> None:
        self.watchdog.close()
        self.session.close()


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."
