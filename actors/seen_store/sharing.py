"""Which live fetcher each feed belongs to, when several hosts share the feeds.

Leases (actors/feeds/leases.py, kept by the seen-store) make sure one fetcher polls a feed
at a time; this decides which one should, so the feeds are spread over the hosts that are
up instead of all going to whichever fetcher asked first. The seen-store keeps who is live
(each fetcher's last lease request, with the feeds it polls) and grants a fetcher only the
feeds shared to it; a fetcher holding a feed shared to another lets it go at its next
renewal, and the new owner, told a handover is due, asks again soon and takes it.

share() is a pure function of the live fetchers and their feeds, so every store computes
the same answer from the same membership. Feeds go, in name order, to the fetcher ranked
first for that feed by a hash of (feed, fetcher) (rendezvous hashing: a fetcher joining or
leaving moves few feeds) among those that poll the feed and have fewer than their fair
share, ceil(feeds / fetchers); when every one of them is full, to the least loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def _rank(feed: str, fetcher: str) -> bytes:
    # Stable across processes and hosts (Python's hash() is salted per process).
    return hashlib.blake2b(f"{feed}\x00{fetcher}".encode(), digest_size=8).digest()


def share(fetchers: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """{feed: fetcher} for every feed some live fetcher polls. fetchers: each live
    fetcher's feeds."""
    polled_by: dict[str, list[str]] = {}
    for fetcher in sorted(fetchers):
        for feed in set(fetchers[fetcher]):
            polled_by.setdefault(feed, []).append(fetcher)
    if not polled_by:
        return {}
    fair = -(-len(polled_by) // len(fetchers))
    load = dict.fromkeys(fetchers, 0)
    owner: dict[str, str] = {}
    for feed in sorted(polled_by):
        ranked = sorted(polled_by[feed], key=lambda f: _rank(feed, f), reverse=True)
        chosen = next((f for f in ranked if load[f] < fair), None)
        if chosen is None:
            chosen = min(ranked, key=lambda f: load[f])  # stable: the best ranked of them
        owner[feed] = chosen
        load[chosen] += 1
    return owner


def shared_to(fetcher: str, fetchers: Mapping[str, Iterable[str]]) -> list[str]:
    """The feeds share() gives fetcher, sorted."""
    return sorted(feed for feed, owner in share(fetchers).items() if owner == fetcher)


def owned_by(fetcher: str, fetchers: Mapping[str, Iterable[str]],
             pinned: Mapping[str, str]) -> list[str]:
    """The feeds fetcher should hold, sorted: those pinned to it (a feed a live fetcher
    holds and has paused stays with it, unpolled, rather than move to a host that would
    poll it), and its share of the others."""
    rest = {name: [feed for feed in feeds if feed not in pinned]
            for name, feeds in fetchers.items()}
    return sorted({feed for feed, who in pinned.items() if who == fetcher}
                  | set(shared_to(fetcher, rest)))
