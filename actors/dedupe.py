"""The dedupe actor: owner of the SeenStore; claims, forwards, redelivers, dead-letters.

The ledger is a SeenStore backend (actors/seen_store/base.py) chosen by dedupe.backend:
seen.db, this actor's alone (sqlite, the default), or a PostgreSQL database several dedupe
actors on several hosts share (postgres). This module uses only the interface.

Claims: every claim frame gets an answer. One that cannot be decoded (malformed, or over
the size limit) is answered with its error and retry=False, so the fetcher splits or
drops it instead of sending it again forever. Items whose feed has not completed a poll
yet are recorded as seen without an alert when that feed's first poll marks seen
(fetch.first_poll); `polled` in a claim says which feeds it completes.

Forwarding: Deliver frames are cut by their exact encoded size under the llm's frame
limit (protocol.fit_batches), never only by count, so no legal item takes others down
with it; an item too big for any frame alone becomes a dead letter at once.

When the ledger cannot be used (disk full, I/O error, read-only, locked by another program,
a database server that is down or unreachable: StoreUnavailableError) the actor stays up
and heartbeating: claims are answered error="store unavailable: ..." with retry=True and
nothing is recorded, the lease clock stops (nothing is sent again, no attempt is counted,
nothing dies of the outage), acks wait in a bounded buffer, and the store is tried again
with backoff (StoreOutage) until a try works; then everything resumes by itself.
"""

from __future__ import annotations

import logging
import time

import msgspec
import zmq

from actors import protocol
from actors.base import RECV_BATCH, Actor
from actors.errors import CommandError, ProtocolError, StoreUnavailableError
from actors.resilience import SilenceWatch
from actors.seen_store import SeenStore, open_seen_store, store_label
from actors.storage import StoreOutage
from actors.storage.sqlite import backup_command

log = logging.getLogger("catalyst.dedupe")

# Acks are finished in batches: moving rows to the big seen table costs a page per row
# however few rows a commit carries. A lost buffer is harmless: the items are sent again
# and the alert journal answers "already delivered".
ACK_FLUSH_S = 0.2
ACK_FLUSH_MAX = 5000
GROUP_COMMIT_MAX_ITEMS = 4000  # claims handled in one transaction, at most
# A store that purges in bounded batches and stopped at its bound is called again this soon.
PURGE_AGAIN_S = 1.0
# Acks kept while the ledger cannot record them (about 100 bytes each). Beyond, acks are
# dropped and counted: their items stay pending, come back after their lease, and the
# alert journal answers "already", so the alert side acks them again.
HELD_ACKS_MAX = 100_000
# The largest Deliver frame the llm takes: its Codec's limit (actors/llm.py).
LLM_MAX_FRAME_BYTES = protocol.MAX_MESSAGE_BYTES
DEAD_LETTERS_LIST_MAX = 10_000  # entries one dead-letters listing may ask for
REFUSAL_MAX_CHARS = 2000  # an error in a Claimed answer (a ShortText: 2048 at most)

_delivery_encoder = msgspec.msgpack.Encoder()


