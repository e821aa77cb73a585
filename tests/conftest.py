"""Shared test parts: real supervisors started through the CLI, a scripted loopback
wire, and waits on conditions with deadlines (never fixed sleeps)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable

import psutil
import pytest
import yaml

from actors.feeds.fetch import FeedFetcher
from catalyst_config import config_from_dict
from supervisor.demo_server import QuietHTTPServer
from tests.hostile_server import HostileServer
from tests.waiting import wait_for  # noqa: F401  (tests import it from here)

pytest_plugins = ("tests.pg_server",)  # the pg_server and pg_dsn fixtures (a real PostgreSQL)

ROOT = Path(__file__).resolve().parent.parent


# A scripted wire -----------------------------------------------------------------


def rss(items: list[dict]) -> bytes:
    entries = "".join(
        f"<item><title>{i['title']}</title><link>{i['link']}</link><guid>{i['link']}</guid>"
        f"<description>{i.get('summary', '')}</description>"
        f"<pubDate>{format_datetime(datetime.fromtimestamp(i.get('ts', time.time()), timezone.utc))}"
        f"</pubDate></item>" for i in items)
    return (f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
            f"<title>test wire</title><link>http://127.0.0.1/</link>"
            f"<description>test</description>{entries}</channel></rss>").encode()


class Wire:
    """A loopback HTTP server whose paths serve whatever the test sets, thread-safely."""

    def __init__(self):
        self.routes: dict[str, Callable[[], tuple[int, dict, bytes]]] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        wire = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                with wire.lock:
                    wire.hits[path] = wire.hits.get(path, 0) + 1
                    route = wire.routes.get(path)
                status, headers, body = route() if route else (404, {}, b"not found")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve_feed(self, path: str, items: Callable[[], list[dict]]) -> str:
        self.routes[path] = lambda: (200, {"Content-Type": "application/rss+xml"}, rss(items()))
        return self.base_url + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def wire():
    w = Wire()
    yield w
    w.close()


# Running the real thing -------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_config(workdir: Path, feeds: list[dict], **overrides) -> dict:
    cfg = {
        "run_dir": "run", "data_dir": "data", "log_dir": "log",
        "poll_interval_s": 0.3,
        "sec_user_agent": "Catalyst Tests tests@example.com",
        "feeds": feeds,
        "fetch": {"connect_timeout_s": 2, "read_timeout_s": 3, "first_poll": "alert"},
        "dedupe": {"lease_s": 3.0, "max_attempts": 50},
        "alerts": {"min_score": 0.0,
                   "sinks": [{"type": "jsonl", "path": "alerts.jsonl"}],
                   "admin": {"type": "jsonl", "path": "admin.jsonl"},
                   "charts": {"enabled": False}},
        "supervisor": {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 3.0,
                       "memory_check_interval_s": 0.2, "stop_timeout_s": 3.0,
                       "drain_timeout_s": 20.0, "metrics_port": 0,
                       "restart": {"backoff_initial_s": 0.05, "backoff_max_s": 0.5,
                                   "max_restarts": 20, "period_s": 60}},
        "console": {"port": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; only whole lines: a long one may be caught half written."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()
            if line.strip()]


class Running:
    """A `catalyst-supervisor start` process and what it writes."""

    def __init__(self, workdir: Path, cfg: dict, args: list[str] = (), n: int = 0,
                 extra_kinds: list[dict] | None = None, env: dict | None = None):
        self.workdir = workdir
        self.config_path = workdir / f"config-{n}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log_path = workdir / f"supervisor-{n}.log"
        self.log = open(self.log_path, "wb")
        if extra_kinds is None:
            command = ["-m", "supervisor.cli", "start", "-c", str(self.config_path), *args]
        else:  # the real supervisor, with misbehaving test actors beside the real ones
            command = ["-m", "tests.supervise", str(self.config_path), json.dumps(extra_kinds)]
        self.proc = subprocess.Popen(
            [sys.executable, *command], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervisor.cli", *args, "-c",
                               str(self.config_path)], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def status(self) -> dict | None:
        from catalyst_config import load_config
        from supervisor.control import ControlError, request

        try:
            return request(load_config(self.config_path, with_secrets=False), "status",
                           timeout_s=2.0)
        except ControlError:
            return None

    def actor(self, name: str) -> dict | None:
        status = self.status()
        if status:
            for a in status["actors"]:
                if a["name"] == name:
                    return a
        return None

    def all_running(self) -> bool:
        status = self.status()
        return bool(status) and all(a["state"] == "running" for a in status["actors"])

    def alerts(self) -> list[dict]:
        return read_jsonl(self.workdir / "alerts.jsonl")

    def admin_events(self) -> list[dict]:
        path = self.workdir / "admin.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running after {timeout}s:\n"
                                 + self.log_text()[-4000:]) from None

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def close(self) -> None:
        if self.proc.poll() is None:
            kids = self.descendants()
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            for kid in kids:
                try:
                    kid.kill()
                except psutil.Error:
                    pass
        self.log.close()


@pytest.fixture
def workdir():
    # Short paths: ipc:// socket paths are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="cs-") as d:
        yield Path(d)


@pytest.fixture
def run_supervisor(workdir):
    started: list[Running] = []

    def start(cfg: dict, *args: str, extra_kinds: list[dict] | None = None,
              env: dict | None = None) -> Running:
        r = Running(workdir, cfg, list(args), n=len(started), extra_kinds=extra_kinds, env=env)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


# A FeedFetcher against a HostileServer (feeds and parsing tests) --------------------

FETCHER_UA = "Catalyst Test Desk ops@example.com"  # loopback EDGAR: no real contact needed


@pytest.fixture
def server():
    srv = HostileServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def make_fetcher(server, tmp_path):
    made = []

    def make(feeds: dict[str, str] | list[tuple[str, str, str]], instances=1, **fetch):
        """feeds: {name: path} (press releases) or [(name, path, kind)]."""
        if isinstance(feeds, dict):
            feeds = [(name, path, "pr") for name, path in feeds.items()]
        settings = dict(connect_timeout_s=0.5, read_timeout_s=0.5, max_workers=16,
                        breaker_failures=3, breaker_backoff_initial_s=0.2, breaker_backoff_max_s=1.0,
                        company_tickers_url=server.url("/company_tickers.json"))
        settings.update(fetch)
        cfg = config_from_dict({
            "data_dir": str(tmp_path / "data"), "sec_user_agent": FETCHER_UA, "fetch": settings,
            "feeds": [{"name": n, "url": server.url(p), "kind": k} for n, p, k in feeds]})
        fetcher = FeedFetcher(cfg, instance=0, instances=instances)
        made.append(fetcher)
        return fetcher, cfg.feeds

    yield make
    for fetcher in made:
        fetcher.close()


# The fake Gemini and classifiers driven like the llm actor drives them ---------------


@pytest.fixture
def fake():
    from tests.fake_gemini import FakeGemini

    f = FakeGemini()
    yield f
    f.close()


@pytest.fixture
def desks():
    """open_desk(config) -> a tests.test_gemini.Desk, closed after the test."""
    from tests.test_gemini import Desk

    opened = []

    def open_desk(config):
        desk = Desk(config)
        opened.append(desk)
        return desk

    yield open_desk
    for desk in opened:
        desk.close()
