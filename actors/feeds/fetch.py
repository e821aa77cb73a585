"""FeedFetcher: bounded, concurrent polls of single feeds for the fetcher actor (each on
its own schedule, schedule.py), with per-feed breakers, validators, Retry-After and stats.
fetch_cycle() polls every feed once and waits: benchmarks and tests use it."""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

from actors.errors import FeedError
from actors.feeds.cik_map import CIK_MAP_FILE, CIK_MAP_MAX_BYTES, CikTickerMap
from actors.feeds.edgar import EDGAR_MAX_WAIT_S, EdgarGate, is_rate_limit_answer
from actors.feeds.http import (
    DEADLINE_READ_TIMEOUTS,
    BackingOff,
    FetchError,
    HttpClient,
    HttpResponse,
    HttpStatusError,
    RateLimited,
    retry_after_s,
)
from actors.feeds.items import build_items
from actors.feeds.outage import OutageDetector
from actors.feeds.parse import parse_document
from actors.protocol import Item
from actors.resilience import CircuitBreaker

if TYPE_CHECKING:
    from catalyst_config import Config

__all__ = ["FeedFetcher", "FeedResult", "OutageDetector"]

log = logging.getLogger("catalyst.fetcher")

Status = Literal["ok", "not_modified", "error", "skipped"]
# Parsing a capped body takes well under this; it only sizes the cycle's own deadline.
PARSE_ALLOWANCE_S = 5.0


@dataclass
class FeedResult:
    """What one feed gave in one cycle."""

    feed: str
    status: Status
    items: list[Item] = field(default_factory=list)
    error: str | None = None
    elapsed_s: float = 0.0
    bytes_read: int = 0
    http_status: int | None = None
    entries: int = 0  # entries in the document
    stale: int = 0  # entries dropped as older than the freshness window
    refused: int = 0  # entries refused (a link past any sane size), counted and named
    refused_reason: str | None = None


@dataclass
class _Outcome:
    """A worker's answer: the result plus what only the cycle thread may apply."""

    result: FeedResult
    etag: str | None = None
    last_modified: str | None = None
    counts_for_breaker: bool = True
    retry_after_s: float | None = None  # the server asked us to wait this long (429, 503)


class _FeedState:
    """Per feed, across cycles: breaker, conditional-GET validators and stats."""

    def __init__(self, name: str, breaker: CircuitBreaker):
        self.name = name
        self.breaker = breaker
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.counts = {"ok": 0, "not_modified": 0, "error": 0, "skipped": 0}
        self.items_total = 0
        self.stale_total = 0
        self.refused_total = 0
        self.last: FeedResult | None = None
        self.last_success_at: float | None = None  # wall time
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall time
        self.retry_after_until = 0.0  # monotonic: not before this (Retry-After)

    def stats(self) -> dict:
        last = self.last
        return {"breaker": self.breaker.stats(), "counts": dict(self.counts),
                "items_total": self.items_total, "stale_total": self.stale_total,
                "refused_total": self.refused_total,
                "last_status": last.status if last else None,
                "last_success_at": self.last_success_at,
                "last_error": self.last_error, "last_error_at": self.last_error_at,
                "last_elapsed_s": round(last.elapsed_s, 4) if last else None,
                "last_http_status": last.http_status if last else None,
                "last_items": len(last.items) if last else None,
                "last_refused_reason": last.refused_reason if last else None,
                "last_bytes": last.bytes_read if last else None}


