"""Actors that misbehave on purpose, for the supervision tests and benchmark."""

from __future__ import annotations

import os
import time

from actors.base import Actor


class IdleActor(Actor):
    """Heartbeats and does nothing: a target for SIGSTOP and SIGKILL."""



class LeakyActor(Actor):
    """Grows its RSS at options["mb_per_s"], touching every page it keeps."""


    def setup(self) -> None:
        self.hoard: list[bytes] = []
        self.rate = float(self.spec.options.get("mb_per_s", 1.0))
        self.last = time.monotonic()

    def next_deadline(self, now: float) -> float:
        return now + 0.05

    def tick(self, now: float) -> None:
        grow = int((now - self.last) * self.rate * 1024 * 1024)
        if grow >= 4096:
            self.hoard.append(b"x" * grow)
            self.last = now

    def stats(self) -> dict:
        return {"hoard_mb": round(sum(map(len, self.hoard)) / 2**20, 1)}


class CrashingActor(Actor):
    """Exits with code 1 options["after_s"] after it starts."""


    def setup(self) -> None:
        self.crash_at = time.monotonic() + float(self.spec.options.get("after_s", 0.1))

    def next_deadline(self, now: float) -> float:
        return self.crash_at

    def tick(self, now: float) -> None:
        if now >= self.crash_at:
            os._exit(1)