class DedupeActor(Actor):

    def setup(self) -> None:
        cfg = self.config
        d = cfg.dedupe
        self.outage = StoreOutage(
            store_label(cfg), notify=self.admin,
            effect="claims are refused for fetchers to send again later, leases and attempt "
                   "counts are paused, acks are held")
        self.store: SeenStore | None = None
        self.rpc = self.socket(zmq.ROUTER, bind=cfg.endpoint("dedupe_rpc"))
        self.acks = self.socket(zmq.PULL, bind=cfg.endpoint("dedupe_acks"))
        llm_inboxes = cfg.targets("llm_in")  # this host's llm instances, and the peers'
        self.deliver = self.socket(zmq.PUSH, connect=llm_inboxes, hwm=protocol.DELIVER_HWM)
        self.llm_instances = len(llm_inboxes)
        self.busy_poll_s = d.busy_poll_us / 1e6  # fetchers wait on our answer
        self.add_reader(self.rpc, self._on_claims)
        self.add_reader(self.acks, self._on_acks)
        self.rpc_codec = protocol.Codec(protocol.Claim, protocol.FeedLease)
        self.ack_codec = protocol.Codec(protocol.Ack)
        self.next_purge = time.monotonic() + min(60.0, d.purge_interval_s)
        self.acked: dict[str, list[str]] = {"delivered": [], "filtered": []}
        self.acks_held = 0
        # Items sent on that no ack comes back for: the llm or alert stage (maybe on
        # another host) answers nothing.
        self.downstream_silence = SilenceWatch("the llm and alert stages",
                                               cfg.host.stage_silence_s)
        self.next_ack_flush = 0.0
        self._open_store(time.monotonic())  # a store that is away is tried again in tick()

    # The store and its outages -----------------------------------------------

    def _open_store(self, now: float) -> bool:
        try:
            self.store = open_seen_store(
                self.config,
                on_corrupt=lambda msg: self.admin("store_corrupt", msg, reason="corrupt",
                                                  level="error"))
        except StoreUnavailableError as exc:
            self.outage.failed(exc, now)
            return False
        self.outage.ok(now)
        if self.store.pending_count():
            log.info("%d pending items from an earlier run will be sent again",
                     self.store.pending_count())
        return True

    def _ready(self, now: float) -> bool:
        """Whether to touch the store now: it is open and up, or a try is due (opening
        it again when it never opened). A try that fails goes to _failed()."""
        if self.store is None:
            return now >= self.outage.next_try and self._open_store(now)
        return self.outage.usable(now)

    def _failed(self, exc: StoreUnavailableError, now: float) -> None:
        self.outage.failed(exc, now)
        if self.store is not None:
            self.store.suspend_leases()

    def _worked(self, now: float) -> None:
        self.outage.ok(now)
        if self.store is not None:
            self.store.resume_leases()

    # Claims -------------------------------------------------------------------

    def _recv_claims(self):
        """Yields (envelope, Claim) waiting on the RPC socket. A frame that cannot be
        decoded is answered with its error at once, counted by reason: resending it
        could never work."""
        for _ in range(RECV_BATCH):
            try:
                frames = self.rpc.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            frame = frames[-1]
            try:
                yield frames[:-1], self.rpc_codec.decode(frame)
            except ProtocolError as exc:
                reason = "too_large" if len(frame) > self.rpc_codec.max_bytes else "invalid"
                self.counters["bad_messages"] += 1
                self.counters[f"claims_refused_{reason}"] += 1
                self.dropped.drop("data", exc)  # logged, without flooding the log
                self._reply(frames[:-1], protocol.Claimed(
                    req_id=protocol.request_id(frame) or 0,
                    error=f"claim refused: {exc}"[:REFUSAL_MAX_CHARS], retry=False))

    def _feed_lease(self, envelope: list[bytes], req: protocol.FeedLease) -> None:
        """Which feeds a fetcher may poll (several hosts: the leases live in the store, so
        one fetcher polls a feed at a time and another takes it once its lease lapses)."""
        now = time.monotonic()
        if not self._ready(now):
            self._reply(envelope, protocol.FeedLeased(req_id=req.req_id,
                                                      error="store unavailable"))
            return
        try:
            if req.release:
                self.store.release_feed_leases(req.holder, req.feeds)
                held: list[str] = []
                handover = 0
            else:
                held, handover = self.store.take_feed_leases(req.holder, req.feeds, req.ttl_s,
                                                             req.paused)
        except StoreUnavailableError as exc:
            self._failed(exc, now)
            self._reply(envelope, protocol.FeedLeased(req_id=req.req_id,
                                                      error="store unavailable"))
            return
        self._worked(now)
        self.counters["feed_lease_requests"] += 1
        self._reply(envelope, protocol.FeedLeased(req_id=req.req_id, feeds=held,
                                                  handover=handover))

    def _reply(self, envelope: list[bytes], reply: protocol.Message) -> None:
        self.rpc.send_multipart([*envelope, protocol.encode(reply)])

    def _refuse_all(self, group: list[tuple[list[bytes], protocol.Claim]]) -> None:
        """The store is away: nothing recorded; fetchers send these claims again later."""
        error = self.outage.error
        text = f"store unavailable: {error}" if error else "store unavailable"
        self.counters["claims_refused_unavailable"] += len(group)
        for envelope, claim in group:
            self._reply(envelope, protocol.Claimed(req_id=claim.req_id,
                                                   error=text[:REFUSAL_MAX_CHARS], retry=True))

    def _on_claims(self) -> None:
        # Group commit: claims that queued up together share one transaction, so the
        # ledger's last page, which all of them touch, is written once.
        group: list[tuple[list[bytes], protocol.Claim]] = []
        size = 0
        for envelope, claim in self._recv_claims():
            if isinstance(claim, protocol.FeedLease):
                self._feed_lease(envelope, claim)
                continue
            group.append((envelope, claim))
            size += len(claim.items)
            if size >= GROUP_COMMIT_MAX_ITEMS:
                break
        if not group:
            return
        now = time.monotonic()
        if not self._ready(now):
            self._refuse_all(group)
            return
        marked_before = self.store.marked_seen
        try:
            new = self.store.claim_group([(claim.items, claim.polled) for _, claim in group])
        except StoreUnavailableError as exc:
            self._failed(exc, now)
            self._refuse_all(group)
            return
        self._worked(now)
        new_keys = {item.key for item, _ in new}
        self.counters["claimed"] += size
        self.counters["new"] += len(new)
        self.counters["duplicates"] += size - len(new)
        self.counters["marked_seen_first_poll"] += self.store.marked_seen - marked_before
        for envelope, claim in group:
            mine = [it.key for it in claim.items if it.key in new_keys]
            new_keys.difference_update(mine)  # a key in two claims is new for the first only
            self._reply(envelope, protocol.Claimed(req_id=claim.req_id, new=mine))
        self._forward([(item, payload, 1) for item, payload in new])

    # Forwarding ---------------------------------------------------------------

    def _forward(self, batch: list[tuple[protocol.Item, bytes, int]]) -> list[str]:
        """Sends items (item, its payload in the ledger, attempt) on to the llm inboxes in
        frames cut by exact encoded size (each Delivery is encoded once, around the payload
        as it is; a frame is those bytes and a small header), spread over the instances;
        returns the keys it could not send (the store retries them soon)."""
        budget = LLM_MAX_FRAME_BYTES - protocol.FRAME_OVERHEAD_BYTES
        encoded: list[tuple[str, bytes]] = []
        too_big: list[tuple[protocol.Item, int]] = []
        for item, payload, attempt in batch:
            raw = _delivery_encoder.encode(
                protocol.Delivery(item=msgspec.Raw(payload), attempt=attempt))
            if len(raw) + 1 > budget:  # fit_batches counts a byte of list header per entry
                too_big.append((item, len(raw)))
            else:
                encoded.append((item.key, raw))
        if too_big:
            self._condemn(too_big)
        # PUSH spreads frames, not items: at least one frame per instance when it can.
        per_frame = max(1, min(protocol.DELIVER_CHUNK, -(-len(encoded) // self.llm_instances)))
        frames = list(protocol.fit_batches(encoded, max_bytes=LLM_MAX_FRAME_BYTES,
                                           max_count=per_frame, size_of=lambda e: len(e[1])))
        if frames:
            self.downstream_silence.waiting(time.monotonic())
        for i, chunk in enumerate(frames):
            frame = protocol.encode(protocol.Deliver(items=[msgspec.Raw(raw) for _, raw in chunk]))
            try:
                self.deliver.send(frame, zmq.NOBLOCK)
            except zmq.Again:  # the llm inbox is not there yet (starting, restarting)
                unsent = [key for later in frames[i:] for key, _ in later]
                self.counters["forward_deferred"] += len(unsent)
                try:
                    self.store.unsent(unsent)
                except StoreUnavailableError as exc:  # they go again when their lease ends
                    self._failed(exc, time.monotonic())
                return unsent
        return []

    def _condemn(self, too_big: list[tuple[protocol.Item, int]]) -> None:
        """Items no Deliver frame can carry become dead letters at once, each alone: they
        could never be delivered, and sending them would take a frame's others down."""
        try:
            self.store.condemn([item.key for item, _ in too_big])
        except StoreUnavailableError as exc:  # still pending; tried again after the outage
            self._failed(exc, time.monotonic())
            return
        for item, size in too_big:
            self.counters["dead"] += 1
            self.counters["dead_too_large"] += 1
            self.admin("dead_letter", f"{item.key} ({item.title[:120]}) is {size} bytes "
                       f"encoded, more than a frame to the llm may carry "
                       f"({LLM_MAX_FRAME_BYTES} bytes)", reason="too_large", level="error")

    # Acks ---------------------------------------------------------------------

    def _on_acks(self) -> None:
        now = time.monotonic()
        pending = self.store.pending_count() if self.store is not None else 0
        self.stage_answered(self.downstream_silence, now, pending > 0)
        for _, ack in self.recv_messages(self.acks, self.ack_codec):
            if self.acks_held + len(ack.keys) > HELD_ACKS_MAX:
                self.counters["acks_dropped"] += len(ack.keys)  # they come back: see above
                continue
            if ack.outcome == "held":  # renewed now (SQLite: in memory, nothing to write)
                if self.store is not None:
                    try:
                        self.counters["leases_held"] += self.store.hold(ack.keys)
                    except StoreUnavailableError as exc:
                        self._failed(exc, time.monotonic())
                continue
            self.acked[ack.outcome].extend(ack.keys)
            self.acks_held += len(ack.keys)
        if self.acks_held >= ACK_FLUSH_MAX:
            self._flush_acks(time.monotonic())

    def _flush_acks(self, now: float) -> None:
        """Finishes the acked items in the ledger; while it is away they stay held."""
        if not self.acks_held or not self._ready(now):
            return
        try:
            for outcome, keys in self.acked.items():
                if keys:
                    finished = self.store.finish(keys, outcome)
                    self.counters[outcome] += finished
                    self.counters["late_acks"] += len(keys) - finished
                    self.acked[outcome] = []
                    self.acks_held -= len(keys)
        except StoreUnavailableError as exc:
            self._failed(exc, now)
            return
        self._worked(now)
        self.next_ack_flush = now + ACK_FLUSH_S

    # Leases -------------------------------------------------------------------

    def _scan_leases(self, now: float) -> None:
        try:
            due = self.store.due(limit=self.config.dedupe.redeliver_batch)
        except StoreUnavailableError as exc:
            self._failed(exc, now)
            return
        for item in due.dead:
            self.counters["dead"] += 1
            self.admin("dead_letter", f"{item.key} ({item.title[:120]}) gave up after "
                       f"{self.config.dedupe.max_attempts} attempts", reason="max_attempts",
                       level="error")
        if due.resend:
            unsent = set(self._forward([(r.item, r.payload, r.attempt) for r in due.resend]))
            sent = [r.item.key for r in due.resend if r.item.key not in unsent]
            try:
                self.store.sent(sent)
            except StoreUnavailableError as exc:  # they went out; their count waits
                self._failed(exc, now)
            self.counters["redelivered"] += len(sent)

    def _try_store(self, now: float) -> None:
        """A try of a store that is away: open it, or else apply the held acks or write a
        probe; the first that works ends the outage."""
        if self.store is None:
            self._open_store(now)
        elif self.acks_held:
            self._flush_acks(now)
        else:
            try:
                self.store.probe()
            except StoreUnavailableError as exc:
                self._failed(exc, now)
            else:
                self._worked(now)

    # Hooks ----------------------------------------------------------------------

    def next_deadline(self, now: float) -> float:
        deadline = min(self.next_purge, now + self.heartbeat_interval, self.outage.deadline())
        if self.store is not None and not self.outage.down:
            deadline = min(deadline, self.store.next_due())
            if self.acks_held:
                deadline = min(deadline, self.next_ack_flush)
        return deadline

    def tick(self, now: float) -> None:
        self.outage.settle(now)
        if self.store is not None and self.store.pending_count():
            self.watch_silence(self.downstream_silence, now,
                               lambda: f"{self.store.pending_count()} items sent on, none acked")
        if self.store is None or self.outage.down:
            if self.outage.usable(now):
                self._try_store(now)
            return
        if now >= self.next_ack_flush and self.acks_held:
            self._flush_acks(now)
        if now >= self.store.next_due():
            self._scan_leases(now)
        if now >= self.next_purge and not self.outage.down:
            try:
                self.counters["purged"] += self.store.purge()
            except StoreUnavailableError as exc:
                self._failed(exc, now)
            self.next_purge = now + (PURGE_AGAIN_S if self.store.purge_incomplete
                                     else self.config.dedupe.purge_interval_s)

    def heartbeat(self, token: int = 0) -> None:
        if token:  # a drain check: answer with every ack received so far applied
            self._flush_acks(time.monotonic())
        super().heartbeat(token)

    def command(self, name: str, args: dict) -> dict:
        if name == "backup":  # read-only: works while the file cannot take writes too
            if self.store is None:
                raise CommandError(f"the ledger is unavailable ({self.outage.error}); "
                                   "nothing to back up until it opens")
            return {"actor": self.name, **backup_command(
                args, self.config.path(self.config.data_dir), self.store.backup)}
        if name != "dead_letters":
            return super().command(name, args)
        if self.store is None or self.outage.down:
            raise CommandError(f"the ledger is unavailable ({self.outage.error}); "
                               "try again once it is back")
        try:
            return self._dead_letters(args)
        except StoreUnavailableError as exc:
            self._failed(exc, time.monotonic())
            raise CommandError(f"the ledger is unavailable ({exc}); "
                               "try again once it is back") from None

    def _dead_letters(self, args: dict) -> dict:
        keys = args.get("replay")  # a list of keys, or "all"
        if keys is not None:
            if keys != "all" and not (isinstance(keys, list)
                                      and all(isinstance(k, str) for k in keys)):
                raise CommandError('replay takes a list of keys or "all"')
            replayed = self.store.replay_dead(None if keys == "all" else keys)
            self.counters["replayed"] += replayed
            if replayed:
                self.admin("dead_letters_replayed", f"{replayed} dead letters sent again "
                           "by an operator, with a fresh count of attempts",
                           reason="operator", level="info")
            return {"replayed": replayed}
        limit = args.get("limit", 100)
        if (isinstance(limit, bool) or not isinstance(limit, int)
                or not 0 <= limit <= DEAD_LETTERS_LIST_MAX):
            raise CommandError(f"limit must be a whole number from 0 to {DEAD_LETTERS_LIST_MAX}")
        total, letters = self.store.dead_letters(limit)
        return {"total": total, "dead_letters": letters}

    def idle(self) -> bool:
        return not self.acks_held

    def stats(self) -> dict:
        out = {"store": self.outage.state, "store_outages": self.outage.outages,
               "acks_held": self.acks_held,
               "marked_seen_first_poll": self.counters["marked_seen_first_poll"]}
        if self.store is not None:  # unknown while it never opened: the drain waits
            out.update(pending=self.store.pending_count(), live_keys=self.store.live_keys(),
                       expected_memory_bytes=self.store.expected_memory_bytes())
        return out

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store:
            store.close()
