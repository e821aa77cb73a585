"""The one parser of Discord webhook URLs: check-config validates with it, the Discord sink
takes the webhook id from it."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_WEBHOOK_PATH = re.compile(r"^/api(?:/v\d+)?/webhooks/(?P<id>\d+)/(?P<token>[^/?#]+)/?$")


def parse_webhook_url(url: str) -> tuple[str, str]:
    """(webhook id, token) of an execute-webhook URL; ValueError, naming no part of it, if not."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("not a URL") from None
    match = _WEBHOOK_PATH.match(parts.path or "")
    if parts.scheme not in ("http", "https") or not parts.netloc or match is None:
        raise ValueError("not a Discord webhook URL (https://discord.com/api/webhooks/ID/TOKEN)")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("a webhook URL must use https (http only to a loopback test server)")
    return match.group("id"), match.group("token")
