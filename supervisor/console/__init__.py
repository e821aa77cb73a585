"""The operator console: a live page, /health and /ready for probes, /metrics, and actions
behind a bearer token, served from the supervisor process off the actors' paths.

    snapshot.py  what the page shows, built on the supervisor's loop and published whole
    server.py    the HTTP server (its own threads) that reads only the published snapshot
    static/      the page: plain HTML, CSS and JavaScript, nothing from the internet
"""

from __future__ import annotations

import logging
import threading

from catalyst_config.loader import CONSOLE_TOKEN_ENV
from supervisor.console import snapshot
from supervisor.console.server import ConsoleServer, Published
from supervisor.metrics import registry_of

log = logging.getLogger("catalyst.console")


class Console:
    """Owned by the supervisor: tick() beats on every turn of the loop and publishes a
    snapshot on its schedule while one is wanted (server.Published)."""

    def __init__(self, sup):
        self.sup = sup
        self.interval_s = sup.config.console.publish_interval_s
        token = sup.config.secrets.get(CONSOLE_TOKEN_ENV)
        self.actions = token is not None
        self.published = Published()
        # Binding here, at start: a port in use is an error the operator sees at once.
        self.server = ConsoleServer(sup.config, self.published, registry_of(sup), token)
        self.thread = threading.Thread(target=self.server.serve, name="console", daemon=True)
        self.next_publish = 0.0
        self.failures = 0

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> None:
        self.thread.start()
        log.info("console at %s (actions %s)", self.url,
                 "need the bearer token" if self.actions else
                 f"disabled: {CONSOLE_TOKEN_ENV} is not set")

    def tick(self, now: float) -> None:
        self.published.beat(now)
        if now < self.next_publish or not self.published.wanted(now):
            return
        self.next_publish = now + self.interval_s
        try:
            self.published.publish(snapshot.build(self.sup, actions=self.actions))
        except Exception:  # noqa: BLE001  (a view's bug must not stop the supervisor)
            self.failures += 1
            if self.failures == 1:  # once: it would recur every interval
                log.exception("console: the snapshot could not be built")

    def deadline(self, now: float) -> float:
        """When tick() next has work: the next snapshot while one is wanted."""
        return self.next_publish if self.published.wanted(now) else float("inf")

    def close(self) -> None:
        self.published.close()
        self.server.stop()
        self.thread.join(2.0)
        self.server.server_close()
