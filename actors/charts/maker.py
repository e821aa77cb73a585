"""Charts for alerts, rendered on one worker thread so no text alert ever waits on one
longer than ``alerts.charts.max_wait_s`` (the alert actor stops waiting; the chart is then
left out). Old chart files are pruned."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from actors import protocol

if TYPE_CHECKING:
    from catalyst_config import Config


class ChartMaker:
    """Renders charts on one worker thread, off the text alert's path."""

    def __init__(self, config: Config, prices):
        c = config.alerts.charts
        self.dir = config.path(c.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep_s = c.keep_days * 86400.0
        self.prices = prices
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="chart")

    @classmethod
    def from_config(cls, config: Config) -> ChartMaker | None:
        """A ChartMaker when charts are on and have a price provider, else None."""
        from actors.charts import price_provider_from_config

        prices = price_provider_from_config(config.alerts.charts, config.secrets)
        return cls(config, prices) if prices is not None else None

    def submit(self, item: protocol.Item, tickers: list[str]) -> Future | None:
        if not tickers:
            return None
        return self.pool.submit(self._render, item, tickers[0])

    def _render(self, item: protocol.Item, ticker: str) -> str | None:
        from actors.charts.render import render_chart

        series = self.prices.series(ticker)
        if series is None or not series.bars:
            return None
        digest = hashlib.blake2b(item.key.encode(), digest_size=8).hexdigest()
        path = self.dir / f"{ticker}-{digest}.png"
        render_chart(series, title=item.title, ticker=ticker,
                     news_time=item.published or item.fetched_at, path=path)
        return str(path)

    def prune(self) -> int:
        """Charts are output, but months of them are not: old ones are removed."""
        cutoff = time.time() - self.keep_s
        removed = 0
        for png in self.dir.glob("*.png"):
            try:
                if png.stat().st_mtime < cutoff:
                    png.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.prices.close()
