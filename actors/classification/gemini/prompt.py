"""What the llm actor asks Gemini and how it reads the answer.

One request carries a batch of items as JSON; the response schema constrains the answer
to one result per item (tickers, a catalyst category from the keyword classifier's list,
sentiment, score, a short summary, keywords, material). The answer is checked item by
item: the valid results are kept, the rest are named so they can be asked again.
"""

from __future__ import annotations

import json
import math
import re

import msgspec
from google.genai import types

from actors.classification.rules import CATEGORIES, MAX_KEYWORDS, SUMMARY_CHARS
from actors.protocol import Analysis, Item

PROVIDER = "gemini"
MAX_TICKERS = 10
_TICKER = re.compile(r"[A-Z][A-Z0-9]{0,6}(?:[.\-][A-Z0-9]{1,3})?")
_KEYWORD_CHARS = 64

_CATEGORY_NOTES = {
    "fda_approval": "FDA/EMA approvals, clearances, designations, CRLs, clinical holds",
    "clinical_results": "trial data, endpoints met or missed",
    "merger_acquisition": "mergers, acquisitions, tender offers, takeover bids",
    "offering_dilution": "share offerings, shelf registrations, convertibles, warrants",
    "earnings_guidance": "results, guidance raised or cut, preannouncements",
    "contract_partnership": "contracts, orders, licences, partnerships",
    "uplisting": "moves up to Nasdaq or NYSE",
    "going_concern": "going-concern doubt, liquidity warnings",
    "reverse_split": "reverse stock splits",
    "delisting_notice": "exchange deficiency or delisting notices",
    "insider_or_activist": "insider buying or selling, 13D/13G stakes, activists",
    "bankruptcy": "bankruptcy, restructuring support agreements",
    "buyback_dividend": "buybacks, dividends, forward splits",
    "other": "anything else",
}
SYSTEM_INSTRUCTION = (
    "You classify market-moving news for traders: press releases and SEC filings about "
    "listed companies. The user message is JSON {\"items\": [...]}, each item with an "
    "index, title, summary and, when known, source, kind (pr or sec), form and tickers. "
    "Answer with exactly one result per item, carrying the item's index:\n"
    "- tickers: exchange symbols of the companies the news is about, upper case ([] if none)\n"
    "- category: the catalyst, one of the categories below\n"
    "- sentiment: likely effect on the stock, -1 (very negative) to 1 (very positive)\n"
    "- score: 0 to 1, how likely the news moves the stock materially today\n"
    f"- summary: one plain sentence of at most {SUMMARY_CHARS} characters\n"
    f"- keywords: up to {MAX_KEYWORDS} short phrases from the text that carry the catalyst\n"
    "- material: true when a trader should look at it now\n"
    "Categories:\n" + "".join(f"- {c}: {_CATEGORY_NOTES[c]}\n" for c in CATEGORIES)
    + "Judge only from the item's own text.")
assert set(_CATEGORY_NOTES) == set(CATEGORIES), "every category needs a note for the model"

_FIELDS = ["index", "tickers", "category", "sentiment", "score", "summary", "keywords",
           "material"]
RESPONSE_SCHEMA = types.Schema(
    type=types.Type.OBJECT, required=["results"], properties={"results": types.Schema(
        type=types.Type.ARRAY, items=types.Schema(
            type=types.Type.OBJECT, required=_FIELDS, property_ordering=_FIELDS, properties={
                "index": types.Schema(type=types.Type.INTEGER),
                "tickers": types.Schema(type=types.Type.ARRAY, max_items=MAX_TICKERS,
                                        items=types.Schema(type=types.Type.STRING)),
                "category": types.Schema(type=types.Type.STRING, enum=list(CATEGORIES)),
                "sentiment": types.Schema(type=types.Type.NUMBER, minimum=-1.0, maximum=1.0),
                "score": types.Schema(type=types.Type.NUMBER, minimum=0.0, maximum=1.0),
                "summary": types.Schema(type=types.Type.STRING, max_length=SUMMARY_CHARS),
                "keywords": types.Schema(type=types.Type.ARRAY, max_items=MAX_KEYWORDS,
                                         items=types.Schema(type=types.Type.STRING)),
                "material": types.Schema(type=types.Type.BOOLEAN),
            }))})


class _Result(msgspec.Struct):
    index: int
    tickers: list[str]
    category: str
    sentiment: float
    score: float
    summary: str
    keywords: list[str]
    material: bool


class _Answer(msgspec.Struct):
    results: list[msgspec.Raw]


def prompt_for(items: list[Item], max_chars: int) -> str:
    """The user message: the batch as JSON, each summary clipped."""
    docs = []
    for i, item in enumerate(items):
        doc = {"index": i, "title": item.title, "summary": item.summary[:max_chars],
               "source": item.source, "kind": item.kind}
        if item.form:
            doc["form"] = item.form
        if item.tickers:
            doc["tickers"] = item.tickers
        docs.append(doc)
    return json.dumps({"items": docs}, ensure_ascii=False)


def parse_answer(text: str, items: list[Item]) -> tuple[dict[int, Analysis], list[int], str]:
    """Valid analyses by batch position, the positions without one, and what was wrong."""
    everything = list(range(len(items)))
    if not text.strip():
        return {}, everything, "empty answer"
    try:
        answer = msgspec.json.decode(text, type=_Answer)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return {}, everything, f"not the answer's JSON shape: {str(exc)[:120]}"
    analyses: dict[int, Analysis] = {}
    problems = []
    for raw in answer.results:
        try:
            result = msgspec.json.decode(raw, type=_Result)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            problems.append(str(exc)[:80])
            continue
        wrong = _off_schema(result, len(items))
        if wrong:
            problems.append(wrong)
        elif result.index not in analyses:
            analyses[result.index] = _analysis(result, items[result.index])
    invalid = [i for i in everything if i not in analyses]
    if invalid and not problems:
        problems.append(f"no result for {len(invalid)} of {len(items)} items")
    return analyses, invalid, "; ".join(problems[:3])


def _off_schema(r: _Result, n: int) -> str:
    if not 0 <= r.index < n:
        return f"index {r.index} out of range"
    if r.category not in CATEGORIES:
        return f"category {r.category[:40]!r} is not a catalyst category"
    if not (math.isfinite(r.sentiment) and -1.0 <= r.sentiment <= 1.0):
        return f"sentiment {r.sentiment} outside -1..1"
    if not (math.isfinite(r.score) and 0.0 <= r.score <= 1.0):
        return f"score {r.score} outside 0..1"
    return ""


def _analysis(r: _Result, item: Item) -> Analysis:
    """The Analysis of a valid result, trimmed to what the protocol and sinks accept."""
    tickers: list[str] = []
    for raw in r.tickers:
        ticker = raw.strip().lstrip("$").upper()
        if _TICKER.fullmatch(ticker) and ticker not in tickers:
            tickers.append(ticker)
    keywords = list(dict.fromkeys(" ".join(k.split())[:_KEYWORD_CHARS]
                                  for k in r.keywords if k.strip()))[:MAX_KEYWORDS]
    summary = " ".join(r.summary.split()) or " ".join(item.title.split())
    return Analysis(category=r.category, score=round(r.score, 4),
                    sentiment=round(r.sentiment, 4) + 0.0,  # + 0.0: no "-0.0"
                    tickers=tickers[:MAX_TICKERS] or list(dict.fromkeys(item.tickers)),
                    summary=summary[:SUMMARY_CHARS], keywords=keywords, material=r.material,
                    provider=PROVIDER)
