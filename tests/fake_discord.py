"""A loopback Discord for tests and benchmarks.

Webhooks at ``/api/webhooks/{id}/{token}`` on 127.0.0.1 that behave as Discord's do where it
matters here: a fixed window of ``limit`` posts per ``window_s`` per webhook with real
X-RateLimit-* headers, a 429 with Discord's JSON body and a Retry-After header when a client
posts too fast, a global 429 on demand, 401 for a wrong token and 404 for an unknown or
deleted webhook (Discord's error bodies), 400 "Invalid Form Body" for an embed over Discord's
limits, JSON and multipart/form-data bodies (``payload_json`` + ``files[n]``), and
``?wait=true`` answered with the message. Every accepted message is recorded, attachments
included, for assertions.
"""

from __future__ import annotations

import collections
import email.parser
import email.policy
import hashlib
import itertools
import json
import math
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

RATE_LIMITED = "You are being rate limited."


@dataclass
class Received:
    """One message Discord accepted."""

    webhook_id: str
    payload: dict[str, Any]
    files: dict[str, tuple[str, bytes]]  # form field ("files[0]") -> (filename, bytes)
    at: float
    id: str
    waited: bool  # the client asked ?wait=true

    @property
    def embed(self) -> dict[str, Any]:
        return (self.payload.get("embeds") or [{}])[0]


@dataclass
class _Window:
    count: int = 0
    reset_at: float = 0.0  # monotonic


@dataclass
class _Hook:
    token: str
    bucket: str
    window: _Window = field(default_factory=_Window)
    deleted: bool = False


