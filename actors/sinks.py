"""Where alerts and admin events go: console, JSONL file, Discord.

A sink either delivers or raises SinkError. A sink that can tell whether a delivery
interrupted by a crash went through (``written``) lets the alert side stay exactly-once.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from actors.errors import SinkError

JSONL_SCAN_MAX_BYTES = 16 * 1024 * 1024  # how far back a crash-recovery check reads


class Sink:
    """Base sink; ``name`` is what the delivery journal records."""

    name = "sink"

    def deliver(self, record: dict[str, Any], chart: str | None = None) -> None:
        raise NotImplementedError

    def mark(self) -> int | None:
        """A position to remember before delivering, for ``written``."""
        return None

    def written(self, key: str, mark: int | None) -> bool | None:
        """Whether key was delivered after mark; None when the sink cannot tell."""
        return None

    def close(self) -> None:
        pass


class ConsoleSink(Sink):
    name = "console"

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def deliver(self, record: dict[str, Any], chart: str | None = None) -> None:
        if "event" in record:  # an admin event
            line = f"[admin] {record['event']} {record.get('actor', '')}: {record.get('message', '')}"
        else:
            tickers = ",".join(record.get("tickers") or []) or "-"
            line = (f"ALERT {record['category']:<20} score={record['score']:.2f} "
                    f"sent={record['sentiment']:+.2f} [{tickers}] {record['title'][:110]}"
                    + (f"  chart={chart}" if chart else ""))
        try:
            print(line, file=self.stream, flush=True)
        except (OSError, ValueError) as exc:
            raise SinkError(f"console: {exc}") from None


class JsonlSink(Sink):
    """One JSON object per line; appended with one write so lines never interleave."""

    def __init__(self, path: str | os.PathLike, name: str = "jsonl"):
        self.name = name
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lock = threading.Lock()

    def deliver(self, record: dict[str, Any], chart: str | None = None) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        try:
            with self.lock:
                os.write(self.fd, line)  # in the kernel now: survives SIGKILL of this process
        except OSError as exc:
            raise SinkError(f"{self.path}: {exc.strerror}") from None

    def mark(self) -> int | None:
        return os.fstat(self.fd).st_size

    def written(self, key: str, mark: int | None) -> bool | None:
        if mark is None:
            return None
        needle = json.dumps(key, ensure_ascii=False).encode()
        with open(self.path, "rb") as f:
            f.seek(mark)
            tail = f.read(JSONL_SCAN_MAX_BYTES)
        for line in tail.splitlines():
            if line.startswith(b'{"key":' + needle + b","):
                return True
        return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def build_sink(sink_cfg, config, *, role: str = "alerts") -> Sink:
    """A sink from its config entry; ``role`` names it in the delivery journal."""
    if sink_cfg.type == "console":
        return ConsoleSink()
    if sink_cfg.type == "jsonl":
        return JsonlSink(config.path(sink_cfg.path), name=f"jsonl:{sink_cfg.path}")
    if sink_cfg.type == "discord":
        from actors.discord import DiscordSink

        url = config.secrets.get(sink_cfg.webhook_url_env)
        if not url:
            raise SinkError(f"{role}: discord sink needs ${sink_cfg.webhook_url_env}",
                            permanent=True)
        return DiscordSink(url, name=f"discord:{sink_cfg.webhook_url_env}")
    raise SinkError(f"unknown sink type {sink_cfg.type!r}", permanent=True)
