"""When to restart: the restart policy as a pure object, tested without processes.

Intensity and period as in Erlang/OTP: more than ``max_restarts`` within ``period_s``
gives the actor up. Within a period, restarts back off exponentially; the first restart
after a stable run is immediate.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    give_up: bool
    delay_s: float = 0.0


class RestartPolicy:
    def __init__(self, cfg):
        self.cfg = cfg
        self.history: collections.deque[float] = collections.deque()

    def on_failure(self, now: float) -> Decision:
        """Records a restart-worthy failure at ``now`` and says what to do."""
        period = self.cfg.period_s
        while self.history and now - self.history[0] > period:
            self.history.popleft()
        recent = len(self.history)
        self.history.append(now)
        if recent >= self.cfg.max_restarts:
            return Decision(give_up=True)
        if recent == 0:
            return Decision(give_up=False, delay_s=0.0)
        delay = self.cfg.backoff_initial_s * (2 ** (recent - 1))
        return Decision(give_up=False, delay_s=min(delay, self.cfg.backoff_max_s))

    def reset(self) -> None:
        self.history.clear()
