"""The console's HTTP server: its own threads, reading only what the loop publishes.

Routes (GET unless said):
    /                 the live page (plain HTML, CSS and JavaScript from this package)
    /health           liveness: the supervisor's loop published within console.live_within_s
    /ready            readiness: every actor running, a recent fetch, no sink disabled
    /metrics          Prometheus, the same collector as supervisor.metrics_port
    /api/snapshot     the page's data as JSON
    /api/events       the same, pushed as server-sent events when it changes
    /api/dead-letters the newest dead letters (relayed to the ledger's owner)
    POST /api/actors/NAME/restart, /api/feeds/NAME/pause, /api/feeds/NAME/resume,
         /api/dead-letters/replay   actions: need the bearer token

Actions go through the operator's control channel (supervisor/control.py), as the CLI's
do: one place checks their arguments, and the loop runs them on its own thread.

Hostile clients: requests are bounded in size (path, headers, body), rate (a token bucket
per client address), concurrency (connections and event streams) and time (a socket
timeout, and a stream's lifetime); a Host header not in console.allowed_hosts is refused
(a DNS-rebinding page cannot read the console), and so is a cross-origin action. Answers
carry no secret (supervisor/console/snapshot.py) and a Content-Security-Policy that lets
the page run only its own script.
"""

from __future__ import annotations

import hmac
import http.server
import json
import logging
import os
import re
import selectors
import threading
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from supervisor import control

log = logging.getLogger("catalyst.console")

MAX_PATH_CHARS = 2048
MAX_BODY_BYTES = 64 * 1024  # a replay of a few hundred keys; more is refused (413)
SOCKET_TIMEOUT_S = 10.0  # a client that sends or reads nothing this long is dropped
STREAM_MAX_S = 300.0  # an event stream is closed after this; the browser reconnects
STREAM_KEEPALIVE_S = 15.0  # a comment line keeps proxies from closing a quiet stream
STREAM_RETRY_MS = 2000  # how soon the browser reconnects a closed stream
ACTION_TIMEOUT_S = 8.0  # an action's answer from the loop (a backup's relay is 8 s too)
RATE_BURST_S = 2.0  # a client may burst this many seconds' worth of requests
RATE_CLIENTS_KEPT = 1024  # client addresses the rate limiter remembers
DEAD_LETTERS_SHOWN_MAX = 100
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
          "/static/console.css": ("console.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Snapshots are built while asked for within this (a page open, a probe every few seconds);
# a request finding the last one stale waits this long for the next.
WANTED_FOR_S = 30.0
WANT_WAIT_S = 3.0
ACTION_PATH = re.compile(r"^/api/(actors|feeds)/([^/]{1,200})/(restart|pause|resume)$")


class RateLimiter:
    """A token bucket per client address: `rate` requests a second, bursts of RATE_BURST_S."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate = rate
        self.burst = max(1.0, rate * RATE_BURST_S)
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self.lock = threading.Lock()

    def allow(self, address: str) -> bool:
        now = self.clock()
        with self.lock:
            tokens, at = self.buckets.pop(address, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if len(self.buckets) >= RATE_CLIENTS_KEPT:  # forget the longest unseen
                del self.buckets[next(iter(self.buckets))]
            ok = tokens >= 1.0
            self.buckets[address] = (tokens - 1.0 if ok else tokens, now)
            return ok


class Published:
    """The snapshot the loop published last, its JSON, and a condition streams wait on.

    The loop beats on every turn (one float: what /health judges) but builds a snapshot
    only while someone wants one (a page, a probe, a script asked within WANTED_FOR_S), so
    an unwatched console costs the supervisor nothing but that."""

    def __init__(self):
        self.cond = threading.Condition()
        self.version = 0
        self.snapshot: dict[str, Any] | None = None
        self.at = 0.0  # monotonic time of the last publish
        self.loop_at = 0.0  # monotonic time of the loop's last turn
        self.wanted_at = -WANTED_FOR_S  # monotonic time of the last request for a snapshot
        self._json: bytes | None = None
        self.closing = False

    def beat(self, now: float) -> None:
        self.loop_at = now

    def wanted(self, now: float) -> bool:
        return now - self.wanted_at < WANTED_FOR_S

    def fresh(self, max_age_s: float) -> dict[str, Any] | None:
        """A snapshot at most max_age_s old, asking the loop for one and waiting for it
        (WANT_WAIT_S at most) when the last is older; None if none comes."""
        self.wanted_at = time.monotonic()
        with self.cond:
            if time.monotonic() - self.at > max_age_s:
                version = self.version
                self.cond.wait_for(lambda: self.version > version or self.closing,
                                   WANT_WAIT_S)
            return self.snapshot if time.monotonic() - self.at <= max_age_s + WANT_WAIT_S \
                else None

    def publish(self, snapshot: dict[str, Any]) -> None:
        with self.cond:
            self.snapshot, self._json = snapshot, None
            self.version += 1
            self.at = time.monotonic()
            self.cond.notify_all()

    def json(self) -> tuple[bytes | None, int]:
        with self.cond:
            if self.snapshot is not None and self._json is None:
                self._json = json.dumps(self.snapshot, separators=(",", ":"),
                                        default=str).encode()
            return self._json, self.version

    def wait_newer(self, version: int, timeout_s: float) -> tuple[bytes | None, int]:
        """The JSON once a version newer than `version` is out (None on timeout)."""
        with self.cond:
            self.cond.wait_for(lambda: self.version > version or self.closing, timeout_s)
            if self.version <= version or self.closing:
                return None, version
        return self.json()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()


class ConsoleServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, config, published: Published, registry, token: str | None):
        self.config = config
        self.console = config.console
        self.published = published
        self.registry = registry
        self.token = token.encode() if token else None
        self.limiter = RateLimiter(self.console.requests_per_s)
        self.connections = threading.BoundedSemaphore(self.console.max_connections)
        self.streams = threading.BoundedSemaphore(self.console.max_streams)
        self.counts: dict[str, int] = {}
        self.counts_lock = threading.Lock()
        self.static = {path: (resources.files(__package__).joinpath("static", name).read_bytes(),
                              ctype) for path, (name, ctype) in STATIC.items()}
        allowed = [h.lower().strip("[]") for h in self.console.allowed_hosts]
        self.any_host = "*" in allowed
        self.allowed_hosts = frozenset(allowed)
        super().__init__((self.console.host, self.console.port), Handler)
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False

    def serve(self) -> None:
        """Accepts connections until stop(). Woken by a pipe to stop, so an idle console
        wakes no thread (serve_forever polls twice a second)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self.socket and not self._stopping:
                        self._handle_request_noblock()

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def count(self, what: str) -> None:
        with self.counts_lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    # One thread per connection, at most max_connections: more are closed at once.
    def process_request(self, request, client_address):
        if not self.connections.acquire(blocking=False):
            self.count("refused_connections")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request, client_address):
        log.debug("console: a request from %s failed", client_address[0], exc_info=True)


