"""The fetcher actor: polls its share of the feeds, each on its own schedule, and hands
each feed's items to dedupe the moment that feed's fetch ends.

A slow, failing or hanging feed delays only itself (actors/feeds/schedule.py). Each batch
is held until dedupe answers that it is claimed (and so durably in the ledger), and sent
again if no answer comes: a dedupe crash mid-batch loses nothing. A claim dedupe refuses
(too large, invalid) is split or, an item alone, dropped and counted, never resent as it
was; one refused because the store is away (retry) is sent again later, and polling pauses
while the held backlog is at its bound.

A feed an operator paused (`catalyst-supervisor pause FEED`) is not scheduled: it is not
polled, does not count toward a cycle, and still shows in the stats, marked paused. The
paused set is read from data_dir at start (catalyst_config/pauses.py) and replaced in place
by the supervisor's "pause_feeds" command; a resumed feed is due at once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import zmq

from actors import protocol
from actors.base import Actor
from actors.errors import CommandError, ConfigError
from actors.feeds import FeedFetcher, FeedLeases, FeedSchedule, OutageDetector, Staleness
from actors.resilience import SilenceWatch
from catalyst_config import config_from_dict
from catalyst_config.pauses import MAX_FEED_NAME_CHARS, MAX_PAUSED_FEEDS, read_paused

log = logging.getLogger("catalyst.fetcher")

CLAIM_RETRY_S = 2.0  # a claim unanswered this long is sent again
DEFERRED_RETRY_MAX_S = 10.0  # a claim refused while the store is away: resent this often at most
# Claimed-but-unanswered frames held in memory; past it no feed is polled until dedupe
# catches up (a full disk, a long restart): bounded, and nothing dropped.
BACKLOG_MAX_BYTES = 64 * 1024 * 1024
STALE_CHECK_S = 60.0


@dataclass
class _Claim:
    """One Claim frame awaiting dedupe's answer."""

    items: list[protocol.Item]
    polled: list[str]
    frame: bytes = b""
    sent_at: float = 0.0  # monotonic; 0: not yet sent
    retry_at: float = 0.0  # with a deferral: not before this
    deferrals: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # key -> feed


