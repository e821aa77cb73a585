"""Stock tickers named in press-release text: exchange-qualified symbols and cashtags."""

from __future__ import annotations

import re

# Past this an item is a list page or spam, not one company's news.
MAX_TICKERS = 20

# A listed symbol: 1-5 capitals, optionally a class or unit suffix (BRK.B, BF-B, ABC.UN).
# Case-sensitive on purpose: "Nasdaq: Shares rose" must not yield "S".
_SYMBOL = r"[A-Z]{1,5}(?:[.\-][A-Z]{1,2})?(?![A-Za-z0-9])"

# Longer names first, so "NYSE American" is not read as "NYSE" + "American".
_LISTED = (
    r"nasdaq(?:[\s\-]?(?:gs|gm|cm|global\s+select(?:\s+market)?|global\s+market|capital\s+market))?"
    r"|nyse\s+american|nyse\s+mkt|nyse\s+arca|nyse"
    r"|amex"
    r"|tsx[\s\-]?v(?:enture)?(?:\s+exchange)?|tsx"
    r"|cse|cnsx"
)
_OTC = r"otcqb|otcqx|otc\s*pink|otcpk|otc\s*bb|otc\s*markets|otc"

# One exchange label then a list of symbols ("NASDAQ: ABCD, ABCDW"). A listed symbol
# followed by ":" is the next exchange's label ("(NASDAQ: ABCD, TSX: AB)"), not a ticker,
# and so is the start of a longer label ("TSX: BTO, NYSE AMERICAN: BTG", from a real
# GlobeNewswire release, once yielded "NYSE").
_NEXT_LABEL = rf"(?!(?i:{_LISTED}|{_OTC})\s*:)"
_EXCHANGE = re.compile(
    rf"(?<![A-Za-z])(?:(?P<listed>(?i:{_LISTED}))|(?P<otc>(?i:{_OTC})))\s*:\s*"
    rf"(?P<symbols>{_SYMBOL}(?:\s*(?:,|&|/|\band\b)\s*{_NEXT_LABEL}{_SYMBOL}(?!\s*:))*)"
)
_SYMBOL_RE = re.compile(_SYMBOL)
# "$ACMB" but not "$5", "$1.2 million" or "US$ABC"-like currency prefixes.
_CASHTAG = re.compile(r"(?<![A-Za-z0-9$])\$(?P<symbol>[A-Z]{1,5}(?:\.[A-Z]{1,2})?)(?![A-Za-z0-9])")
# Cheap gate: text with neither a colon nor a dollar sign names no ticker.
_MAYBE = re.compile(r"[:$]")


def extract_tickers(text: str, *, include_otc: bool = False) -> list[str]:
    """Ordered, unique, upper-case tickers named in text; OTC ones only when asked."""
    if not text or not _MAYBE.search(text):
        return []
    found: list[tuple[int, str]] = []
    for match in _EXCHANGE.finditer(text):
        if match.group("otc") is not None and not include_otc:
            continue
        start = match.start("symbols")
        for symbol in _SYMBOL_RE.finditer(match.group("symbols")):
            found.append((start + symbol.start(), symbol.group()))
    for match in _CASHTAG.finditer(text):
        found.append((match.start(), match.group("symbol")))
    found.sort()
    tickers: list[str] = []
    seen: set[str] = set()
    for _, symbol in found:
        if symbol not in seen:
            seen.add(symbol)
            tickers.append(symbol)
            if len(tickers) >= MAX_TICKERS:
                break
    return tickers
