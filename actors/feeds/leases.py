"""Which feeds this fetcher may poll when several hosts share one PostgreSQL: the feeds
whose lease it holds.

Leases live in the seen-store (actors/seen_store), taken and renewed through dedupe over
the RPC socket (protocol.FeedLease). A fetcher asks for all of its feeds every third of
the lease time; the store shares the feeds among the fetchers that asked within a lease
time (actors/seen_store/sharing.py) and grants each feed shared to this one that is free,
lapsed or already its own, so one live fetcher polls a feed at a time, the feeds are
spread over the live hosts, and when a host dies its feeds are taken by the others within
one lease time. When a host joins (or comes back) the others give up its share at their
next renewal; the store tells it a handover is due, and it asks again soon to take them.
The fetcher's own count of a lease runs from when it asked, not from when the store
answered, so it stops polling a feed no later than the store lets another holder take it.
Without an answer (dedupe or the database away) nothing is renewed and the held feeds
lapse: polling stops rather than risk two pollers.

Pure: the caller passes the clock and carries the messages.
"""

from __future__ import annotations

from collections.abc import Iterable

from actors import protocol

RENEW_FRACTION = 1 / 3  # renewed this far into a lease: two tries fit before it lapses
# With a handover due, asked again this far into a lease: the feeds another fetcher gives
# up at its next renewal go unpolled at most this long.
HANDOVER_FRACTION = 1 / 12


class FeedLeases:
    def __init__(self, holder: str, ttl_s: float, *, now: float):
        self.holder = holder
        self.ttl_s = ttl_s
        self.held: set[str] = set()
        self.held_until = 0.0  # monotonic: when the held leases lapse unless renewed
        self.next_request = now
        self.pending: tuple[int, float] | None = None  # (req_id, asked at) of the last ask
        self.requests = 0
        self.lapses = 0

    def request(self, req_id: int, feeds: list[str], now: float,
                paused: Iterable[str] = ()) -> protocol.FeedLease | None:
        """The renewal due now, if one is. paused: the feeds paused on this host."""
        if now < self.next_request:
            return None
        self.next_request = now + self.ttl_s * RENEW_FRACTION
        self.pending = (req_id, now)
        self.requests += 1
        return protocol.FeedLease(req_id=req_id, holder=self.holder, feeds=sorted(feeds),
                                  ttl_s=self.ttl_s, paused=sorted(set(paused) & set(feeds)))

    def answered(self, reply: protocol.FeedLeased) -> bool:
        """Takes dedupe's answer to the last ask; True when the held set changed."""
        if self.pending is None or reply.req_id != self.pending[0] or reply.error:
            return False  # late, or refused: what is held lapses on its own time
        asked_at = self.pending[1]
        self.pending = None
        held = set(reply.feeds)
        self.held_until = asked_at + self.ttl_s
        if reply.handover:
            self.next_request = min(self.next_request, asked_at + self.ttl_s * HANDOVER_FRACTION)
        changed, self.held = held != self.held, held
        return changed

    def lapse(self, now: float) -> bool:
        """Drops every held feed once its lease has run out unrenewed; True if it did."""
        if self.held and now >= self.held_until:
            self.held = set()
            self.lapses += 1
            return True
        return False

    def next_deadline(self) -> float:
        return min(self.next_request, self.held_until) if self.held else self.next_request

    def release(self, req_id: int) -> protocol.FeedLease:
        """Gives every held feed back (a clean stop): another host takes them at once."""
        held, self.held = sorted(self.held), set()
        return protocol.FeedLease(req_id=req_id, holder=self.holder, feeds=held,
                                  ttl_s=self.ttl_s, release=True)

    def stats(self, now: float) -> dict:
        return {"holder": self.holder, "held": len(self.held), "requests": self.requests,
                "lapses": self.lapses,
                "held_for_s": round(max(0.0, self.held_until - now), 3) if self.held else 0.0}
