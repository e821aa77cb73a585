"""sd_notify without libsystemd: READY, STATUS, STOPPING and WATCHDOG datagrams."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("catalyst.systemd")


class Notifier:
    """Sends to $NOTIFY_SOCKET when systemd set it; otherwise does nothing."""

    def __init__(self, address: str | None, watchdog_usec: int | None):
        self.address = address
        self.sock = None
        if address:
            if address.startswith("@"):  # abstract namespace
                address = "\0" + address[1:]
            self.address = address
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.watchdog_s = watchdog_usec / 1e6 / 2 if watchdog_usec else None
        self.next_watchdog = 0.0

    @classmethod
    def from_environment(cls) -> Notifier:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            usec = None  # the watchdog is for another process
        return cls(os.environ.get("NOTIFY_SOCKET"), int(usec) if usec else None)

    def notify(self, *lines: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)

    def watchdog_tick(self, now: float) -> None:
        """Called from the loop: a hung supervisor stops pinging and systemd restarts it."""
        if self.watchdog_s and now >= self.next_watchdog:
            self.notify("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog_s
