"""How an owner lives with a store that is away (disk full, I/O errors, read-only, locked
by another program): one admin event and one log line when the outage starts, tries again
with exponential backoff, and one event once it has been back for a while.

The owner never exits over a storage fault: a restart cannot free a disk, and a restart
storm gives the actor up. It keeps heartbeating, holds or refuses its input meanwhile,
and resumes by itself when a try works. The event is also logged because the admin JSONL
may sit on the very disk that is full.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from actors.errors import StoreUnavailableError

log = logging.getLogger("catalyst.storage")

RETRY_INITIAL_S = 0.5  # first try again after a fault
RETRY_MAX_S = 10.0  # however long the outage, a try at least this often
# Back this long without a fault before the outage is announced over; a fault sooner
# continues the same outage (one event each way, not one per flap).
RECOVERY_CONFIRM_S = 5.0

AdminFn = Callable[..., None]  # Actor.admin(event, message, reason=, level=)


class StoreOutage:
    """One store's availability as its owner sees it: up, down (tries are due at
    next_try) or recovering (working again, not yet announced)."""

    def __init__(self, what: str, *, effect: str = "", notify: AdminFn | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.what = what  # "seen.db"
        self.effect = effect  # what the owner does meanwhile, for the event
        self.notify = notify or (lambda *args, **kwargs: None)
        self.clock = clock
        self.error: StoreUnavailableError | None = None
        self.recovering_since: float | None = None
        self.started = 0.0
        self.delay = 0.0
        self.next_try = 0.0
        self.faults = 0  # failed tries since the outage started
        self.outages = 0

    @property
    def down(self) -> bool:
        return self.error is not None

    @property
    def state(self) -> str:
        """For stats: "ok", or the reason of the outage (disk_full, locked...)."""
        return self.error.reason if self.error is not None else "ok"

    def usable(self, now: float | None = None) -> bool:
        """Up, recovering, or down with a try due."""
        if self.error is None:
            return True
        return (self.clock() if now is None else now) >= self.next_try

    def deadline(self) -> float:
        """When the owner should next call usable()/settle(); inf when up."""
        if self.error is not None:
            return self.next_try
        if self.recovering_since is not None:
            return self.recovering_since + RECOVERY_CONFIRM_S
        return float("inf")

    def failed(self, exc: StoreUnavailableError, now: float | None = None) -> None:
        """A try failed: start (or continue) the outage and schedule the next try."""
        now = self.clock() if now is None else now
        if self.error is None and self.recovering_since is None:  # a new outage
            self.outages += 1
            self.started = now
            self.faults = 0
            self.delay = RETRY_INITIAL_S
            message = f"{self.what} unavailable: {exc}"
            if self.effect:
                message += f"; {self.effect}"
            message += f"; trying again every {RETRY_MAX_S:.0f} s at most"
            log.error("%s", message)
            self.notify(exc.event, message, reason=exc.reason, level="error")
        else:  # down already, or it came back and failed again before it was announced
            self.delay = min(max(self.delay, RETRY_INITIAL_S) * 2, RETRY_MAX_S)
            log.warning("%s still unavailable (%s); next try in %.1f s", self.what, exc,
                        self.delay)
        self.error = exc
        self.recovering_since = None
        self.faults += 1
        self.next_try = now + self.delay

    def ok(self, now: float | None = None) -> None:
        """A try worked: work resumes now; the end is announced once it holds."""
        if self.error is None and self.recovering_since is None:
            return
        now = self.clock() if now is None else now
        if self.error is not None:
            self.error = None
            self.recovering_since = now
            log.warning("%s works again; resuming", self.what)
        self.settle(now)

    def settle(self, now: float | None = None) -> None:
        """Announces the end of an outage that has held for RECOVERY_CONFIRM_S."""
        if self.recovering_since is None:
            return
        now = self.clock() if now is None else now
        if now - self.recovering_since < RECOVERY_CONFIRM_S:
            return
        self.recovering_since = None
        message = (f"{self.what} available again after {now - self.started:.0f} s "
                   f"({self.faults} failed tries)")
        log.warning("%s", message)
        self.notify("store_recovered", message, reason=self.what, level="info")
