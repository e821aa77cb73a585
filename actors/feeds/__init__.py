"""Feed polling for the fetcher actor: bounded HTTP (http.py), EDGAR fair access
(edgar.py), parsing (parse.py), items and their keys (items.py, keys.py, tickers.py,
cik_map.py), polls of single feeds (fetch.py) on their own schedules (schedule.py), the
all-feeds-silent outage detector (outage.py), per-feed staleness (staleness.py), and which
feeds this fetcher may poll when hosts share them (leases.py)."""

from actors.feeds.fetch import FeedFetcher
from actors.feeds.leases import FeedLeases
from actors.feeds.outage import OutageDetector
from actors.feeds.schedule import FeedSchedule
from actors.feeds.staleness import Staleness

__all__ = ["FeedFetcher", "FeedLeases", "FeedSchedule", "OutageDetector", "Staleness"]
