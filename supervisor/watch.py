"""psutil sampling of actor memory, the memory limit, and leak-trend detection.

The leak test is a robust slope: samples in the window are grouped into time buckets,
each bucket reduced to its median, and the slope taken as the median of the pairwise
slopes between bucket medians (Theil-Sen). One allocation spike moves one bucket's
median at most, and a warm-up that levels off moves few pairs, so neither triggers it;
a steady leak moves them all.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass

import psutil

LEAK_BUCKETS = 8
LEAK_MIN_SAMPLES = 16
LEAK_MIN_SPAN = 0.5  # of the window: a trend needs this much history before it counts


@dataclass(frozen=True)
class Sample:
    t: float  # monotonic seconds
    rss_mb: float


def robust_slope_mb_per_min(samples: list[Sample]) -> float:
    """Theil-Sen slope over bucket medians, in MB per minute."""
    if len(samples) < 2:
        return 0.0
    t0, t1 = samples[0].t, samples[-1].t
    span = t1 - t0
    if span <= 0:
        return 0.0
    buckets: list[list[Sample]] = [[] for _ in range(LEAK_BUCKETS)]
    for s in samples:
        idx = min(LEAK_BUCKETS - 1, int((s.t - t0) / span * LEAK_BUCKETS))
        buckets[idx].append(s)
    points = [(statistics.median(s.t for s in b), statistics.median(s.rss_mb for s in b))
              for b in buckets if b]
    slopes = [(y2 - y1) / (x2 - x1)
              for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1:] if x2 > x1]
    return statistics.median(slopes) * 60.0 if slopes else 0.0


class MemoryHistory:
    """Bounded RSS samples of one actor incarnation, plus the trend test."""

    def __init__(self, maxlen: int):
        self.samples: collections.deque[Sample] = collections.deque(maxlen=maxlen)

    def add(self, t: float, rss_mb: float) -> None:
        self.samples.append(Sample(t, rss_mb))

    def clear(self) -> None:
        self.samples.clear()

    def leak_rate(self, window_s: float) -> float | None:
        """MB/min over the window, or None while there is too little history to judge."""
        if not self.samples:
            return None
        end = self.samples[-1].t
        recent = [s for s in self.samples if end - s.t <= window_s]
        if len(recent) < LEAK_MIN_SAMPLES or recent[-1].t - recent[0].t < window_s * LEAK_MIN_SPAN:
            return None
        return robust_slope_mb_per_min(recent)


class ProcessSampler:
    """Caches one psutil.Process per pid (psutil's own pid-reuse check included)."""

    def __init__(self):
        self._procs: dict[int, psutil.Process] = {}

    def rss_mb(self, pid: int) -> float | None:
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            return proc.memory_info().rss / (1024 * 1024)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None

    def cpu_times(self, pid: int):
        proc = self._procs.get(pid) or psutil.Process(pid)
        return proc.cpu_times()

    def forget(self, pid: int) -> None:
        self._procs.pop(pid, None)