class FetcherActor(Actor):

    def setup(self) -> None:
        cfg = self.config
        instances = max(1, cfg.actors.fetcher.instances)
        now = time.monotonic()
        self.feeds = {f.name: f for f in cfg.enabled_feeds()[self.spec.index::instances]}
        self.removed: dict[str, object] = {}  # feeds a reload removed while being polled
        self.fetcher = FeedFetcher(cfg, instance=self.spec.index, instances=instances)
        self.paused = read_paused(cfg)  # feed names; only this fetcher's own feeds matter
        # A pause made while this process was still connecting may have been written after
        # the read above, and its pause_feeds lost (the supervisor's socket drops frames to
        # a peer it does not know yet). So, unless a pause_feeds arrives first, the file is
        # read once more after the first control message, which proves the supervisor knows
        # this process: anything written before that message was sent is then seen (tick()).
        self.pauses_read_at = now
        self.pauses_confirmed = False
        # Several hosts share the feeds (a shared PostgreSQL): poll only those leased to us.
        self.leases = (FeedLeases(f"{cfg.host_name()}/{self.name}", cfg.fetch.feed_lease_s,
                                  now=now) if cfg.dedupe.backend == "postgres" else None)
        active = self._active()
        self.schedule = FeedSchedule(
            {name: f.poll_interval(cfg.poll_interval_s) for name, f in active.items()},
            jitter_fraction=cfg.fetch.jitter_fraction, now=now)
        self.outage = OutageDetector(cycles=cfg.fetch.outage_cycles)
        self.staleness = Staleness({name: cfg.fetch.stale_after_s(f)
                                    for name, f in active.items()}, now=time.time())
        self.next_stale_check = now + STALE_CHECK_S
        # A finished fetch wakes the loop at once (tick collects it): no polling delay.
        self.fetch_done = self.waker()
        self.polls: dict[str, tuple[Future | None, float]] = {}  # feed -> (future, started)
        self.rpc = self.socket(zmq.DEALER, connect=cfg.targets("dedupe_rpc"))
        self.rpc.setsockopt(zmq.MAXMSGSIZE, protocol.SOCKET_MAX_BYTES)
        self.add_reader(self.rpc, self._on_replies)
        self.codec = protocol.Codec(protocol.Claimed, protocol.FeedLeased)
        first_cycle = int(self.spec.options.get("first_cycle", 1))
        self.cycles_before = first_cycle - 1  # done by earlier incarnations
        self.max_cycles = self.spec.options.get("max_cycles")
        self.cycle_items = 0  # items (and 304s) in the cycle under way, for outages
        self.unconfirmed: dict[int, _Claim] = {}
        self.backlog_bytes = 0
        self.next_req_id = 1
        self.dedupe_silence = SilenceWatch("dedupe", cfg.host.stage_silence_s)
        self.last_cycle_s = 0.0
        self.cycle_started = now

    @property
    def cycles_done(self) -> int:
        return self.cycles_before + self.schedule.cycles_done

    @property
    def finished(self) -> bool:
        return (self.max_cycles is not None and self.cycles_done >= self.max_cycles
                and not self.polls and not self.unconfirmed)

    # Pauses -------------------------------------------------------------------

    def _active(self) -> dict:
        """The feeds to poll: not paused, and (hosts sharing feeds) leased to this fetcher."""
        held = self.leases.held if self.leases else None
        return {name: f for name, f in self.feeds.items()
                if name not in self.paused and (held is None or name in held)}

    def _reschedule(self) -> None:
        """Schedules the active feeds: a resumed, new or newly leased one is due at once, a
        paused, removed or no longer leased one is no longer polled (a poll of it under
        way ends normally, its items claimed), and staleness watches only the active (a
        paused feed brings nothing by the operator's choice)."""
        cfg = self.config
        active = self._active()
        self.schedule.update({n: f.poll_interval(cfg.poll_interval_s)
                              for n, f in active.items()}, time.monotonic())
        # A feed resumed while its last poll still runs waits for that poll to end,
        # rather than being started twice or polled in a busy loop.
        for name in self.polls:
            if self.schedule.known(name):
                self.schedule.started(name)
        self.staleness.update({n: cfg.fetch.stale_after_s(f) for n, f in active.items()})

    def _pause_feeds(self, args: dict) -> dict:
        """pause_feeds {"paused": [names]}: the whole set of paused feeds, in place of the
        one held."""
        paused = args.get("paused")
        if not isinstance(paused, list) or len(paused) > MAX_PAUSED_FEEDS or not all(
                isinstance(n, str) and len(n) <= MAX_FEED_NAME_CHARS for n in paused):
            raise CommandError(f"pause_feeds: paused must be a list of at most "
                               f"{MAX_PAUSED_FEEDS} feed names (strings of at most "
                               f"{MAX_FEED_NAME_CHARS} characters)")
        before = self.paused & self.feeds.keys()
        self.paused = set(paused)
        self.pauses_confirmed = True  # as new as the file: no need to read it again
        self._reschedule()
        mine = self.paused & self.feeds.keys()
        if mine != before:
            log.info("%s: paused feeds: %s (resumed %s)", self.name, sorted(mine) or "none",
                     sorted(before - mine) or "none")
        return {"paused": sorted(mine)}

    # Feed leases (several hosts) ------------------------------------------------

    def _renew_leases(self, now: float) -> None:
        req = self.leases.request(self.next_req_id, list(self.feeds), now, self.paused)
        if req is not None:
            self.next_req_id += 1
            try:
                self.rpc.send(protocol.encode(req), zmq.NOBLOCK)
                self.dedupe_silence.waiting(now)
            except zmq.Again:
                pass  # no dedupe reachable: what we hold lapses on its own time
        if self.leases.lapse(now):
            log.warning("%s: feed leases lapsed unrenewed (no dedupe answered); polling "
                        "stops until they are taken again", self.name)
            self._leases_changed()

    def _leased(self, reply: protocol.FeedLeased) -> None:
        if self.leases and self.leases.answered(reply):
            log.info("%s: holds the leases of %d of its %d feeds: %s", self.name,
                     len(self.leases.held), len(self.feeds), sorted(self.leases.held) or "none")
            self._leases_changed()

    def _leases_changed(self) -> None:
        self._reschedule()
        # EDGAR's fair-access rate is per client: each host paces at its share of it.
        sec = [f.name for f in self.config.enabled_feeds() if f.kind == "sec"]
        held = sum(1 for name in sec if name in self.leases.held)
        if sec and held:
            self.fetcher.edgar.share(held / len(sec))

    # Polling ------------------------------------------------------------------

    def _polling(self) -> bool:
        if self.stopping or (self.max_cycles is not None and self.cycles_done >= self.max_cycles):
            return False
        return self.backlog_bytes < BACKLOG_MAX_BYTES

    def _start_due(self, now: float) -> None:
        if not self._polling():
            return
        for name in self.schedule.due(now):
            self.schedule.started(name)
            future = self.fetcher.submit(self.feeds[name], self.fetch_done.wake)
            self.polls[name] = (future, now)

    def _collect_done(self, now: float) -> None:
        for name, (future, started) in list(self.polls.items()):
            if future is not None and not future.done():
                continue
            del self.polls[name]
            feed = self.feeds.get(name) or self.removed.pop(name)  # removed by a reload
            result = self.fetcher.collect(feed, future)
            self.counters["polls"] += 1
            self.counters["fetched"] += len(result.items)
            self.counters["feed_errors"] += result.status == "error"
            # A 304 is a feed saying "nothing new", alive and well: not a sign of an outage.
            self.cycle_items += len(result.items) + (result.status == "not_modified")
            self._queue_claims(result.items, name)
            if not self.schedule.known(name):
                continue
            if self.schedule.finished(name, started, not_before=self.fetcher.not_before(name)):
                self._cycle_done(now)
        self._send_claims(now)

    def _cycle_done(self, now: float) -> None:
        self.last_cycle_s = now - self.cycle_started
        self.cycle_started = now
        event = self.outage.observe(self.cycle_items)
        self.cycle_items = 0
        if event == "outage":
            self.admin("outage", f"no items from any feed for {self.outage.cycles} cycles",
                       reason="no_items", level="error")
        elif event == "recovered":
            self.admin("outage_recovered", "feeds are returning items again",
                       reason="items_back", level="info")
        if self.max_cycles is not None and self.cycles_done >= self.max_cycles:
            log.info("%s: polled every feed %d times", self.name, self.cycles_done)

    # Claims -------------------------------------------------------------------

    def _queue_claims(self, items: list[protocol.Item], feed: str) -> None:
        """The feed's items in claims cut by their exact encoded size; its last claim (an
        empty one when it found nothing) says the feed's poll is complete."""
        batches = list(protocol.fit_batches(items)) or [[]]
        for i, batch in enumerate(batches):
            self._add_claim(batch, [feed] if i == len(batches) - 1 else [])

    def _add_claim(self, items: list[protocol.Item], polled: list[str]) -> None:
        req_id, self.next_req_id = self.next_req_id, self.next_req_id + 1
        claim = _Claim(items, polled, sources={i.key: i.source for i in items})
        claim.frame = protocol.encode(protocol.Claim(req_id=req_id, items=items, polled=polled))
        self.unconfirmed[req_id] = claim
        self.backlog_bytes += len(claim.frame)

    def _send_claims(self, now: float) -> None:
        for claim in list(self.unconfirmed.values()):
            if now < claim.retry_at or (claim.sent_at and now - claim.sent_at < CLAIM_RETRY_S):
                continue
            try:
                self.rpc.send(claim.frame, zmq.NOBLOCK)
            except zmq.Again:
                return  # dedupe is not there yet; try again on the next turn
            if claim.sent_at:
                self.counters["claim_retries"] += 1
            claim.sent_at = now
            self.dedupe_silence.waiting(now)

    def _on_replies(self) -> None:
        now = time.monotonic()
        answered = False
        for _, reply in self.recv_messages(self.rpc, self.codec):
            answered = True
            if isinstance(reply, protocol.FeedLeased):
                self._leased(reply)
                continue
            claim = self.unconfirmed.get(reply.req_id)
            if claim is None:
                continue  # an answer to a resend already answered
            if reply.error is None:
                self._confirmed(reply.req_id, claim, reply.new)
            elif reply.retry:
                self._deferred(claim, reply.error, now)
            else:
                self._refused(reply.req_id, claim, reply.error)
        if answered:
            self.stage_answered(self.dedupe_silence, now, bool(self.unconfirmed))
        self._send_claims(now)

    def _forget(self, req_id: int) -> _Claim:
        claim = self.unconfirmed.pop(req_id)
        self.backlog_bytes -= len(claim.frame)
        return claim

    def _confirmed(self, req_id: int, claim: _Claim, new: list[str]) -> None:
        self._forget(req_id)
        self.counters["claimed_new"] += len(new)
        self.staleness.saw_new({claim.sources[k] for k in new if k in claim.sources},
                               time.time())

    def _deferred(self, claim: _Claim, error: str, now: float) -> None:
        """The store is away (a full disk...): keep the claim, send it again later."""
        claim.deferrals += 1
        claim.retry_at = now + min(DEFERRED_RETRY_MAX_S, 0.5 * 2 ** min(claim.deferrals, 5))
        claim.sent_at = 0.0
        self.counters["claims_deferred"] += 1
        if claim.deferrals == 1:
            log.warning("%s: dedupe cannot take claims now (%s); holding them", self.name, error)

    def _refused(self, req_id: int, claim: _Claim, error: str) -> None:
        """Too large or invalid: halves go again; an item alone is dropped, counted."""
        self._forget(req_id)
        if len(claim.items) > 1:
            half = len(claim.items) // 2
            self._add_claim(claim.items[:half], [])
            self._add_claim(claim.items[half:], claim.polled)
            self.counters["claims_split"] += 1
            return
        for item in claim.items:
            self.counters["items_refused"] += 1
            log.warning("%s: dedupe refused item %r from %s: %s", self.name, item.key[:200],
                        item.source, error)
        if claim.polled:  # the feed's poll still completes
            self._add_claim([], claim.polled)

    # The loop -----------------------------------------------------------------

    def next_deadline(self, now: float) -> float:
        deadline = now + self.heartbeat_interval
        if self.unconfirmed:
            retry = min((c.retry_at if c.retry_at > now else c.sent_at + CLAIM_RETRY_S)
                        for c in self.unconfirmed.values())
            deadline = min(deadline, max(retry, now + 0.01))
        if self._polling():
            deadline = min(deadline, self.schedule.next_due())
        if self.leases:
            deadline = min(deadline, max(self.leases.next_deadline(), now + 0.01))
        return deadline

    def tick(self, now: float) -> None:
        if self.leases and not self.stopping:
            self._renew_leases(now)
        self.watch_silence(self.dedupe_silence, now,
                           lambda: f"{len(self.unconfirmed)} claims waiting")
        if not self.pauses_confirmed and self.last_ping > self.pauses_read_at:
            self.pauses_confirmed = True  # see setup()
            paused = read_paused(self.config)
            if paused != self.paused:
                log.info("%s: paused feeds (read again): %s", self.name,
                         sorted(paused & self.feeds.keys()) or "none")
                self.paused = paused
                self._reschedule()
        if self.polls:
            self._collect_done(now)
        if self.unconfirmed:
            self._send_claims(now)
        self._start_due(now)
        if now >= self.next_stale_check:
            self.next_stale_check = now + STALE_CHECK_S
            for feed, event, message in self.staleness.check(time.time()):
                self.admin(event, message, reason=feed,
                           level="warning" if event == "feed_stale" else "info")

    def idle(self) -> bool:
        return not self.polls and not self.unconfirmed

    def command(self, name: str, args: dict) -> dict:
        """reconfigure (from a reload): the feeds, poll interval and contact of a new
        configuration, taken in place: every feed kept keeps its ETag, breaker, EDGAR
        backoff and pause, a new one is polled at once (unless paused), a removed one is
        no longer polled. pause_feeds: see _pause_feeds."""
        if name == "pause_feeds":
            return self._pause_feeds(args)
        if name != "reconfigure":
            return super().command(name, args)
        try:
            new = config_from_dict({"feeds": args.get("feeds"),
                                    "poll_interval_s": args.get("poll_interval_s"),
                                    "sec_user_agent": args.get("sec_user_agent")},
                                   with_secrets=False)
        except ConfigError as exc:
            raise CommandError(f"reconfigure: {exc}") from None
        cfg = dataclasses.replace(self.config, feeds=new.feeds,
                                  poll_interval_s=new.poll_interval_s,
                                  sec_user_agent=new.sec_user_agent)
        instances = max(1, cfg.actors.fetcher.instances)
        mine = {f.name: f for f in cfg.enabled_feeds()[self.spec.index::instances]}
        changed = {n for n, f in mine.items() if n in self.feeds and self.feeds[n].url != f.url}
        self.removed.update({n: f for n, f in self.feeds.items() if n not in mine and n in self.polls})
        added, gone = sorted(mine.keys() - self.feeds.keys()), sorted(self.feeds.keys() - mine.keys())
        self.config, self.feeds = cfg, mine
        self.fetcher.reconfigure(cfg, changed)
        self._reschedule()
        log.info("%s: reconfigured: %d feeds (added %s, removed %s, new URL %s)", self.name,
                 len(mine), added or "none", gone or "none", sorted(changed) or "none")
        return {"feeds": sorted(mine), "added": added, "removed": gone}

    def stats(self) -> dict:
        now = time.monotonic()
        feeds = self.fetcher.stats()
        for name in self.paused & self.feeds.keys():  # shown even if never polled
            feeds["feeds"].setdefault(name, {})
        held = self.leases.held if self.leases else None
        if held is not None:  # shown even if never polled here: another host polls them
            for name in self.feeds:
                feeds["feeds"].setdefault(name, {})
        for name, feed_stats in feeds["feeds"].items():
            feed_stats["paused"] = name in self.paused
            if held is not None:
                feed_stats["leased_here"] = name in held
            feed_stats["next_poll_in_s"] = self.schedule.next_poll_in(name, now)
            feed_stats["polling"] = name in self.polls
            feed_stats["last_new_at"] = self.staleness.last_new_at(name)
            feed_stats["stale"] = self.staleness.is_stale(name)
        return {"cycles_done": self.cycles_done, "finished": self.finished,
                "unconfirmed_batches": len(self.unconfirmed),
                "backlog_bytes": self.backlog_bytes, "polls_in_flight": len(self.polls),
                "last_cycle_s": round(self.last_cycle_s, 3), "feeds": feeds,
                **({"feed_leases": self.leases.stats(now)} if self.leases else {})}

    def teardown(self) -> None:
        if getattr(self, "leases", None) and self.leases.held:
            try:  # another host takes our feeds at once, not a lease time later
                self.rpc.send(protocol.encode(self.leases.release(self.next_req_id)),
                              zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if hasattr(self, "fetcher"):
            self.fetcher.close()
