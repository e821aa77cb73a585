"""A loopback HTTP server with programmable, possibly hostile, responses per path."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Callable, Union

from supervisor.demo_server import QuietHTTPServer

# Enough for 50+ simultaneous connects: the default backlog of 5 makes the kernel drop
# SYNs, and a dropped SYN is retried only after a second.
LISTEN_BACKLOG = 256
# A trickle or a delay never outlives the test: every wait also watches the stop event.
MAX_HANDLER_S = 30.0
# An idle keep-alive connection is closed after this, so no handler thread lingers.
IDLE_CONNECTION_S = 10.0


@dataclass
class Response:
    """What the server answers; body may be bytes or a callable returning bytes."""

    status: int = 200
    body: bytes | Callable[[], bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line
    trickle: bytes | None = None  # after the headers, sent forever, one piece per interval
    trickle_interval_s: float = 0.05
    trickle_headers: bool = False  # trickle inside the header block instead of the body
    content_length: bool = True  # False: no Content-Length, the body ends when we close


@dataclass
class Seen:
    """A request as the server saw it."""

    path: str
    headers: dict[str, str]
    at: float


Route = Union[Response, Callable[[Seen], Response]]


class HostileServer:
    """ThreadingHTTPServer on 127.0.0.1 in a daemon thread; routes are set per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real wires do
            timeout = IDLE_CONNECTION_S

            def log_message(self, *args) -> None:  # tests read assertions, not access logs
                pass

            def do_GET(self) -> None:
                server._handle(self)

        class Server(QuietHTTPServer):  # clients hanging up on hostile answers is the point
            request_queue_size = LISTEN_BACKLOG
            allow_reuse_address = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="hostile-server", daemon=True)

    def start(self) -> HostileServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, response: Route) -> None:
        with self.lock:
            self.routes[path] = response

    def requests(self, path: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if path is None or s.path == path]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        seen = Seen(handler.path, {k.lower(): v for k, v in handler.headers.items()}, time.monotonic())
        with self.lock:
            self.seen.append(seen)
            route = self.routes.get(handler.path.split("?", 1)[0])
        if route is None:
            route = Response(404, b"not found")
        response = route(seen) if callable(route) else route
        try:
            self._send(handler, response)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            handler.close_connection = True  # the client gave up, as it should

    def _send(self, handler: BaseHTTPRequestHandler, response: Response) -> None:
        if response.delay_s and self.stopping.wait(min(response.delay_s, MAX_HANDLER_S)):
            return
        body = response.body() if callable(response.body) else response.body
        if response.trickle_headers:
            handler.close_connection = True
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self._trickle(handler, response)
            return
        handler.send_response(response.status)
        for name, value in response.headers.items():
            handler.send_header(name, value)
        if response.trickle is not None or not response.content_length:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        elif response.status != 304:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if response.status == 304:
            return
        handler.wfile.write(body)
        handler.wfile.flush()
        if response.trickle is not None:
            self._trickle(handler, response)

    def _trickle(self, handler: BaseHTTPRequestHandler, response: Response) -> None:
        piece = response.trickle or b"a"
        deadline = time.monotonic() + MAX_HANDLER_S
        while time.monotonic() < deadline and not self.stopping.wait(response.trickle_interval_s):
            handler.wfile.write(piece)
            handler.wfile.flush()


# Documents to serve --------------------------------------------------------------

def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def rfc822(epoch: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(epoch))


def rss(items: list[dict], *, encoding: str = "UTF-8", declare: bool = True) -> str:
    """An RSS 2.0 document; item keys: title, link, guid, description, published (epoch)."""
    parts = []
    for item in items:
        fields = []
        for name in ("title", "link", "guid", "description"):
            if item.get(name) is not None:
                fields.append(f"<{name}>{_esc(item[name])}</{name}>")
        if item.get("published") is not None:
            fields.append(f"<pubDate>{rfc822(item['published'])}</pubDate>")
        parts.append("<item>" + "".join(fields) + "</item>")
    decl = f'<?xml version="1.0" encoding="{encoding}"?>\n' if declare else ""
    return (f'{decl}<rss version="2.0"><channel><title>Wire</title><link>https://wire.example/</link>'
            f'<description>news</description>{"".join(parts)}</channel></rss>')


def sec_atom(entries: list[dict]) -> str:
    """An EDGAR getcurrent Atom document; entry keys: form, company, cik, role, accession, updated."""
    parts = []
    for e in entries:
        acc = e["accession"]
        folder = acc.replace("-", "")
        cik = int(e["cik"])
        updated = time.strftime("%Y-%m-%dT%H:%M:%S-00:00", time.gmtime(e["updated"]))
        parts.append(
            f'<entry><title>{_esc(e["form"])} - {_esc(e["company"])} ({cik:010d}) ({e.get("role", "Filer")})</title>'
            f'<link rel="alternate" type="text/html" href="https://www.sec.gov/Archives/edgar/data/{cik}/{folder}/{acc}-index.htm"/>'
            f'<summary type="html"> &lt;b&gt;Filed:&lt;/b&gt; 2026-01-02 &lt;b&gt;AccNo:&lt;/b&gt; {acc} &lt;b&gt;Size:&lt;/b&gt; 1 MB</summary>'
            f'<updated>{updated}</updated>'
            f'<category scheme="https://www.sec.gov/" label="form type" term="{_esc(e["form"])}"/>'
            f'<id>urn:tag:sec.gov,2008:accession-number={acc}</id></entry>')
    return ('<?xml version="1.0" encoding="ISO-8859-1" ?>\n<feed xmlns="http://www.w3.org/2005/Atom">'
            '<title>Latest Filings</title>' + "".join(parts) + "</feed>")
