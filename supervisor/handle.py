"""One supervised actor: its process, state, heartbeat, memory and restart record."""

from __future__ import annotations

import collections
import enum
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from actors import Kind
from supervisor.policy import RestartPolicy
from supervisor.watch import MemoryHistory, MemoryReading

REASONS = ("exit", "hang", "memory", "leak", "manual", "reload")


class ActorState(enum.StrEnum):
    """Where an actor is in its life (status shows the value)."""

    STARTING = "starting"  # spawned, no heartbeat yet
    RUNNING = "running"  # heartbeating
    STOPPING = "stopping"  # asked to stop (or killed) and not yet reaped
    BACKOFF = "backoff"  # crashed; waits out its restart delay
    FAILED = "failed"  # gave up: too many restarts in restart.period_s
    STOPPED = "stopped"  # not running, and not to be restarted
MARKERS_KEPT = 200


def describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class ActorHandle:
    name: str
    kind: Kind
    index: int
    max_rss_mb: float
    policy: RestartPolicy
    samples_kept: int
    process: Any = None
    pid: int | None = None
    state: ActorState = ActorState.STOPPED
    started_at: float = 0.0  # monotonic
    last_heartbeat: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    restarts_by_reason: collections.Counter = field(default_factory=collections.Counter)
    last_restart_reason: str | None = None
    last_exit: str | None = None
    pending_reason: str | None = None  # why we are stopping it, when we are
    stop_sent_at: float | None = None
    term_sent_at: float | None = None
    restart_at: float | None = None
    memory: MemoryHistory = None  # type: ignore[assignment]
    # (wall time, rss_mb, anon_mb), for the report
    timeline: collections.deque = None  # type: ignore[assignment]
    reading: MemoryReading | None = None  # the latest sample of this incarnation
    expected_mb: float = 0.0  # held by design, as last reported (supervisor.watch)
    trend_mb_per_min: float | None = None  # the latest leak trend, once there is one
    markers: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=MARKERS_KEPT))  # (wall time, reason)
    next_leak_check: float = 0.0

    def __post_init__(self):
        self.memory = MemoryHistory(self.samples_kept)
        self.timeline = collections.deque(maxlen=self.samples_kept)

    @property
    def alive(self) -> bool:
        return self.process is not None

    def uptime_s(self, now: float) -> float:
        return round(now - self.started_at, 3) if self.alive and self.started_at else 0.0

    def heartbeat_age_s(self, now: float) -> float | None:
        return round(now - self.last_heartbeat, 3) if self.alive and self.last_heartbeat else None

    def rss_mb(self) -> float | None:
        """Total resident memory, file-backed pages included (shown, not judged)."""
        return round(self.reading.rss_mb, 2) if self.alive and self.reading else None

    def anon_mb(self) -> float | None:
        """Anonymous resident memory: what max_rss_mb limits and the leak trend watches."""
        return round(self.reading.anon_mb, 2) if self.alive and self.reading else None

    def forget_memory(self) -> None:
        """A new incarnation: its memory history starts afresh."""
        self.memory.clear()
        self.reading, self.expected_mb, self.trend_mb_per_min = None, 0.0, None

    def status(self, now: float) -> dict[str, Any]:
        trend = self.trend_mb_per_min
        return {
            "name": self.name, "kind": self.kind.name, "pid": self.pid, "state": str(self.state),
            "rss_mb": self.rss_mb(), "anon_mb": self.anon_mb(), "max_rss_mb": self.max_rss_mb,
            "expected_mb": round(self.expected_mb, 2) if self.alive else None,
            "trend_mb_per_min": round(trend, 2) if self.alive and trend is not None else None,
            "restarts": self.restarts, "last_restart_reason": self.last_restart_reason,
            "last_exit": self.last_exit, "uptime_s": self.uptime_s(now),
            "heartbeat_age_s": self.heartbeat_age_s(now), "stats": self.stats,
        }

    def record_restart(self, reason: str) -> None:
        self.restarts += 1
        self.restarts_by_reason[reason] += 1
        self.last_restart_reason = reason
        self.markers.append((time.time(), reason))