class FeedFetcher:
    """Fetches a cycle's feeds concurrently over one pooled session; keeps per-feed
    breakers, validators and timings. Not thread-safe: one cycle at a time."""

    def __init__(self, cfg: Config, instance: int = 0, instances: int = 1):
        fetch = cfg.fetch
        self.cfg = cfg
        self.fetch = fetch
        self.instance = instance
        self.instances = max(1, instances)
        deadline = getattr(fetch, "request_deadline_s", None) or (
            fetch.connect_timeout_s + DEADLINE_READ_TIMEOUTS * fetch.read_timeout_s)
        self.http = HttpClient(connect_timeout_s=fetch.connect_timeout_s,
                               read_timeout_s=fetch.read_timeout_s, deadline_s=deadline,
                               pool_size=fetch.max_workers)
        self.edgar = EdgarGate(fetch.edgar_max_rps, self.instances)
        self.ciks = CikTickerMap(cfg.path(cfg.data_dir) / CIK_MAP_FILE, fetch.company_tickers_url,
                                 fetch.company_tickers_max_age_s)
        self._pool = ThreadPoolExecutor(max_workers=fetch.max_workers,
                                        thread_name_prefix=f"fetch{instance}")
        self._feeds: dict[str, _FeedState] = {}
        self._inflight: set[str] = set()
        self._inflight_lock = threading.Lock()
        self._cik_lock = threading.Lock()  # one refresh of the CIK map at a time
        # stats() is called from the actor's main thread while a cycle runs in another.
        self._stats_lock = threading.Lock()
        self.cycles = 0
        self.last_cycle_s = 0.0

    # One poll of one feed -------------------------------------------------------

    def submit(self, feed, on_done: Callable[[Future], None] | None = None) -> Future | None:
        """Starts one poll of feed on the pool (its result via collect()); None, with the
        skip recorded, when its breaker is open or a fetch of it is still running."""
        state = self._state(feed.name)
        with self._inflight_lock:
            busy = feed.name in self._inflight
            if not busy and state.breaker.allow():
                self._inflight.add(feed.name)
                future = self._pool.submit(self._fetch_feed, feed, state.etag,
                                           state.last_modified)
                if on_done is not None:
                    future.add_done_callback(on_done)
                return future
        reason = ("the previous fetch is still running" if busy else
                  f"breaker open for {state.breaker.stats()['open_remaining_s']:.1f} s more")
        self._apply(state, _Outcome(FeedResult(feed.name, "skipped", error=reason),
                                    counts_for_breaker=False))
        return None

    def collect(self, feed, future: Future | None) -> FeedResult:
        """The result of a poll submit() started (the future done), applied to the feed's
        state; a future still running counts as an error (its worker keeps its slot)."""
        if future is None:  # skipped at submit
            return self._state(feed.name).last
        if future.done():
            outcome = future.result()
        else:
            outcome = _Outcome(FeedResult(feed.name, "error",
                                          error="no result within the cycle deadline"))
        self._apply(self._state(feed.name), outcome)
        return outcome.result

    def reconfigure(self, cfg: Config, changed_urls: set[str]) -> None:
        """A reload: the new configuration (sec_user_agent, feeds); a feed whose URL changed
        starts afresh (its validators and breaker were the old URL's), the others keep theirs."""
        self.cfg = cfg
        with self._stats_lock:
            for name in changed_urls:
                self._feeds.pop(name, None)

    def not_before(self, name: str) -> float:
        """The earliest monotonic time the feed may be polled again: an open breaker's end,
        or what the server asked for in Retry-After."""
        state = self._state(name)
        breaker = state.breaker
        opened = breaker.open_until if breaker.state == "open" else 0.0
        return max(opened, state.retry_after_until)

    # A whole cycle at once (benchmarks, tests) ------------------------------------

    def fetch_cycle(self, feeds: list) -> list[FeedResult]:
        """Fetch every enabled feed once, concurrently; one FeedResult each, in order."""
        started = time.monotonic()
        feeds = [f for f in feeds if f.enabled]
        futures = {f.name: self.submit(f) for f in feeds}
        running = [fut for fut in futures.values() if fut is not None]
        wait(running, timeout=self._cycle_deadline(len(running)))
        ordered = [self.collect(f, futures[f.name]) for f in feeds]
        self.cycles += 1
        self.last_cycle_s = time.monotonic() - started
        log.info("cycle %d: %d feeds, %d items, %.3f s", self.cycles, len(ordered),
                 sum(len(r.items) for r in ordered), self.last_cycle_s)
        return ordered

    def _cycle_deadline(self, submitted: int) -> float:
        waves = math.ceil(submitted / self.fetch.max_workers) if submitted else 0
        return waves * (self.http.deadline_s + PARSE_ALLOWANCE_S) + EDGAR_MAX_WAIT_S

    def _state(self, name: str) -> _FeedState:
        state = self._feeds.get(name)
        if state is None:
            f = self.fetch
            state = _FeedState(name, CircuitBreaker(name, f.breaker_failures, f.breaker_backoff_initial_s,
                                                    f.breaker_backoff_max_s))
            with self._stats_lock:
                self._feeds[name] = state
        return state

    def _apply(self, state: _FeedState, outcome: _Outcome) -> None:
        """Record a result on the cycle thread: breaker, validators, stats, log line."""
        with self._stats_lock:
            self._record(state, outcome)
        result = outcome.result
        level = logging.WARNING if result.status == "error" else logging.INFO
        log.log(level, "feed %s: %s, %d items (%d stale) in %.3f s, %d bytes, HTTP %s%s",
                result.feed, result.status, len(result.items), result.stale, result.elapsed_s,
                result.bytes_read, result.http_status, f": {result.error}" if result.error else "")

    @staticmethod
    def _record(state: _FeedState, outcome: _Outcome) -> None:
        result = outcome.result
        if result.status in ("ok", "not_modified"):
            state.breaker.record_success()
            state.etag = outcome.etag or state.etag
            state.last_modified = outcome.last_modified or state.last_modified
            state.last_success_at = time.time()
        elif result.status == "error":
            if outcome.counts_for_breaker:
                state.breaker.record_failure()
            state.last_error, state.last_error_at = result.error, time.time()
        if outcome.retry_after_s is not None:
            state.retry_after_until = time.monotonic() + outcome.retry_after_s
        state.counts[result.status] += 1
        state.items_total += len(result.items)
        state.stale_total += result.stale
        state.refused_total += result.refused
        state.last = result

    # One feed (worker thread) ----------------------------------------------------

    def _fetch_feed(self, feed, etag: str | None, last_modified: str | None) -> _Outcome:
        try:
            return self._fetch_feed_inner(feed, etag, last_modified)
        except Exception as exc:  # a bug on one feed's input must not cost the other feeds
            log.exception("feed %s: unexpected failure", feed.name)
            return _Outcome(FeedResult(feed.name, "error", error=f"internal error: {type(exc).__name__}: {exc}"[:300]))
        finally:
            with self._inflight_lock:
                self._inflight.discard(feed.name)

    def _fetch_feed_inner(self, feed, etag: str | None, last_modified: str | None) -> _Outcome:
        response: HttpResponse | None = None
        started = time.monotonic()
        try:
            if feed.kind == "sec":
                self._refresh_cik_map()
                self.edgar.acquire()
                started = time.monotonic()  # elapsed_s is the feed's time, not its EDGAR queue's
            response = self._get(feed.url, feed.kind, etag, last_modified, self.fetch.max_bytes)
            self._check_rate_limit(feed.kind, response, feed.url)
            started_parse = time.monotonic()
            outcome = self._interpret(feed, response)
            outcome.result.elapsed_s = time.monotonic() - started
            log.debug("feed %s parsed in %.3f s", feed.name, time.monotonic() - started_parse)
            return outcome
        except BackingOff as exc:
            result = FeedResult(feed.name, "skipped", error=str(exc))
            return _Outcome(result, counts_for_breaker=False)
        except RateLimited as exc:  # the host is backed off; this feed did nothing wrong
            result = FeedResult(feed.name, "error", error=str(exc))
            outcome = _Outcome(result, counts_for_breaker=False)
        except FeedError as exc:
            outcome = _Outcome(FeedResult(feed.name, "error", error=str(exc)),
                               retry_after_s=getattr(exc, "retry_after_s", None))
        outcome.result.elapsed_s = time.monotonic() - started
        if response is not None:
            outcome.result.http_status = response.status
            outcome.result.bytes_read = response.bytes_read
        return outcome

    def _get(self, url: str, kind: str, etag: str | None, last_modified: str | None,
             max_bytes: int) -> HttpResponse:
        headers = {}
        if kind == "sec":  # the caller has waited for its EDGAR turn
            headers["User-Agent"] = self.cfg.sec_user_agent or ""
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        return self.http.get(url, headers, max_bytes)

    def _check_rate_limit(self, kind: str, response: HttpResponse, url: str) -> None:
        if kind == "sec" and is_rate_limit_answer(response):
            self.edgar.back_off(f"HTTP {response.status} from {url}")
            raise RateLimited(f"EDGAR rate threshold exceeded (HTTP {response.status})")

    def _interpret(self, feed, response: HttpResponse) -> _Outcome:
        etag = (response.headers.get("ETag") or "").strip() or None
        last_modified = (response.headers.get("Last-Modified") or "").strip() or None
        if response.status == 304:  # nothing new: no parse
            result = FeedResult(feed.name, "not_modified", http_status=304)
            return _Outcome(result, etag, last_modified)
        if not 200 <= response.status < 300:
            wait = retry_after_s(response.headers.get("Retry-After")) \
                if response.status in (429, 503) else None
            raise HttpStatusError(response.status, wait)
        content_type = response.headers.get("Content-Type", "")
        parsed = parse_document(response.body, content_type, response.url)
        now = time.time()
        freshness = self.fetch.freshness_sec_s if feed.kind == "sec" else self.fetch.freshness_pr_s
        batch = build_items(parsed.entries, source=feed.name, kind=feed.kind, now=now,
                            freshness_s=freshness, include_otc=self.fetch.otc_tickers,
                            cik_tickers=self.ciks.tickers)
        if parsed.complaint:
            log.debug("feed %s parsed despite: %s", feed.name, parsed.complaint)
        result = FeedResult(feed.name, "ok", items=batch.items, http_status=response.status,
                            bytes_read=response.bytes_read, entries=batch.entries, stale=batch.stale,
                            refused=batch.refused, refused_reason=batch.refused_reason)
        return _Outcome(result, etag, last_modified)

    def _refresh_cik_map(self) -> None:
        """On an EDGAR feed's worker: the CIK map, if it is due, before the feed's items
        need it (other EDGAR feeds wait for the one refresh; the wires never do)."""
        with self._cik_lock:
            if self.ciks.needs_refresh():
                self.ciks.refresh(self._download_cik_map)

    def _download_cik_map(self, url: str) -> bytes:
        self.edgar.acquire()
        response = self._get(url, "sec", None, None, CIK_MAP_MAX_BYTES)
        self._check_rate_limit("sec", response, url)
        if response.status != 200:
            raise FetchError(f"HTTP {response.status}")
        return response.body

    # Reporting and shutdown -------------------------------------------------------

    def stats(self) -> dict:
        """JSON-able: per-feed breaker state, last status and timing, counts."""
        with self._stats_lock:
            feeds = {name: state.stats() for name, state in list(self._feeds.items())}
        return {"instance": self.instance, "instances": self.instances, "cycles": self.cycles,
                "last_cycle_s": round(self.last_cycle_s, 4), "edgar": self.edgar.stats(),
                "cik_map": self.ciks.stats(), "feeds": feeds}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()
