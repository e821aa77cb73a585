"""actors/seen_store/sharing.py: how the feeds are spread over the live fetchers."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.seen_store.sharing import owned_by, share, shared_to

FEEDS = [f"feed-{i}" for i in range(40)]


def test_two_fetchers_of_the_same_feeds_get_half_each_and_every_feed_once():
    owner = share({"a/fetcher-0": FEEDS, "b/fetcher-0": FEEDS})
    assert sorted(owner) == sorted(FEEDS)
    a, b = shared_to("a/fetcher-0", {"a/fetcher-0": FEEDS, "b/fetcher-0": FEEDS}), \
        shared_to("b/fetcher-0", {"a/fetcher-0": FEEDS, "b/fetcher-0": FEEDS})
    assert len(a) == len(b) == 20 and not set(a) & set(b)


def test_a_fetcher_alone_gets_every_feed_and_one_joining_moves_only_its_share():
    alone = share({"a": FEEDS})
    assert set(alone.values()) == {"a"}
    three = share({"a": FEEDS, "b": FEEDS, "c": FEEDS})
    four = share({"a": FEEDS, "b": FEEDS, "c": FEEDS, "d": FEEDS})
    moved = sum(1 for feed in FEEDS if three[feed] != four[feed])
    assert sum(1 for o in four.values() if o == "d") == 10
    assert moved <= 20, moved  # rendezvous: mostly d's own share moves, not a reshuffle


def test_a_feed_goes_only_to_a_fetcher_that_polls_it():
    owner = share({"a": ["x", "y", "z"], "b": ["y"], "c": []})
    assert owner["x"] == "a" and owner["z"] == "a" and owner["y"] in {"a", "b"}
    assert "c" not in owner.values()


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12),
                       st.lists(st.sampled_from(FEEDS[:25]), max_size=25),
                       min_size=1, max_size=6))
def test_every_polled_feed_has_one_owner_that_polls_it_and_no_one_is_overloaded(fetchers):
    owner = share(fetchers)
    polled = {feed for feeds in fetchers.values() for feed in feeds}
    assert set(owner) == polled
    assert all(feed in fetchers[who] for feed, who in owner.items())
    # The same membership in any order gives the same answer, on any host.
    assert share(dict(reversed(list(fetchers.items())))) == owner
    if all(set(feeds) == polled for feeds in fetchers.values()):  # all poll the same feeds
        fair = math.ceil(len(polled) / len(fetchers))
        loads = [sum(1 for who in owner.values() if who == f) for f in fetchers]
        assert max(loads) <= fair, loads


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]),
                       st.lists(st.sampled_from(FEEDS[:12]), max_size=12), min_size=1),
       st.data())
def test_a_pinned_feed_stays_with_its_fetcher_and_every_feed_has_one_owner(fetchers, data):
    held = sorted({(feed, who) for who, feeds in fetchers.items() for feed in feeds})
    pinned = dict(data.draw(st.lists(st.sampled_from(held), unique_by=lambda p: p[0]))
                  if held else [])
    owners: dict[str, list[str]] = {}
    for who in fetchers:
        for feed in owned_by(who, fetchers, pinned):
            owners.setdefault(feed, []).append(who)
    assert set(owners) == {feed for feeds in fetchers.values() for feed in feeds}
    assert all(len(who) == 1 for who in owners.values()), owners  # never two pollers
    assert all(owners[feed] == [who] for feed, who in pinned.items())
