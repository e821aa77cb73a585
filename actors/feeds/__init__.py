"""Feed polling for the fetcher actor: bounded HTTP (http.py), EDGAR fair access
(edgar.py), parsing (parse.py), items and their keys (items.py, keys.py, tickers.py,
cik_map.py), polls of single feeds (fetch.py) on their own schedules (schedule.py), the
all-feeds-silent outage detector (outage.py), per-feed staleness (staleness.py)."""

from actors.feeds.fetch import FeedFetcher
from actors.feeds.outage import OutageDetector
from actors.feeds.schedule import FeedSchedule
from actors.feeds.staleness import Staleness

__all__ = ["FeedFetcher", "FeedSchedule", "OutageDetector", "Staleness"]
