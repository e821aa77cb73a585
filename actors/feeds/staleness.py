"""Per-feed staleness: a feed on which nothing new has appeared for its span, while other
feeds had news, raises one feed_stale admin event, and one feed_fresh when news returns.

A dead URL, a renamed EDGAR form or a wire that moved its feed answers 200 with nothing
new forever; without this it would be noticed never. "While others had news" keeps a
quiet weekend (EDGAR feeds are empty from Friday night) from raising anything. Times are
wall-clock epoch seconds; spans start at the actor's start, so a restart forgives.
"""

from __future__ import annotations


class Staleness:
    def __init__(self, spans_s: dict[str, float], *, now: float):
        self.spans_s = dict(spans_s)
        self.started = now
        self._last_new: dict[str, float] = {}  # feed -> last time a claim had a new key of it
        self._stale_since: dict[str, float] = {}  # feed -> when feed_stale was raised

    def update(self, spans_s: dict[str, float]) -> None:
        """A reload: the feeds and spans now configured (a new feed's span starts now)."""
        self.spans_s = dict(spans_s)
        for forgotten in [f for f in self._stale_since if f not in spans_s]:
            del self._stale_since[forgotten]

    def saw_new(self, feeds: set[str], now: float) -> None:
        for feed in feeds:
            if feed in self.spans_s:
                self._last_new[feed] = now

    def last_new_at(self, feed: str) -> float | None:
        return self._last_new.get(feed)

    def is_stale(self, feed: str) -> bool:
        return feed in self._stale_since

    def check(self, now: float) -> list[tuple[str, str, str]]:
        """(feed, event, message) for each feed that turned stale or fresh since the last
        check."""
        events = []
        for feed, span in self.spans_s.items():
            last = self._last_new.get(feed)
            if feed in self._stale_since:
                if last is not None and last > self._stale_since[feed]:
                    del self._stale_since[feed]
                    events.append((feed, "feed_fresh", f"feed {feed} has new items again"))
                continue
            quiet_since = last if last is not None else self.started
            if now - quiet_since <= span:
                continue
            others = any(now - t <= span for f, t in self._last_new.items() if f != feed)
            if others:
                self._stale_since[feed] = now
                hours = (now - quiet_since) / 3600
                events.append((feed, "feed_stale",
                               f"feed {feed}: nothing new for {hours:.1f} h while other feeds "
                               "had news; is its URL or form type still right?"))
        return events
