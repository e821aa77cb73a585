"""The fetcher actor: polls its share of the feeds and hands candidates to dedupe.

A batch is held until dedupe answers that it is claimed (and so durably in the ledger),
and sent again if no answer comes: a dedupe crash mid-batch loses nothing.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import zmq

from actors import protocol
from actors.base import Actor
from actors.feeds import FeedFetcher, OutageDetector

log = logging.getLogger("catalyst.fetcher")

CLAIM_BATCH = 500  # items per Claim message at most
CLAIM_MAX_BYTES = protocol.MAX_MESSAGE_BYTES // 2  # and at most this encoded
CLAIM_RETRY_S = 2.0  # a claim unanswered this long is sent again


def claim_batches(items: list[protocol.Item]):
    """Batches under both the item count and the message size limits."""
    batch: list[protocol.Item] = []
    size = 0
    for item in items:
        item_size = len(item.title) + len(item.summary) * 4 + len(item.link) + 256
        if batch and (len(batch) >= CLAIM_BATCH or size + item_size > CLAIM_MAX_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch


class FetcherActor(Actor):

    def setup(self) -> None:
        cfg = self.config
        instances = max(1, cfg.actors.fetcher.instances)
        self.feeds = cfg.enabled_feeds()[self.spec.index::instances]
        self.fetcher = FeedFetcher(cfg, instance=self.spec.index, instances=instances)
        self.outage = OutageDetector(cycles=cfg.fetch.outage_cycles)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="fetch")
        # A finished fetch wakes the loop at once (tick collects it): no polling delay.
        self.fetch_done = self.waker()
        self.rpc = self.socket(zmq.DEALER, connect=cfg.endpoint("dedupe_rpc"))
        self.add_reader(self.rpc, self._on_replies)
        self.codec = protocol.Codec(protocol.Claimed)
        self.cycle = int(self.spec.options.get("first_cycle", 1))
        self.max_cycles = self.spec.options.get("max_cycles")
        self.cycles_done = self.cycle - 1
        self.next_poll = time.monotonic()
        self.running: Future | None = None
        self.cycle_started = 0.0
        self.unconfirmed: dict[int, tuple[bytes, float]] = {}
        self.next_req_id = 1

    @property
    def finished(self) -> bool:
        return self.max_cycles is not None and self.cycles_done >= self.max_cycles

    def _start_cycle(self, now: float) -> None:
        self.cycle_started = now
        self.next_poll = now + self.config.poll_interval_s
        self.running = self.pool.submit(self.fetcher.fetch_cycle, self.feeds)
        self.running.add_done_callback(self.fetch_done.wake)

    def _collect(self, now: float) -> None:
        future, self.running = self.running, None
        try:
            results = future.result()
        except Exception:  # a bug in a parser must not kill the poller; it is logged
            log.exception("%s: fetch cycle %d failed", self.name, self.cycle)
            self.counters["cycle_errors"] += 1
            results = []
        items = [item for r in results for item in r.items]
        self.counters["fetched"] += len(items)
        self.counters["feed_errors"] += sum(r.status == "error" for r in results)
        # A 304 is a feed saying "nothing new", alive and well: not a sign of an outage.
        event = self.outage.observe(len(items) + sum(r.status == "not_modified" for r in results))
        if event == "outage":
            self.admin("outage", f"no items from any feed for {self.outage.cycles} cycles",
                       reason="no_items", level="error")
        elif event == "recovered":
            self.admin("outage_recovered", "feeds are returning items again",
                       reason="items_back", level="info")
        for batch in claim_batches(items):
            claim = protocol.Claim(req_id=self.next_req_id, items=batch)
            self.unconfirmed[self.next_req_id] = (protocol.encode(claim), 0.0)
            self.next_req_id += 1
        self._send_claims(now)
        self.last_cycle_s = now - self.cycle_started

    def _send_claims(self, now: float) -> None:
        for req_id, (frame, sent_at) in list(self.unconfirmed.items()):
            if now - sent_at < CLAIM_RETRY_S:
                continue
            try:
                self.rpc.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                return  # dedupe is not there yet; try again on the next turn
            if sent_at:
                self.counters["claim_retries"] += 1
            self.unconfirmed[req_id] = (frame, now)

    def _on_replies(self) -> None:
        for _, reply in self.recv_messages(self.rpc, self.codec):
            self.unconfirmed.pop(reply.req_id, None)
        self._maybe_finish_cycle()

    def _maybe_finish_cycle(self) -> None:
        if self.running is None and not self.unconfirmed and self.cycle_started:
            self.cycles_done = self.cycle
            self.cycle += 1
            self.cycle_started = 0.0
            if self.finished:
                log.info("%s: finished %d cycles", self.name, self.cycles_done)

    def next_deadline(self, now: float) -> float:
        if self.running is not None:
            return now + self.heartbeat_interval  # the fetch wakes the loop when it is done
        if self.unconfirmed:
            return now + min(CLAIM_RETRY_S / 4, self.heartbeat_interval)
        if self.stopping or self.finished:
            return now + self.heartbeat_interval
        return self.next_poll

    def tick(self, now: float) -> None:
        if self.running is not None and self.running.done():
            self._collect(now)
        if self.unconfirmed:
            self._send_claims(now)
        self._maybe_finish_cycle()
        if (self.running is None and not self.unconfirmed and not self.stopping
                and not self.finished and now >= self.next_poll):
            self._start_cycle(now)

    def idle(self) -> bool:
        return self.running is None and not self.unconfirmed

    def stats(self) -> dict:
        return {"cycles_done": self.cycles_done, "finished": self.finished,
                "unconfirmed_batches": len(self.unconfirmed),
                "last_cycle_s": round(getattr(self, "last_cycle_s", 0.0), 3),
                "feeds": self.fetcher.stats()}

    def teardown(self) -> None:
        if hasattr(self, "pool"):
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.fetcher.close()
