"""Charts for the alert actor: price series from a vendor (prices.py, vendors.py), cached
and bounded, rendered to PNG (render.py) off the text alert's path (maker.py).
price_provider_from_config() is the factory of price providers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from actors.charts.maker import ChartMaker
from actors.charts.prices import (
    CONNECT_TIMEOUT_S,
    CachedPrices,
    HttpReplayProvider,
    PriceProvider,
    PriceSeries,
)
from actors.charts.vendors import AlphaVantageProvider, TiingoProvider

if TYPE_CHECKING:
    from catalyst_config import ChartsConfig, Secrets

__all__ = ["ChartMaker", "PriceProvider", "PriceSeries", "price_provider_from_config"]

log = logging.getLogger(__name__)


def price_provider_from_config(charts: ChartsConfig,
                               secrets: Secrets | None = None) -> PriceProvider | None:
    """The cached provider that ``alerts.charts`` describes, or None when charts have no prices."""
    if not charts.enabled:
        return None
    wait = max(charts.max_wait_s, 0.5)
    http = {"connect_timeout_s": min(CONNECT_TIMEOUT_S, wait), "read_timeout_s": wait,
            "deadline_s": wait}
    provider: PriceProvider
    if charts.provider == "replay":
        if not charts.price_url:
            return None
        provider = HttpReplayProvider(charts.price_url, **http)
    else:
        key_env = charts.key_env()
        key = secrets.get(key_env) if secrets is not None and key_env else None
        if not key:
            log.error("charts: %s needs $%s; alerts go without charts", charts.provider, key_env)
            return None
        vendor = TiingoProvider if charts.provider == "tiingo" else AlphaVantageProvider
        provider = vendor(key, base_url=charts.base_url, **http)
    return CachedPrices(provider, maxsize=charts.cache_size, ttl_s=charts.cache_ttl_s)
