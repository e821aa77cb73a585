"""Logging for every process: one format, and secrets masked before anything is written."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


class RedactingFormatter(logging.Formatter):
    """Formats a record, tracebacks included, then masks every secret value (invariant 8)."""

    def __init__(self, secrets: list[str], fmt: str = FORMAT):
        super().__init__(fmt)
        self.secrets = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def setup_logging(config, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(config.secrets.all_values() if config else []))
    root.addHandler(handler)
    root.setLevel(level)
    # urllib3 logs full URLs at debug; webhook URLs are secrets.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
