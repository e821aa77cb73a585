"""SEC's CIK -> tickers map (company_tickers.json), cached on disk in data_dir."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable

from actors.errors import FeedError

log = logging.getLogger("catalyst.fetcher")

CIK_MAP_FILE = "company_tickers.json"
# SEC's file is about 1 MB; this leaves room to grow and stops a runaway answer.
CIK_MAP_MAX_BYTES = 32 * 1024 * 1024
# After a failed refresh the old map is kept and the next try waits this long, so a
# down EDGAR costs one failed request per interval, not one per fetch cycle.
CIK_MAP_RETRY_S = 900.0
_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,15}$")


def parse_company_tickers(body: bytes) -> dict[str, list[str]]:
    """{10-digit CIK: [tickers]} from company_tickers.json (or its _exchange variant)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("fields"), list) and isinstance(data.get("data"), list):
        fields = data["fields"]
        if "cik" not in fields or "ticker" not in fields:
            raise ValueError("fields lack cik or ticker")
        cik_at, ticker_at = fields.index("cik"), fields.index("ticker")
        rows = [(row[cik_at], row[ticker_at]) for row in data["data"]
                if isinstance(row, list) and len(row) > max(cik_at, ticker_at)]
    elif isinstance(data, dict):
        rows = [(row.get("cik_str"), row.get("ticker")) for row in data.values() if isinstance(row, dict)]
    else:
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    mapping: dict[str, list[str]] = {}
    for cik, ticker in rows:
        if isinstance(cik, bool) or not isinstance(cik, (int, str)) or not isinstance(ticker, str):
            continue
        cik_digits = str(cik).strip()
        symbol = ticker.strip().upper()
        if not cik_digits.isdigit() or len(cik_digits) > 10 or not _TICKER.match(symbol):
            continue
        tickers = mapping.setdefault(cik_digits.zfill(10), [])
        if symbol not in tickers:
            tickers.append(symbol)
    if not mapping:
        raise ValueError("no CIK/ticker entries")
    return mapping


class CikTickerMap:
    """Tickers of an SEC filer by CIK; the disk copy is refreshed when older than max_age_s."""

    def __init__(self, path: Path, url: str, max_age_s: float, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.url = url
        self.max_age_s = max_age_s
        self.clock = clock
        self._map: dict[str, list[str]] = {}
        self._retry_at = 0.0
        self._loaded_mtime: float | None = None
        self.last_error: str | None = None
        self.refreshes = 0
        self._load()

    def tickers(self, cik: str) -> list[str]:
        return self._map.get(cik.zfill(10), [])

    def age_s(self) -> float | None:
        try:
            return max(0.0, self.clock() - self.path.stat().st_mtime)
        except OSError:
            return None

    def needs_refresh(self) -> bool:
        """Is the map missing or stale? Picks up a copy another fetcher instance stored."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime is not None and mtime != self._loaded_mtime:
            self._load()
        if self.clock() < self._retry_at:
            return False
        age = self.age_s()
        return age is None or age > self.max_age_s or not self._map

    def refresh(self, download: Callable[[str], bytes]) -> bool:
        """Fetch, validate and store a new map; on any failure keep the old one."""
        try:
            body = download(self.url)
            mapping = parse_company_tickers(body)
            self._store(body)
        except (FeedError, ValueError, OSError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self._retry_at = self.clock() + CIK_MAP_RETRY_S
            log.warning("CIK map refresh from %s failed (%s); keeping %d cached CIKs",
                        self.url, self.last_error, len(self._map))
            return False
        self._map = mapping
        self.last_error = None
        self.refreshes += 1
        log.info("CIK map refreshed: %d CIKs", len(mapping))
        return True

    def _load(self) -> None:
        try:
            self._loaded_mtime = self.path.stat().st_mtime
            self._map = parse_company_tickers(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # a corrupt cache is refetched, not fatal
            self.last_error = f"cache {self.path}: {exc}"[:300]
            log.warning("ignoring CIK map cache %s: %s", self.path, exc)

    def _store(self, body: bytes) -> None:
        # Write then rename: a crash mid-write never leaves a truncated cache behind.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".company_tickers.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
            os.replace(tmp, self.path)
            self._loaded_mtime = self.path.stat().st_mtime
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def stats(self) -> dict:
        age = self.age_s()
        return {"ciks": len(self._map), "age_s": None if age is None else round(age, 1),
                "refreshes": self.refreshes, "last_error": self.last_error}
