"""The dedupe actor: sole owner of the SeenStore; claims, forwards, redelivers, dead-letters."""

from __future__ import annotations

import logging
import time

import zmq

from actors import protocol
from actors.base import Actor
from actors.errors import CommandError
from actors.seen_store import SqliteSeenStore

log = logging.getLogger("catalyst.dedupe")

# Acks are finished in batches: moving rows to the big seen table costs a page per row
# however few rows a commit carries. A lost buffer is harmless: the items are sent again
# and the alert journal answers "already delivered".
ACK_FLUSH_S = 0.2
ACK_FLUSH_MAX = 5000
GROUP_COMMIT_MAX_ITEMS = 4000  # claims handled in one transaction, at most


class DedupeActor(Actor):

    def setup(self) -> None:
        cfg = self.config
        d = cfg.dedupe
        self.store = SqliteSeenStore(
            cfg.path(cfg.data_dir) / "seen.db", sqlite_cfg=d.sqlite, lease_s=d.lease_s,
            max_attempts=d.max_attempts, ttl_s=d.ttl_days * 86400.0,
            on_corrupt=lambda msg: self.admin("store_corrupt", msg, reason="corrupt",
                                              level="error"))
        self.rpc = self.socket(zmq.ROUTER, bind=cfg.endpoint("dedupe_rpc"))
        self.acks = self.socket(zmq.PULL, bind=cfg.endpoint("dedupe_acks"))
        self.deliver = self.socket(
            zmq.PUSH, connect=[cfg.instance_endpoint("llm_in", i)
                               for i in range(cfg.actors.llm.instances)],
            hwm=protocol.DELIVER_HWM)
        self.llm_instances = cfg.actors.llm.instances
        self.busy_poll_s = d.busy_poll_us / 1e6  # fetchers wait on our answer
        self.add_reader(self.rpc, self._on_claims)
        self.add_reader(self.acks, self._on_acks)
        self.rpc_codec = protocol.Codec(protocol.Claim)
        self.ack_codec = protocol.Codec(protocol.Ack)
        self.next_purge = time.monotonic() + min(60.0, d.purge_interval_s)
        self.acked: dict[str, list[str]] = {"delivered": [], "filtered": []}
        self.next_ack_flush = 0.0
        if self.store.pending_count():
            log.info("%d pending items from an earlier run will be sent again",
                     self.store.pending_count())

    def _forward(self, batch: list[tuple[protocol.Item, int]]) -> list[str]:
        """Sends items on to the llm inbox in chunks, spread over its instances; returns
        the keys it could not send (the store retries them soon)."""
        size = max(1, min(protocol.DELIVER_CHUNK, -(-len(batch) // self.llm_instances)))
        for start in range(0, len(batch), size):
            chunk = batch[start:start + size]
            frame = protocol.encode(protocol.Deliver(
                items=[protocol.Delivery(item=item, attempt=attempt) for item, attempt in chunk]))
            try:
                self.deliver.send(frame, zmq.NOBLOCK)
            except zmq.Again:  # the llm inbox is not there yet (starting, restarting)
                unsent = [item.key for item, _ in batch[start:]]
                self.counters["forward_deferred"] += len(unsent)
                self.store.unsent(unsent)
                return unsent
        return []

    def _on_claims(self) -> None:
        # Group commit: claims that queued up together share one transaction, so the
        # ledger's last page, which all of them touch, is written once.
        group: list[tuple[list[bytes], protocol.Claim]] = []
        size = 0
        for envelope, claim in self.recv_messages(self.rpc, self.rpc_codec):
            group.append((envelope, claim))
            size += len(claim.items)
            if size >= GROUP_COMMIT_MAX_ITEMS:
                break
        if not group:
            return
        new = self.store.claim([item for _, claim in group for item in claim.items])
        new_keys = {item.key for item in new}
        self.counters["claimed"] += size
        self.counters["new"] += len(new)
        self.counters["duplicates"] += size - len(new)
        for envelope, claim in group:
            mine = [it.key for it in claim.items if it.key in new_keys]
            new_keys.difference_update(mine)  # a key in two claims is new for the first only
            reply = protocol.Claimed(req_id=claim.req_id, new=mine)
            self.rpc.send_multipart([*envelope, protocol.encode(reply)])
        self._forward([(item, 1) for item in new])

    def _on_acks(self) -> None:
        for _, ack in self.recv_messages(self.acks, self.ack_codec):
            self.acked[ack.outcome].extend(ack.keys)
        if sum(map(len, self.acked.values())) >= ACK_FLUSH_MAX:
            self._flush_acks()

    def _flush_acks(self) -> None:
        for outcome, keys in self.acked.items():
            if keys:
                finished = self.store.finish(keys, outcome)
                self.counters[outcome] += finished
                self.counters["late_acks"] += len(keys) - finished
                self.acked[outcome] = []
        self.next_ack_flush = time.monotonic() + ACK_FLUSH_S

    def _scan_leases(self) -> None:
        due = self.store.due(limit=self.config.dedupe.redeliver_batch)
        for item in due.dead:
            self.counters["dead"] += 1
            self.admin("dead_letter", f"{item.key} ({item.title[:120]}) gave up after "
                       f"{self.config.dedupe.max_attempts} attempts", reason="max_attempts",
                       level="error")
        if due.resend:
            unsent = set(self._forward([(r.item, r.attempt) for r in due.resend]))
            sent = [r.item.key for r in due.resend if r.item.key not in unsent]
            self.store.sent(sent)
            self.counters["redelivered"] += len(sent)

    def next_deadline(self, now: float) -> float:
        deadline = min(self.store.next_due(), self.next_purge, now + self.heartbeat_interval)
        if any(self.acked.values()):
            deadline = min(deadline, self.next_ack_flush)
        return deadline

    def tick(self, now: float) -> None:
        if now >= self.next_ack_flush and any(self.acked.values()):
            self._flush_acks()
        if now >= self.store.next_due():
            self._scan_leases()
        if now >= self.next_purge:
            purged = self.store.purge()
            self.counters["purged"] += purged
            self.next_purge = now + self.config.dedupe.purge_interval_s

    def heartbeat(self, token: int = 0) -> None:
        if token:  # a drain check: answer with every ack received so far applied
            self._flush_acks()
        super().heartbeat(token)

    def command(self, name: str, args: dict) -> dict:
        if name != "dead_letters":
            return super().command(name, args)
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
        if not isinstance(limit, int) or limit < 0:
            raise CommandError("limit must be a whole number >= 0")
        total, letters = self.store.dead_letters(limit)
        return {"total": total, "dead_letters": letters}

    def idle(self) -> bool:
        return not any(self.acked.values())

    def stats(self) -> dict:
        return {"pending": self.store.pending_count(), "live_keys": self.store.live_keys()}

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store:
            store.close()