class Handler(http.server.BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "catalyst-console"
    sys_version = ""  # no Python version in the Server header
    timeout = SOCKET_TIMEOUT_S

    def log_message(self, fmt: str, *args) -> None:  # the access log, at debug
        log.debug("console: %s %s", self.address_string(), fmt % args)

    # Answers -------------------------------------------------------------------

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(value, default=str).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self.server.count(f"http_{status}")
        self._json(status, {"error": message}, headers)

    # Gates ---------------------------------------------------------------------

    def _admitted(self) -> bool:
        """Size, rate and Host checks every request passes first."""
        if len(self.path) > MAX_PATH_CHARS:
            self._error(414, f"the path is longer than {MAX_PATH_CHARS} characters")
            return False
        if not self.server.limiter.allow(self.client_address[0]):
            self._error(429, "too many requests", {"Retry-After": "1"})
            return False
        host = self.headers.get("Host")
        if host is not None and not self.server.any_host:
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.lower().strip("[]") not in self.server.allowed_hosts:
                self._error(421, "this Host is not one the console answers "
                                 "(console.allowed_hosts)")
                return False
        return True

    def _authorized(self) -> bool:
        """An action's bearer token; a cross-origin request is refused whatever it carries."""
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host"):
            self._error(403, "a cross-origin action is refused")
            return False
        if self.server.token is None:
            self._error(403, "actions are disabled: the console has no token "
                             "(set CATALYST_CONSOLE_TOKEN for the service)")
            return False
        given = self.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            self._error(401, "this action needs the console's bearer token",
                        {"WWW-Authenticate": 'Bearer realm="catalyst-console"'})
            return False
        if not hmac.compare_digest(given[7:].strip().encode(), self.server.token):
            self.server.count("bad_tokens")
            log.warning("console: an action with a wrong token from %s", self.client_address[0])
            self._error(403, "the token is not the console's")
            return False
        return True

    # GET -----------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._admitted():
            return
        url = urlsplit(self.path)
        path = url.path
        if path in self.server.static:
            body, ctype = self.server.static[path]
            self._send(200, body, ctype)
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif path == "/health":
            self._health()
        elif path == "/ready":
            self._ready()
        elif path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/api/snapshot":
            self.server.published.fresh(self._max_age())
            body, _ = self.server.published.json()
            if body is None:
                self._error(503, "the supervisor has not published its state yet")
            else:
                self._send(200, body, "application/json")
        elif path == "/api/events":
            self._events()
        elif path == "/api/dead-letters":
            self._dead_letters(parse_qs(url.query))
        else:
            self._error(404, f"no such page: {path[:100]}")

    def _loop_age(self) -> float | None:
        at = self.server.published.loop_at
        return round(time.monotonic() - at, 3) if at else None

    def _max_age(self) -> float:
        return 2 * self.server.console.publish_interval_s

    def _health(self) -> None:
        age = self._loop_age()
        limit = self.server.console.live_within_s
        if age is None:
            self._json(503, {"status": "starting", "reasons": ["the loop has not published "
                                                              "its state yet"]})
        elif age > limit:
            self._json(503, {"status": "stalled", "loop_age_s": age, "reasons": [
                f"the supervisor's loop has published nothing for {age:.1f} s "
                f"(more than {limit:.0f} s)"]})
        else:
            self._json(200, {"status": "ok", "loop_age_s": age})

    def _ready(self) -> None:
        snap = self.server.published.fresh(self._max_age())
        age = self._loop_age()
        if snap is None or age is None:
            self._json(503, {"ready": False, "reasons": ["the supervisor is starting"]})
            return
        readiness = dict(snap["readiness"])
        if age > self.server.console.live_within_s:
            readiness["ready"] = False
            readiness["reasons"] = [*readiness["reasons"],
                                    f"the supervisor's loop is stalled ({age:.1f} s)"]
        self._json(200 if readiness["ready"] else 503, readiness)

    def _events(self) -> None:
        """Server-sent events: the snapshot whenever the loop publishes a new one."""
        if not self.server.streams.acquire(blocking=False):
            self._error(503, f"{self.server.console.max_streams} live pages are open already",
                        {"Retry-After": "5"})
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")  # nginx: pass events on at once
            for k, v in SECURITY_HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(f"retry: {STREAM_RETRY_MS}\n\n".encode())
            version, ends = -1, time.monotonic() + STREAM_MAX_S
            while time.monotonic() < ends and not self.server.published.closing:
                self.server.published.wanted_at = time.monotonic()  # a page is watching
                body, version = self.server.published.wait_newer(version, STREAM_KEEPALIVE_S)
                if body is None:
                    self.wfile.write(b": keepalive\n\n")
                else:
                    self.wfile.write(b"id: %d\ndata: %s\n\n" % (version, body))
                self.wfile.flush()
        except OSError:
            pass  # the page went away
        finally:
            self.server.streams.release()

    def _dead_letters(self, query: dict[str, list[str]]) -> None:
        raw = (query.get("limit") or ["20"])[0]
        if not raw.isdigit() or not 0 <= int(raw) <= DEAD_LETTERS_SHOWN_MAX:
            self._error(400, f"limit must be a whole number from 0 to {DEAD_LETTERS_SHOWN_MAX}")
            return
        self._relay("dead_letters", {"limit": int(raw)})

    # POST ----------------------------------------------------------------------

    def do_POST(self) -> None:
        if not self._admitted():
            return
        body = self._body()
        if body is None:
            return
        path = urlsplit(self.path).path
        action = ACTION_PATH.match(path)
        if action is None and path != "/api/dead-letters/replay":
            self._error(404, f"no such action: {path[:100]}")
            return
        if not self._authorized():
            return
        if action is not None:
            what, name, verb = action.groups()
            name = unquote(name)
            if what == "actors" and verb == "restart":
                self._relay("restart", {"name": name})
            elif what == "feeds" and verb in ("pause", "resume"):
                self._relay(verb, {"feed": name})
            else:
                self._error(404, f"no action {verb} for {what}")
            return
        replay = body.get("keys") if isinstance(body, dict) else None
        if isinstance(body, dict) and body.get("all") is True:
            replay = "all"
        if replay is None:
            self._error(400, 'replay takes {"keys": [KEY, ...]} or {"all": true}')
            return
        self._relay("dead_letters", {"replay": replay})

    def _body(self) -> Any:
        """The request's JSON body ({} when there is none); None once answered with an error."""
        length = self.headers.get("Content-Length")
        if length is None:
            return {}
        if not length.isdigit():
            self._error(400, "Content-Length is not a number")
            return None
        if int(length) > MAX_BODY_BYTES:
            self._error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
            return None
        raw = self.rfile.read(int(length))
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            self._error(400, "the body is not JSON")
            return None

    def _relay(self, command: str, args: dict) -> None:
        """Runs a command through the control channel, as the CLI does, and answers with
        its result or its error."""
        try:
            result = control.request(self.server.config, command, args,
                                     timeout_s=ACTION_TIMEOUT_S)
        except control.NotRunningError as exc:
            self._error(503, str(exc))
        except control.ControlError as exc:
            self._error(400, str(exc))
        else:
            if command != "dead_letters" or "replay" in args:
                log.info("console: %s %s from %s", command, json.dumps(args)[:200],
                         self.client_address[0])
            self._json(200, {"ok": True, "result": result})