def embed_problems(payload: dict[str, Any], file_names: set[str]) -> dict[str, str]:
    """What Discord would reject in a message, as {"path": "reason"} (empty: acceptable)."""
    problems: dict[str, str] = {}
    content = payload.get("content") or ""
    embeds = payload.get("embeds") or []
    if len(content) > 2000:
        problems["content"] = "Must be 2000 or fewer in length."
    if len(embeds) > 10:
        problems["embeds"] = "Must be 10 or fewer in length."
    if not content and not embeds and not file_names:
        problems["_message"] = "Cannot send an empty message"
    total = 0
    for i, e in enumerate(embeds):
        where = f"embeds.{i}"
        for key, limit in (("title", 256), ("description", 4096)):
            if len(e.get(key, "")) > limit:
                problems[f"{where}.{key}"] = f"Must be {limit} or fewer in length."
        fields = e.get("fields", [])
        if len(fields) > 25:
            problems[f"{where}.fields"] = "Must be 25 or fewer in length."
        for j, f in enumerate(fields):
            if not 1 <= len(f.get("name", "")) <= 256:
                problems[f"{where}.fields.{j}.name"] = "Must be between 1 and 256 in length."
            if not 1 <= len(f.get("value", "")) <= 1024:
                problems[f"{where}.fields.{j}.value"] = "Must be between 1 and 1024 in length."
        if len(e.get("footer", {}).get("text", "")) > 2048:
            problems[f"{where}.footer.text"] = "Must be 2048 or fewer in length."
        total += (len(e.get("title", "")) + len(e.get("description", ""))
                  + sum(len(f.get("name", "")) + len(f.get("value", "")) for f in fields)
                  + len(e.get("footer", {}).get("text", ""))
                  + len(e.get("author", {}).get("name", "")))
        image = e.get("image", {}).get("url", "")
        if image.startswith("attachment://") and image[len("attachment://"):] not in file_names:
            problems[f"{where}.image.url"] = "Not a known attachment."
    if total > 6000:
        problems["embeds"] = "Embed size exceeds maximum size of 6000"
    return problems


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], dict]:
    """(payload_json as a dict, {field: (filename, bytes)}) of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    payload: dict[str, Any] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if name == "payload_json":
            payload = json.loads(data)
        elif name:
            files[name] = (part.get_filename() or "", data)
    return payload, files


class FakeDiscord:
    """Start with ``FakeDiscord()``; ``add_webhook()`` returns an execute URL."""

    def __init__(self, *, limit: int = 5, window_s: float = 2.0):
        self.limit = limit
        self.window_s = window_s
        self.hooks: dict[str, _Hook] = {}
        self.messages: list[Received] = []
        self.requests: list[tuple[str, int]] = []  # (webhook id, status) of every request
        self.global_until = 0.0
        self.global_429s_left = 0
        self.global_retry_after = 1.0
        self.failures: collections.deque[int] = collections.deque()  # statuses to answer next
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self._ids = itertools.count(1_100_000_000_000_000_000)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()  # headers and body go in two writes: without this, Nagle
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # +40 ms

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, answer = fake._handle(self.path, self.headers, body)
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if answer is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # the request line holds the token: never print it
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    # Set-up ------------------------------------------------------------------

    def add_webhook(self, webhook_id: str | None = None, token: str | None = None) -> str:
        webhook_id = webhook_id or str(next(self._ids))
        token = token or secrets.token_urlsafe(48)
        bucket = hashlib.sha1(webhook_id.encode()).hexdigest()[:32]
        with self.lock:
            self.hooks[webhook_id] = _Hook(token=token, bucket=bucket)
        return self.url(webhook_id)

    def url(self, webhook_id: str, token: str | None = None) -> str:
        return f"{self.base_url}/api/webhooks/{webhook_id}/{token or self.hooks[webhook_id].token}"

    def delete_webhook(self, webhook_id: str) -> None:
        with self.lock:
            self.hooks[webhook_id].deleted = True

    def global_limit(self, count: int = 1, retry_after: float = 1.0) -> None:
        """The next ``count`` requests get a global 429, and the limit holds for retry_after."""
        with self.lock:
            self.global_429s_left, self.global_retry_after = count, retry_after

    def fail_next(self, *statuses: int) -> None:
        with self.lock:
            self.failures.extend(statuses)

    # Reading -----------------------------------------------------------------

    def count(self, status: int) -> int:
        with self.lock:
            return sum(1 for _, s in self.requests if s == status)

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.messages)

    def wait_for(self, n: int, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.messages)} of {n} messages after {timeout}s")
                self.changed.wait(left)
            return list(self.messages)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> FakeDiscord:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Serving -----------------------------------------------------------------

    def _limit_headers(self, hook: _Hook, now: float, remaining: int) -> dict[str, str]:
        reset_after = max(0.0, hook.window.reset_at - now)
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                "X-RateLimit-Bucket": hook.bucket}

    def _handle(self, path: str, headers, body: bytes) -> tuple[int, dict, Any]:
        parts = urlsplit(path)
        segments = parts.path.strip("/").split("/")
        if len(segments) != 4 or segments[:2] != ["api", "webhooks"]:
            with self.lock:
                return self._record("", 404, {}, {"message": "404: Not Found", "code": 0})
        webhook_id, token = segments[2], segments[3]
        waited = parse_qs(parts.query).get("wait") == ["true"]
        now = time.monotonic()
        with self.changed:
            hook = self.hooks.get(webhook_id)
            if hook is None or hook.deleted:
                return self._record(webhook_id, 404, {},
                                    {"message": "Unknown Webhook", "code": 10015})
            if token != hook.token:
                return self._record(webhook_id, 401, {},
                                    {"message": "Invalid Webhook Token", "code": 50027})
            if self.global_429s_left > 0 or now < self.global_until:
                if self.global_429s_left > 0:
                    self.global_429s_left -= 1
                    self.global_until = now + self.global_retry_after
                retry = max(0.0, self.global_until - now)
                return self._record(webhook_id, 429, {
                    "Retry-After": str(math.ceil(retry)), "X-RateLimit-Global": "true",
                    "X-RateLimit-Scope": "global"},
                    {"message": RATE_LIMITED, "retry_after": round(retry, 3), "global": True})
            if self.failures:
                status = self.failures.popleft()
                return self._record(webhook_id, status, {},
                                    {"message": f"{status}: fake failure", "code": 0})
            window = hook.window
            if now >= window.reset_at:
                window.count, window.reset_at = 0, now + self.window_s
            if window.count >= self.limit:
                retry = window.reset_at - now
                limit_headers = self._limit_headers(hook, now, 0)
                return self._record(webhook_id, 429, {
                    **limit_headers, "Retry-After": str(math.ceil(retry)),
                    "X-RateLimit-Scope": "user"},
                    {"message": RATE_LIMITED, "retry_after": round(retry, 3), "global": False})
            try:
                payload, files = self._parse(headers.get("Content-Type", ""), body)
            except (ValueError, UnicodeDecodeError):
                return self._record(webhook_id, 400, {},
                                    {"message": "Cannot send an empty message", "code": 50006})
            window.count += 1  # Discord counts a rejected body against the limit too
            limit_headers = self._limit_headers(hook, now, self.limit - window.count)
            names = {filename for filename, _ in files.values()}
            problems = embed_problems(payload, names)
            if problems:
                return self._record(webhook_id, 400, limit_headers,
                                    {"message": "Invalid Form Body", "code": 50035,
                                     "errors": problems})
            message_id = str(next(self._ids))
            self.messages.append(Received(webhook_id, payload, files, time.time(), message_id,
                                          waited))
            self.changed.notify_all()
            self.requests.append((webhook_id, 200 if waited else 204))
            if not waited:
                return 204, limit_headers, None
            attachments = [{"id": str(i), "filename": f, "size": len(data)}
                           for i, (f, data) in enumerate(files.values())]
            return 200, limit_headers, {
                "id": message_id, "type": 0, "channel_id": "1", "webhook_id": webhook_id,
                "content": payload.get("content", ""), "embeds": payload.get("embeds", []),
                "attachments": attachments}

    def _record(self, webhook_id: str, status: int, headers: dict, answer: Any):
        self.requests.append((webhook_id, status))  # the caller holds the lock
        return status, headers, answer

    @staticmethod
    def _parse(content_type: str, body: bytes) -> tuple[dict[str, Any], dict]:
        if content_type.startswith("multipart/form-data"):
            return parse_multipart(content_type, body)
        if content_type.startswith("application/json"):
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
            return payload, {}
        raise ValueError(f"unsupported content type {content_type!r}")
