"""Logging for every process: one format, and secrets masked before anything is written.

Where lines go: under systemd (JOURNAL_STREAM names our stderr) each line carries its
syslog priority (``<4>``), so ``journalctl -p warning`` works and journald adds the time;
elsewhere lines go to stderr and to a per-process file in log_dir, rotated by size
(LOG_FILE_MAX_BYTES, LOG_FILE_BACKUPS). ``log_format: json`` writes one JSON object a line.

Secrets are masked twice (invariant 8 in docs/architecture.md): by the formatter of every
line this process writes, tracebacks included, and at the record itself for the libraries
that log URLs (urllib3 at debug), in case someone routes their records to a handler of their
own.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from catalyst_config import Config

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s[%(process)d] %(message)s"  # journald adds the time
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5  # per process: at most 60 MB of one actor's log on disk
# syslog priorities (sd-daemon(3)): journald files each line under its own.
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
              logging.CRITICAL: 2}
URL_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.connection", "requests")
MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words

_secrets: set[str] = set()


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _RecordScrubber(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            text = record.getMessage()
            masked = redact(text)
            if masked != text:
                record.msg, record.args = masked, None
        return True


_SCRUBBER = _RecordScrubber()


def add_secret(value: str | None) -> None:
    """Masks value in every log line from now on (an API key, a webhook token or URL)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        _secrets.add(value)
        for name in URL_LOGGERS:
            logger = logging.getLogger(name)
            if _SCRUBBER not in logger.filters:
                logger.addFilter(_SCRUBBER)


class RedactingFormatter(logging.Formatter):
    """Formats a record, tracebacks included, then masks every secret value."""

    def __init__(self, fmt: str = FORMAT, *, journal: bool = False, as_json: bool = False):
        super().__init__(fmt)
        self.journal = journal
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if self.as_json:
            line = json.dumps(self._fields(record), ensure_ascii=False)
        else:
            line = super().format(record)
        line = redact(line)
        if self.journal:  # every line of a traceback under the record's own priority
            prefix = f"<{PRIORITIES.get(record.levelno, 6)}>"
            line = "\n".join(prefix + part for part in line.split("\n"))
        return line

    def _fields(self, record: logging.LogRecord) -> dict:
        fields = {"at": round(record.created, 3),
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                  "level": record.levelname, "logger": record.name, "pid": record.process,
                  "process": _process_name(), "message": record.getMessage()}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return fields


def under_journald() -> bool:
    """True when stderr is the journal stream systemd gave us (sd_journal_stream_fd)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def _process_name() -> str:
    """This process's name in file names and JSON lines: the actor's, or "supervisor"."""
    try:
        import multiprocess

        name = multiprocess.current_process().name
    except ImportError:
        name = "MainProcess"
    return "supervisor" if name == "MainProcess" else name


def setup_logging(config: Config, level: int | str | None = None) -> None:
    """Handlers for this process: level from `level`, else config.log_level."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for secret in (config.secrets.all_values() if config else []):
        add_secret(secret)
    as_json = bool(config) and config.log_format == "json"
    journal = under_journald()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(JOURNAL_FORMAT if journal else FORMAT,
                                            journal=journal, as_json=as_json))
    root.addHandler(handler)
    if config and not journal:
        file_handler = _file_handler(config, as_json)
        if file_handler is not None:
            root.addHandler(file_handler)
    root.setLevel(level if level is not None else (config.log_level if config else "INFO"))
    # urllib3 logs full URLs at debug; webhook URLs are secrets.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _file_handler(config: Config, as_json: bool) -> logging.Handler | None:
    """log_dir/<process>.log, rotated; None (stderr alone) when log_dir cannot be written."""
    directory = config.path(config.log_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = logging.handlers.RotatingFileHandler(
            directory / f"{_process_name()}.log", maxBytes=LOG_FILE_MAX_BYTES,
            backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
    except OSError as exc:
        print(f"logging: {directory} is not writable ({exc.strerror}); stderr only",
              file=sys.stderr)
        return None
    handler.setFormatter(RedactingFormatter(FORMAT, as_json=as_json))
    return handler
