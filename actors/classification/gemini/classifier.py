"""Gemini behind the Classifier interface, cheap and never blocking the actor loop.

An item is answered from the analysis cache when it can be (a redelivery costs nothing),
otherwise it waits in a bounded backlog until a call slot, a rate token and the budget
allow a request; waiting items go out together, up to batch_size headlines a request,
except an item whose text reads like instructions to a model, which goes alone (see
actors.classification.gemini.prompt for how item text is kept from steering the answers).
Calls run on a bounded thread pool (the semaphore); finished calls come back through a
queue and a socketpair that wakes the actor loop, which alone touches SQLite and the
sockets. Whenever the model cannot answer (garbage twice, the API failing, the breaker
open, the budget spent, the item's feed at its daily cap, an item waiting too long) the
keyword classifier does, and the reason is counted.

llm_cache.db (analyses and the daily spend) may be away: disk full, I/O errors, read-only,
locked by another program, at start or later. The provider starts and runs anyway, with
no restart: analyses are cached in memory alone, and since the budget cannot be checked
the keyword classifier answers (store_unavailable) instead of an unmetered model. One
admin event tells of it (the cache and the usage monitor share the file's StoreOutage);
the file is tried again with backoff, and the model resumes once a write works, with
the spend it could not write meanwhile written first (actors.classification.gemini.usage).
"""

from __future__ import annotations

import collections
import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from actors.base import Waker
from actors.classification import rules
from actors.classification.base import Answer
from actors.classification.cache import (
    CACHE_FILE,
    AnalysisCache,
    amended_form,
    content_hash,
    open_llm_db,
)
from actors.classification.gemini.api import GeminiAPI, GeminiCaller, Outcome
from actors.classification.gemini.prompt import looks_like_instructions
from actors.classification.gemini.rate_limit import RateLimiter
from actors.storage.sqlite import backup
from actors.classification.gemini.usage import (
    STORE_AWAY_EFFECT,
    UsageMonitor,
    split_cost,
)
from actors.errors import ConfigError, StoreUnavailableError
from actors.protocol import Analysis, Item
from actors.resilience import CircuitBreaker

if TYPE_CHECKING:
    from catalyst_config import Config

log = logging.getLogger("catalyst.llm")

POLL_S = 0.05  # while calls are in flight, answers are looked for at least this often
USAGE_REFRESH_S = 5.0  # how often the other llm instances' spending is re-read
# Always in stats (0 until counted); api_<reason> counters appear when they happen.
STAT_COUNTERS = ("calls", "classified_gemini", "invalid_answers", "invalid_retries", "retries",
                 "coalesced", "usage_estimated", "isolated_items", "steered_batches")


@dataclass
class Job:
    """One item waiting for, or inside, a model call."""

    item: Item
    content: str  # content hash: with the key, the cache key
    attempt: int
    queued: float  # monotonic
    alone: bool = False  # its text reads like instructions: it shares no request


