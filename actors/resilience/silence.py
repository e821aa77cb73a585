"""Noticing a next stage that answers nothing: a fetcher whose claims dedupe leaves
unanswered, a dedupe actor whose forwarded items come back unacked. Across hosts such a
stage may be on a machine that is down or cut off; its own supervisor cannot say so, so the
side still waiting raises one admin event (and another when answers come back).

Pure: the caller passes the clock and raises the events.
"""

from __future__ import annotations


class SilenceWatch:
    """Waiting since when, and whether that has been reported."""

    def __init__(self, stage: str, silence_s: float):
        self.stage = stage
        self.silence_s = silence_s
        self.waiting_since: float | None = None
        self.reported = False

    def waiting(self, now: float) -> None:
        """Something was sent that the stage should answer."""
        if self.waiting_since is None:
            self.waiting_since = now

    def answered(self, now: float, still_waiting: bool) -> bool:
        """The stage answered; True when a silence had been reported (it is over)."""
        self.waiting_since = now if still_waiting else None
        over, self.reported = self.reported, False
        return over

    def silent_for(self, now: float) -> float | None:
        """How long the stage has been silent, once past silence_s and not yet reported."""
        if self.waiting_since is None or self.reported:
            return None
        quiet = now - self.waiting_since
        if quiet < self.silence_s:
            return None
        self.reported = True
        return quiet
