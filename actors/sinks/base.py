"""What every sink is: deliver or raise SinkError; and the worker thread a blocking sink runs on.

A sink either delivers or raises SinkError. A sink that can tell whether a delivery
interrupted by a crash went through (``written``) lets the alert side stay exactly-once.
A ``blocking`` sink (Discord: it waits for rate limits and outages) runs on a SinkWorker
thread so its owner's loop never waits on it.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

from actors.errors import SinkError

if TYPE_CHECKING:
    from catalyst_config import SinkConfig

log = logging.getLogger("catalyst.sinks")

class Sink:
    """Base sink; ``name`` is what the delivery journal records."""

    name = "sink"
    blocking = False  # True: deliver() can wait long; run it on a SinkWorker

    def deliver(self, record: dict[str, Any], chart: str | None = None) -> None:
        raise NotImplementedError

    def mark(self) -> int | None:
        """A position to remember before delivering, for ``written``."""
        return None

    def written(self, key: str, mark: int | None) -> bool | None:
        """Whether key was delivered after mark; None when the sink cannot tell."""
        return None

    def stats(self) -> dict[str, Any]:
        """Numbers for status and metrics; never a secret."""
        return {}

    def pop_events(self) -> list[dict[str, str]]:
        """Admin events the sink raised (``event``, ``reason``, ``message``, ``level``)."""
        return []

    def close(self) -> None:
        pass


class UnavailableSink(Sink):
    """Stands in for a sink that could not be built (its secret is not set): fails at once."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason

    def deliver(self, record: dict[str, Any], chart: str | None = None) -> None:
        raise SinkError(f"{self.name}: {self.reason}", permanent=True)


def sink_name(sink_cfg: SinkConfig) -> str:
    """The name a sink is known by in the journal, stats and admin events: never a secret."""
    if sink_cfg.type == "jsonl":
        return f"jsonl:{sink_cfg.path}"
    if sink_cfg.type == "discord":
        return f"discord:{sink_cfg.webhook_url_env}"
    return sink_cfg.type


class SinkWorker:
    """Runs one blocking sink's deliver() on its own thread, jobs in order.

    ``submit`` never blocks: it returns False when ``max_jobs`` are already waiting. Each
    outcome, ``(job_id, None)`` or ``(job_id, SinkError)``, goes to ``on_result`` on the
    worker thread, or else is kept for ``results()``; ``notify`` is called after each, so an
    actor loop can be woken through a socket.
    """

    _STOP = object()

    def __init__(self, sink: Sink, *, max_jobs: int = 1,
                 notify: Callable[[], None] | None = None,
                 on_result: Callable[[Any, SinkError | None], None] | None = None):
        self.sink = sink
        self.jobs: queue.Queue = queue.Queue(maxsize=max_jobs)
        self._results: collections.deque[tuple[Any, SinkError | None]] = collections.deque()
        self.notify = notify
        self.on_result = on_result
        self._unfinished = 0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)
        self.thread.start()

    def submit(self, job_id: Any, record: dict[str, Any], chart: str | None = None) -> bool:
        with self._lock:
            try:
                self.jobs.put_nowait((job_id, record, chart))
            except queue.Full:
                return False
            self._unfinished += 1
            return True

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._unfinished > 0

    def results(self) -> list[tuple[Any, SinkError | None]]:
        out = []
        while self._results:
            out.append(self._results.popleft())
        return out

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is self._STOP:
                return
            job_id, record, chart = job
            error: SinkError | None = None
            try:
                self.sink.deliver(record, chart)
            except SinkError as exc:
                error = exc
            except Exception as exc:  # a bug in a sink must not kill its thread silently
                # Frames only: an exception's message may quote a URL, and URLs hold secrets.
                log.error("%s failed unexpectedly (%s):\n%s", self.sink.name,
                          type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
                error = SinkError(f"{self.sink.name}: {type(exc).__name__}")
            if self.on_result is not None:
                self.on_result(job_id, error)
            else:
                self._results.append((job_id, error))
            with self._lock:
                self._unfinished -= 1
            if self.notify is not None:
                self.notify()

    def close(self, timeout_s: float = 2.0) -> list[Any]:
        """Stops waiting (the sink's close interrupts its waits), gives a delivery under way
        up to timeout_s to finish, and ends the thread. Returns the ids of jobs never started."""
        self.sink.close()
        unstarted = []
        while True:
            try:
                unstarted.append(self.jobs.get_nowait()[0])
            except queue.Empty:
                break
        with self._lock:
            self._unfinished -= len(unstarted)
        try:
            self.jobs.put_nowait(self._STOP)
        except queue.Full:
            pass
        self.thread.join(timeout_s)
        return unstarted

    def drain(self, timeout_s: float) -> bool:
        """Waits up to timeout_s for the queued jobs to finish; True when they did."""
        end = time.monotonic() + timeout_s
        while self.busy:
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.02))
        return True
