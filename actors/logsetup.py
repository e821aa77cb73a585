"""Logging for every process: one format, and secrets masked before anything is written.

Secrets are masked twice (invariant 8 in docs/architecture.md): by the formatter of every
line this process writes, tracebacks included, and at the record itself for the libraries
that log URLs (urllib3 at debug), in case someone routes their records to a handler of their
own.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from catalyst_config import Config

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
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

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(config: Config, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for secret in (config.secrets.all_values() if config else []):
        add_secret(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    # urllib3 logs full URLs at debug; webhook URLs are secrets.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