class GeminiClassifier:
    """Classifies with Gemini; see the module docstring for the path an item takes."""

    wake_fd: int

    def __init__(self, config: Config, *, name: str = "llm-0", admin=None):
        llm = self.llm = config.llm
        self.name = name
        self.admin = admin or (lambda *args, **kwargs: None)
        api_key = config.secrets.get("GEMINI_API_KEY")
        if not api_key:
            raise ConfigError("llm.provider", "gemini needs GEMINI_API_KEY in the environment")
        self.db_path = config.path(config.data_dir) / CACHE_FILE
        self.db: sqlite3.Connection | None = None
        away: StoreUnavailableError | None = None
        try:
            self._open_db()
        except StoreUnavailableError as exc:  # kept where it is; opened later, with backoff
            away = exc
        self.cache = AnalysisCache(self.db, ttl_s=llm.cache_ttl_s, memory_size=llm.cache_size,
                                   opener=self._open_db, admin=self.admin)
        # One file, one outage: the cache's, told what this provider does meanwhile.
        self.cache.outage.effect = f"analyses are cached in memory only; {STORE_AWAY_EFFECT}"
        if away is not None:
            self.cache.outage.failed(away)  # the admin event, at start
        self.usage = UsageMonitor(self.db, llm, actor=name, admin=self.admin,
                                  opener=self._open_db, outage=self.cache.outage)
        self.limiter = RateLimiter(llm.requests_per_minute / max(1, config.actors.llm.instances),
                                   burst=llm.max_concurrency)
        self.breaker = CircuitBreaker("gemini", llm.breaker_failures,
                                      llm.breaker_backoff_initial_s, llm.breaker_backoff_max_s)
        self.stop = threading.Event()
        self.api = GeminiAPI(llm, api_key)
        self.caller = GeminiCaller(self.api, self.limiter, llm, self.stop)
        self.pool = ThreadPoolExecutor(llm.max_concurrency, thread_name_prefix="gemini")
        self.pool.submit(self.api.warm_up)
        self.done: queue.SimpleQueue[tuple[list[Job], Outcome]] = queue.SimpleQueue()
        self._waker = Waker()
        self.wake_fd = self._waker.fileno()
        self.backlog: collections.deque[Job] = collections.deque()
        self.pending: dict[tuple[str, str], Job] = {}  # backlog and in flight, by cache key
        self.in_flight = 0  # calls on the pool
        self.ready: list[Answer] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self.fallbacks: collections.Counter[str] = collections.Counter()
        self.calls_by_model: collections.Counter[str] = collections.Counter()
        now = time.monotonic()
        self.next_purge = now + min(60.0, llm.cache_purge_interval_s)
        self.next_refresh = now + USAGE_REFRESH_S

    def _open_db(self) -> sqlite3.Connection:
        """The one connection to llm_cache.db that the cache and the usage monitor share,
        opened on first use; raises StoreUnavailableError while the file is away."""
        if self.db is None:
            self.db = open_llm_db(
                self.db_path, self.llm.sqlite,
                on_corrupt=lambda m: self.admin("llm_cache_corrupt", m, reason="corrupt",
                                                level="error"))
        return self.db

    # The Classifier interface ------------------------------------------------

    def submit(self, item: Item, attempt: int) -> Analysis | None:
        """The analysis now (cache, or keywords when the model is out), or None: later."""
        content = content_hash(item)
        cached = self.cache.get(item.key, content)
        if cached is not None:
            return cached
        job = self.pending.get((item.key, content))
        if job is not None:  # sent again while its call is under way: one call answers both
            job.attempt = max(job.attempt, attempt)
            self.counters["coalesced"] += 1
            return None
        if amended_form(item):
            self.cache.invalidate_amended(item)
        job = Job(item, content, attempt, time.monotonic(),
                  alone=looks_like_instructions(item, self.llm.max_input_chars))
        reason = self._model_unavailable() or (
            "feed_budget" if self.usage.feed_capped(item.source) else None)
        if reason:
            return self._keywords([job], reason)[0]
        self.backlog.append(job)  # answers() or tick() sends it, with whatever else came
        self.pending[(item.key, content)] = job
        return None

    def answers(self) -> list[Answer]:
        """Answers that finished since the last call; starts the calls now possible."""
        self._waker.drain()
        while True:
            try:
                batch, outcome = self.done.get_nowait()
            except queue.Empty:
                break
            self._finish(batch, outcome)
        self._dispatch()
        ready, self.ready = self.ready, []
        return ready

    def tick(self, now: float) -> None:
        if self.backlog and now - self.backlog[0].queued >= self.llm.max_queue_wait_s:
            stale = []
            while self.backlog and now - self.backlog[0].queued >= self.llm.max_queue_wait_s:
                stale.append(self.backlog.popleft())
            log.warning("%d items waited over %.0fs for a model call; keywords answer them",
                        len(stale), self.llm.max_queue_wait_s)
            self._answer_with_keywords(stale, "queue_timeout")
        if now >= self.next_purge:
            self.next_purge = now + self.llm.cache_purge_interval_s
            removed = self.cache.purge_expired()
            self.usage.purge()
            if removed:
                log.info("purged %d expired analyses from the llm cache", removed)
        if now >= self.next_refresh:
            self.next_refresh = now + USAGE_REFRESH_S
            self.usage.refresh()
        self._dispatch()

    def next_deadline(self, now: float) -> float:
        deadlines = [self.next_purge, self.next_refresh]
        if self.in_flight:
            deadlines.append(now + POLL_S)  # input may be paused, and the wake fd with it
        if self.backlog:
            deadlines.append(self.backlog[0].queued + self.llm.max_queue_wait_s)
            if self.in_flight < self.llm.max_concurrency:
                wait = self.limiter.wait_s()
                if self.breaker.state == "open":
                    wait = max(wait, self.breaker.open_until - now)
                deadlines.append(now + max(wait, 0.005))
        return min(deadlines)

    def saturated(self) -> bool:
        """The backlog is full: the actor stops reading, and ZeroMQ holds items upstream."""
        return len(self.backlog) >= self.llm.max_backlog

    def busy(self) -> bool:
        return bool(self.backlog or self.in_flight or self.ready)

    def stats(self) -> dict:
        fallbacks = dict(self.fallbacks)
        counted = {name: self.counters[name] for name in STAT_COUNTERS}
        return {
            **self.cache.stats(), **self.usage.stats(), **counted, **self.counters,
            "calls_by_model": dict(self.calls_by_model),
            "fallbacks": sum(fallbacks.values()), "fallbacks_by_reason": fallbacks,
            **{f"fallback_{reason}": n for reason, n in fallbacks.items()},
            "breaker_state": self.breaker.state,
            "breaker_open": int(self.breaker.state != "closed"),
            "in_flight": self.in_flight, "backlog": len(self.backlog),
        }

    def backup(self, directory: Path) -> dict:
        """A consistent copy of llm_cache.db in directory (actors/storage/sqlite.py,
        backup); raises StoreUnavailableError while the file cannot be opened."""
        return backup(self._open_db(), CACHE_FILE, directory, what="llm cache")

    def close(self) -> None:
        self.stop.set()  # workers waiting out a backoff give up at once
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()
        if self.db is not None:
            self.db.close()
        self._waker.close()

    # Calls ---------------------------------------------------------------------

    def _model_unavailable(self) -> str | None:
        """Why no model may be asked now, or None."""
        if not self.usage.available():  # the budget cannot be checked: never unmetered
            return "store_unavailable"
        if self.usage.choose_model() is None:
            return "budget"
        if not self.breaker.allow():
            return "breaker_open"
        return None

    def _dispatch(self) -> None:
        while self.backlog and self.in_flight < self.llm.max_concurrency:
            reason = self._model_unavailable()
            if reason:
                jobs = list(self.backlog)
                self.backlog.clear()
                self._answer_with_keywords(jobs, reason)
                return
            self._drop_capped_feeds()
            if not self.backlog:
                return
            trial = self.breaker.state == "half_open"
            if trial and self.in_flight:
                return  # one trial request decides whether the breaker closes
            if not self.limiter.try_acquire():
                return  # next_deadline() comes back when a token is there
            batch = self._next_batch(1 if trial else self.llm.batch_size)
            model = self.usage.choose_model()
            self.in_flight += 1
            self.pool.submit(self._call, model, batch)

    def _drop_capped_feeds(self) -> None:
        """Waiting items of a feed that reached its daily cap get the keyword answer."""
        capped = {feed for feed in {job.item.source for job in self.backlog}
                  if self.usage.feed_capped(feed)}
        if not capped:
            return
        dropped = [job for job in self.backlog if job.item.source in capped]
        kept = [job for job in self.backlog if job.item.source not in capped]
        self.backlog.clear()
        self.backlog.extend(kept)
        self._answer_with_keywords(dropped, "feed_budget")

    def _next_batch(self, size: int) -> list[Job]:
        """The oldest waiting item and, unless it must go alone, up to size - 1 more that
        may share a request; items passed over keep their place at the front."""
        first = self.backlog.popleft()
        if first.alone:
            self.counters["isolated_items"] += 1
            return [first]
        batch, passed = [first], []
        while self.backlog and len(batch) < size:
            job = self.backlog.popleft()
            (passed if job.alone else batch).append(job)
        self.backlog.extendleft(reversed(passed))
        return batch

    def _call(self, model: str, batch: list[Job]) -> None:
        """On a worker thread: the call with its retries; never raises."""
        try:
            outcome = self.caller.run(model, [job.item for job in batch])
        except Exception as exc:  # a bug here must not strand the batch: keywords answer
            log.exception("gemini call failed unexpectedly")
            outcome = Outcome(model, failed={i: "error" for i in range(len(batch))},
                              error=type(exc).__name__)
        self.done.put((batch, outcome))
        self._waker.wake()

    def _finish(self, batch: list[Job], outcome: Outcome) -> None:
        """On the actor thread: usage, breaker, cache, answers."""
        self.in_flight -= 1
        self.usage.record(outcome.usages, self._cost_by_feed(batch, outcome))
        self.counters.update(outcome.counts)
        self.calls_by_model[outcome.model] += outcome.counts["calls"]
        self._update_breaker(outcome)
        answered = [(job, outcome.analyses[pos]) for pos, job in enumerate(batch)
                    if pos in outcome.analyses]
        self.counters["classified_gemini"] += len(answered)
        self.cache.put_many([(job.item, job.content, a) for job, a in answered])
        for job, analysis in answered:
            self.pending.pop((job.item.key, job.content), None)
            self.ready.append(Answer(job.item, analysis, job.attempt))
        failed: dict[str, list[Job]] = {}
        for pos, job in enumerate(batch):
            if pos not in outcome.analyses:
                failed.setdefault(outcome.failed.get(pos, "error"), []).append(job)
        for reason, jobs in failed.items():
            log.warning("gemini could not classify %d items (%s: %s); keywords answer them",
                        len(jobs), reason, outcome.error)
            self._answer_with_keywords(jobs, reason)

    def _cost_by_feed(self, batch: list[Job], outcome: Outcome) -> dict[str, tuple[int, float]]:
        """Each feed's items in the batch and its share of what the batch's calls cost."""
        by_feed: dict[str, tuple[int, float]] = {}
        for job in batch:
            n, usd = by_feed.get(job.item.source, (0, 0.0))
            by_feed[job.item.source] = (n + 1, usd)
        for share in outcome.shares:
            cost_in, cost_out = self.usage.cost_parts(share.usage)
            for pos, usd in split_cost(cost_in, cost_out, share.in_weights,
                                       share.out_weights).items():
                n, total = by_feed[batch[pos].item.source]
                by_feed[batch[pos].item.source] = (n, total + usd)
        return by_feed

    def _update_breaker(self, outcome: Outcome) -> None:
        before = self.breaker.state
        if outcome.api_failed:
            self.breaker.record_failure()
        elif outcome.usages:
            self.breaker.record_success()
        after = self.breaker.state
        if after == "open" and before != "open":
            self.admin("llm_breaker_open",
                       f"Gemini is failing ({outcome.error}); the keyword classifier answers "
                       f"for {self.breaker.backoff_s:.0f}s, then one trial request",
                       reason=next(iter(outcome.failed.values()), "error"))
        elif after == "closed" and before != "closed":
            self.admin("llm_breaker_closed", "Gemini answers again", reason="recovered",
                       level="info")

    # Keywords ------------------------------------------------------------------

    def _keywords(self, jobs: list[Job], reason: str) -> list[Analysis]:
        """The keyword classifier's answers, cached like the model's and counted."""
        analyses = [rules.classify(job.item) for job in jobs]
        self.fallbacks[reason] += len(jobs)
        self.cache.put_many([(job.item, job.content, a) for job, a in zip(jobs, analyses)])
        return analyses

    def _answer_with_keywords(self, jobs: list[Job], reason: str) -> None:
        for job, analysis in zip(jobs, self._keywords(jobs, reason)):
            self.pending.pop((job.item.key, job.content), None)
            self.ready.append(Answer(job.item, analysis, job.attempt))
