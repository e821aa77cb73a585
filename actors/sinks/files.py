"""Local sinks: the console and JSONL files (alerts, admin events). A JSONL file is
private: created 0600, in directories created 0700."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from actors.errors import SinkError
from actors.sinks.base import Sink
from actors.storage import private_dir, private_file

log = logging.getLogger("catalyst.sinks")
JSONL_SCAN_MAX_BYTES = 16 * 1024 * 1024  # how far back a crash-recovery check reads


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
    """One JSON object per line; appended with one write so lines never interleave.

    A file that cannot be opened (its directory missing or not a directory, a full or
    read-only disk) fails each delivery, not the actor: the alert is held and comes back
    after its lease, and the file is opened again on the next try."""

    def __init__(self, path: str | os.PathLike, name: str = "jsonl"):
        self.name = name
        self.path = Path(path)
        self.fd = -1
        self.lock = threading.Lock()
        try:
            self._open()
        except SinkError as exc:
            log.warning("%s", exc)

    def _open(self) -> int:
        if self.fd < 0:
            try:
                private_dir(self.path.parent)
                private_file(self.path)  # also takes group and other access from an older file
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise SinkError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        return self.fd

    def deliver(self, record: dict[str, Any], chart: str | None = None) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self.lock:
            fd = self._open()
            try:
                os.write(fd, line)  # in the kernel now: survives SIGKILL of this process
            except OSError as exc:
                raise SinkError(f"{self.path}: {exc.strerror}") from None

    def mark(self) -> int | None:
        with self.lock:
            try:
                return os.fstat(self._open()).st_size
            except (SinkError, OSError):
                return None  # the delivery will say why

    def written(self, key: str, mark: int | None) -> bool | None:
        if mark is None:
            return None
        needle = json.dumps(key, ensure_ascii=False).encode()
        try:
            with open(self.path, "rb") as f:
                f.seek(mark)
                tail = f.read(JSONL_SCAN_MAX_BYTES)
        except OSError:
            return None  # cannot tell: delivered again, which the journal allows for
        for line in tail.splitlines():
            if line.startswith(b'{"key":' + needle + b","):
                return True
        return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
