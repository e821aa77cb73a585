"""Feed polling for the fetcher actor: bounded HTTP (http.py), EDGAR fair access
(edgar.py), parsing (parse.py), items and their keys (items.py, keys.py, tickers.py,
cik_map.py), the all-feeds-silent outage detector (outage.py); fetch.py drives a cycle."""

from actors.feeds.fetch import FeedFetcher
from actors.feeds.outage import OutageDetector

__all__ = ["FeedFetcher", "OutageDetector"]
