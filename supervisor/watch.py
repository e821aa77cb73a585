"""Actor memory: what is sampled, what the memory limit and the leak trend judge.

What is judged is the memory a process owns: its anonymous resident memory (RssAnon in
/proc/PID/status: heap, stacks, anonymous mappings). Total RSS also counts file-backed
pages (a memory-mapped SQLite file, shared libraries, a mapped file being read), which the
kernel maps in and drops at its own pace and which cannot leak; it is sampled and shown
beside, never judged. Reading /proc/PID/status cost 45 us here, so sampling every actor at
2 Hz costs nothing worth counting; where /proc is absent, psutil's RSS stands in for both.

Memory an actor holds by design and that grows with its live data (the dedupe actor's key
index grows with live keys) is not a leak: an actor reports it in its stats as
``expected_memory_bytes`` and the trend is judged net of it (see ``expected_memory_mb``).

The leak test is a robust slope: samples in the window are grouped into time buckets,
each bucket reduced to its median, and the slope taken as the median of the pairwise
slopes between bucket medians (Theil-Sen). One allocation spike moves one bucket's
median at most, and a warm-up that levels off moves few pairs, so neither triggers it;
a steady leak moves them all.
"""

from __future__ import annotations

import collections
import os
import statistics
from dataclasses import dataclass
from typing import Any

import psutil

LEAK_BUCKETS = 8
LEAK_MIN_SAMPLES = 16
LEAK_MIN_SPAN = 0.5  # of the window: a trend needs this much history before it counts
MB = 1024 * 1024

# The stat in which an actor reports the bytes it holds by design (an index of live data).
EXPECTED_MEMORY_STAT = "expected_memory_bytes"
# Until an actor reports EXPECTED_MEMORY_STAT, a `live_keys` stat (the dedupe actor's key
# index) is counted at this many bytes a key. Measured: 1,000,000 keys claimed and finished
# through a real SqliteSeenStore in one process (SQLite cache 2 MB, no mmap), RssAnon read
# every 20,000 keys: a least-squares slope of 102 B a key (107 B over the first 400,000).
# A key costs its 16-byte hash as a bytes object (64 B with pymalloc's rounding) plus its
# share of the set's table (16 B a slot, 27 to 53 B a key as the table fills and doubles);
# between doublings the index grows by ~64 B a key, and each doubling adds the table at once.
# tests/test_memory_trend.py measures it again.
BYTES_PER_LIVE_KEY = 100
LIVE_KEYS_STAT = "live_keys"


@dataclass(frozen=True)
class Sample:
    t: float  # monotonic seconds
    judged_mb: float  # anonymous resident memory less what the actor holds by design


@dataclass(frozen=True)
class MemoryReading:
    """One look at a process: total resident memory and the anonymous part of it."""

    rss_mb: float  # every resident page, file-backed ones included
    anon_mb: float  # anonymous resident pages: what the process owns (and could leak)


def expected_memory_mb(stats: dict[str, Any]) -> float:
    """Memory an actor says it holds by design (its heartbeat stats), in MB; 0 if none."""
    value = stats.get(EXPECTED_MEMORY_STAT)
    if _number(value):
        return max(0.0, float(value)) / MB
    keys = stats.get(LIVE_KEYS_STAT)  # see BYTES_PER_LIVE_KEY
    if _number(keys):
        return max(0.0, float(keys)) * BYTES_PER_LIVE_KEY / MB
    return 0.0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        abs(value) < 2**63  # a finite, sane count; anything else is ignored


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
    points = [(statistics.median(s.t for s in b), statistics.median(s.judged_mb for s in b))
              for b in buckets if b]
    slopes = [(y2 - y1) / (x2 - x1)
              for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1:] if x2 > x1]
    return statistics.median(slopes) * 60.0 if slopes else 0.0


class MemoryHistory:
    """Bounded memory samples of one actor incarnation, plus the trend test.

    A sample is judged net of the memory the actor holds by design, at the highest that
    has been this incarnation: an index that shrinks (a purge) hands its memory to the
    allocator, not back to the system, and growing again up to that mark reuses it."""

    def __init__(self, maxlen: int):
        self.samples: collections.deque[Sample] = collections.deque(maxlen=maxlen)
        self.expected_peak_mb = 0.0

    def add(self, t: float, anon_mb: float, expected_mb: float = 0.0) -> float:
        """Records a sample; returns the memory judged (anon_mb net of the expected)."""
        self.expected_peak_mb = max(self.expected_peak_mb, expected_mb)
        judged = anon_mb - self.expected_peak_mb
        self.samples.append(Sample(t, judged))
        return judged

    def clear(self) -> None:
        self.samples.clear()
        self.expected_peak_mb = 0.0

    def leak_rate(self, window_s: float) -> float | None:
        """MB/min over the window, or None while there is too little history to judge."""
        if not self.samples:
            return None
        end = self.samples[-1].t
        recent = [s for s in self.samples if end - s.t <= window_s]
        if len(recent) < LEAK_MIN_SAMPLES or recent[-1].t - recent[0].t < window_s * LEAK_MIN_SPAN:
            return None
        return robust_slope_mb_per_min(recent)


def _read_proc_status(pid: int) -> MemoryReading | None:
    """VmRSS and RssAnon (kB) from /proc/PID/status; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rss = anon = None
    for line in data.split(b"\n"):
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith(b"RssAnon:"):
            anon = int(line.split()[1])
            break  # RssAnon follows VmRSS
    if rss is None:  # a zombie has no memory lines
        return None
    if anon is None:  # a kernel before 4.5: no RssAnon; count it all as owned
        anon = rss
    return MemoryReading(rss_mb=rss / 1024, anon_mb=anon / 1024)


class ProcessSampler:
    """Reads actors' memory: /proc/PID/status where there is a /proc, else psutil (with one
    cached psutil.Process per pid). The supervisor samples only children it has not yet
    seen exit, and forgets a pid when it does."""

    def __init__(self, proc_fs: bool | None = None):
        if proc_fs is None:
            try:
                proc_fs = _read_proc_status(os.getpid()) is not None
            except OSError:
                proc_fs = False
        self.proc_fs = proc_fs
        self._procs: dict[int, psutil.Process] = {}

    def read(self, pid: int) -> MemoryReading | None:
        if self.proc_fs:
            try:
                return _read_proc_status(pid)
            except (OSError, ValueError, IndexError):
                return None
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            rss = proc.memory_info().rss / MB
        except psutil.Error:
            self._procs.pop(pid, None)
            return None
        return MemoryReading(rss_mb=rss, anon_mb=rss)

    def rss_mb(self, pid: int) -> float | None:
        reading = self.read(pid)
        return reading.rss_mb if reading else None

    def forget(self, pid: int) -> None:
        self._procs.pop(pid, None)
