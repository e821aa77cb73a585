"""The offline keyword classifier: the default LLM provider, and the one the demo uses.

Each category has weighted phrases (regexes) and a sign. Speed comes from indexing the
phrases by their first three characters: one precompiled scan finds the few places where
some phrase could start, and only the phrases that open that way are tried there.
"""

from __future__ import annotations

import collections
import math
import re
from re import _constants as _sre  # see _build
from re import _parser as _sre_parse
from typing import TYPE_CHECKING, NamedTuple

import cachetools

from actors.classification.base import Answer
from actors.classification.cache import content_hash
from actors.classification.phrases import (  # noqa: F401  (CATEGORIES is part of this API)
    _8K_ITEMS,
    _ABSORBED,
    _AMENDMENT_FACTOR,
    _FORMS,
    _HEDGED,
    _ITEM_LIST,
    _ITEM_NUMBER,
    _NEGATED,
    _PATTERNS,
    _TONE_WORDS,
    CATEGORIES,
    CATEGORY_SIGNS,
)
from actors.protocol import Analysis, Item

if TYPE_CHECKING:
    from catalyst_config import LLMConfig

TITLE_WEIGHT = 2.0  # a headline states the catalyst; a summary often only mentions it
SCAN_CHARS = 1200  # the lede carries the catalyst; boilerplate below it only adds noise
SUMMARY_CHARS = 300
MAX_KEYWORDS = 10
MATERIAL_SCORE = 0.5
NO_MATCH_SCORE = 0.1
OTHER_MAX_SCORE = 0.4  # "other" is never material on keywords alone
SCORE_SCALE = 4.0  # evidence at which the score is ~2/3 of the way from 0.1 to 1
SENTIMENT_SCALE = 4.0
_MAX_KEYWORD_CHARS = 64
_LOOKBEHIND = 48  # how far before a phrase a negation or hedge still applies

_OTHER = CATEGORIES.index("other")
_TONE = -1  # a tone word: moves sentiment, is evidence for no category
_ABSORB = -2  # a phrase matched only so that its words do not count (SPAC names)



class _Rule(NamedTuple):
    """One phrase: what a match is evidence for, and which way it leans."""

    number: int  # tells apart rules with equal weights, for per-field deduplication
    category: int  # index into CATEGORIES, or _TONE / _ABSORB
    weight: float
    polarity: float


_HEAD = 3  # phrases are indexed by this many opening characters


def _openings(ops, k: int) -> set[str]:
    """Every way the first k characters of a parsed pattern can read (fewer where it ends)."""
    heads = {""}
    for op, arg in ops:
        grown = {h for h in heads if len(h) >= k}
        for h in heads - grown:
            grown.update(h + tail for tail in _op_openings(op, arg, k - len(h)))
        heads = grown
    return heads


def _op_openings(op, arg, k: int) -> set[str]:
    """The openings of one parsed regex element; raises for what cannot be enumerated."""
    if op is _sre.LITERAL:
        return {chr(arg)}
    if op is _sre.IN:
        chars: set[str] = set()
        for kind, value in arg:
            if kind is _sre.LITERAL:
                chars.add(chr(value))
            elif kind is _sre.RANGE:
                chars.update(map(chr, range(value[0], value[1] + 1)))
            elif kind is _sre.CATEGORY and value is _sre.CATEGORY_DIGIT:
                chars.update("0123456789")
            else:
                raise ValueError(f"rules pattern opens with an open-ended class: {arg}")
        return chars
    if op is _sre.BRANCH:
        return set().union(*(_openings(alt, k) for alt in arg[1]))
    if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
        low, high, body = arg
        found: set[str] = set()
        partial = {""}
        for count in range(min(high, k) + 1):  # each repetition reads at least one character
            found.update(p for p in partial if count >= low or len(p) >= k)
            partial = {p + t for p in partial if len(p) < k for t in _openings(body, k - len(p))}
        return found
    if op in (_sre.ASSERT, _sre.ASSERT_NOT, _sre.AT):
        return {""}  # reads nothing; the whole pattern checks it after the scan
    raise ValueError(f"rules pattern opens with {op}, which cannot be indexed")


def _trie_regex(words: set[str]) -> str:
    """A regex for any of the words, nested by character so the regex engine rejects fast."""
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})

    def emit(node: dict) -> str:
        alts = [re.escape(char) + emit(child) for char, child in sorted(node.items())]
        return "" if not alts else alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return emit(trie)


def _build():
    """Compiles the phrase index: a scanner for openings, and per opening its phrases.

    The stdlib's own regex parser (re._parser) reads each phrase's openings, so the index
    cannot drift from the patterns; a Python that changes the parser fails here, at import.
    """
    specs = [(p, _ABSORB, 0.0, 0.0) for p in _ABSORBED]
    for name, entries in _PATTERNS.items():
        for pattern, weight, *lean in entries:
            specs.append((pattern, CATEGORIES.index(name), weight,
                          lean[0] if lean else CATEGORY_SIGNS[name]))
    specs += [(p, _TONE, 1.0, sign) for p, sign in _TONE_WORDS]
    by_head: dict[str, list[tuple[str, _Rule]]] = {}
    for number, (ways, category, weight, sign) in enumerate(specs):
        rule = _Rule(number, category, float(weight), float(sign))
        for way in (ways,) if isinstance(ways, str) else ways:
            parsed = _sre_parse.parse(way)
            if way != way.lower() or parsed.state.groups > 1:
                raise ValueError(f"rules pattern must be lower case, without groups: {way}")
            for head in _openings(parsed, _HEAD):
                if len(head) < _HEAD:
                    raise ValueError(f"rules pattern can match under {_HEAD} chars: {way}")
                by_head.setdefault(head, []).append((way, rule))
    # Per opening, one regex whose group number (m.lastindex) names the rule that matched;
    # openings with the same phrases share it, which halves the work at import.
    shared: dict[tuple[str, ...], re.Pattern[str]] = {}
    index = {}
    for head, entries in by_head.items():
        ways = tuple(way for way, _ in entries)
        if ways not in shared:
            shared[ways] = re.compile("(?:" + "|".join(f"({w})" for w in ways) + r")(?!\w)")
        index[head] = (shared[ways], tuple(rule for _, rule in entries))
    return re.compile(r"(?<!\w)" + _trie_regex(set(index))), index


_SCANNER, _INDEX = _build()


def classify(item: Item) -> Analysis:
    """Classifies one item by weighted phrase evidence; never raises on odd text."""
    evidence = [0.0] * len(CATEGORIES)  # unsigned: how sure we are of each category
    lean = [0.0] * len(CATEGORIES)  # signed: which way that evidence points
    found: list[tuple[int, str]] = []
    is_sec = item.kind == "sec"
    # Phrases are lower case; so is the text, which lets the scanner compare plain chars.
    title, lede = item.title[:SCAN_CHARS].lower(), item.summary[:SCAN_CHARS].lower()
    tone = _scan(title, 1.0 if is_sec else TITLE_WEIGHT, evidence, lean, found)
    tone += _scan(lede, 1.0, evidence, lean, found)
    if is_sec:
        _add_filing_evidence(item.form, (title, lede), evidence, lean, found)

    best = max(range(len(CATEGORIES)), key=lambda i: evidence[i] if i != _OTHER else 0.0)
    if evidence[best] <= 0.0:
        best = _OTHER
    score = _score(evidence[best], best)
    raw = lean[best] + 0.5 * (sum(lean) - lean[best]) + tone  # other categories count half
    sentiment = round(math.tanh(raw / SENTIMENT_SCALE), 3) + 0.0  # + 0.0: no "-0.0"
    return Analysis(
        category=CATEGORIES[best],
        score=score,
        sentiment=max(-1.0, min(1.0, sentiment)),
        tickers=list(dict.fromkeys(item.tickers)),
        summary=_clip_summary(item),
        keywords=_keywords(found, best),
        material=score >= MATERIAL_SCORE,
        provider="rules",
    )


def _scan(text: str, factor: float, evidence: list[float], lean: list[float],
          found: list[tuple[int, str]]) -> float:
    """Adds the evidence of one lower-cased field; returns its tone."""
    tone = 0.0
    seen: set[int] = set()  # a phrase repeated in one field is not more evidence
    covered = 0  # the words of a phrase do not also start another
    for opening in _SCANNER.finditer(text):
        start = opening.start()
        if start < covered:
            continue
        pattern, rules = _INDEX[opening.group()]
        match = pattern.match(text, start)
        if match is None:
            continue
        covered = match.end()
        rule = rules[match.lastindex - 1]
        if rule.category == _ABSORB or rule.number in seen:
            continue
        seen.add(rule.number)
        weight, polarity = rule.weight * factor, rule.polarity
        if polarity:
            weight, polarity = _qualify(text, start, weight, polarity)
        if rule.category == _TONE:
            tone += polarity * factor
        else:
            evidence[rule.category] += weight
            lean[rule.category] += weight * polarity
        found.append((rule.category, match.group()))
    return tone


def _qualify(text: str, start: int, weight: float, polarity: float) -> tuple[float, float]:
    """Adjusts a leaning phrase for a negation or hedge just before it."""
    window = max(0, start - _LOOKBEHIND)
    if _NEGATED.search(text, window, start):
        # "did not win approval" is still strong evidence of the category, pointing down;
        # "no going concern doubt" is weak evidence with no lean.
        return (weight, -1.0) if polarity > 0 else (weight * 0.5, 0.0)
    if polarity > 0 and _HEDGED.search(text, window, start):
        return weight * 0.5, polarity * 0.5
    return weight, polarity


def _add_filing_evidence(form: str | None, texts: tuple[str, str], evidence: list[float],
                         lean: list[float], found: list[tuple[int, str]]) -> None:
    """Adds what an SEC filing's form type and 8-K item numbers say."""
    form = " ".join((form or "").upper().split())
    base = form[:-2] if form.endswith("/A") else form
    signals = []
    if base in _FORMS:
        category, weight, polarity = _FORMS[base]
        signals.append((category, weight * (_AMENDMENT_FACTOR if base != form else 1.0),
                        polarity, f"form {form.lower()}"))
    numbers = {n for text in texts for listed in _ITEM_LIST.finditer(text)
               for n in _ITEM_NUMBER.findall(listed.group(1))}
    signals += [(*_8K_ITEMS[n], f"item {n}") for n in sorted(numbers & _8K_ITEMS.keys())]
    for category, weight, polarity, phrase in signals:
        evidence[category] += weight
        lean[category] += weight * polarity
        found.append((category, phrase))


def _score(strength: float, category: int) -> float:
    """Maps evidence to 0.1..1 with diminishing returns; "other" stays below material."""
    if strength <= 0.0:
        return NO_MATCH_SCORE
    score = NO_MATCH_SCORE + (1.0 - NO_MATCH_SCORE) * (1.0 - math.exp(-strength / SCORE_SCALE))
    if category == _OTHER:
        score = min(score, OTHER_MAX_SCORE)
    return round(min(1.0, score), 3)


def _keywords(found: list[tuple[int, str]], best: int) -> list[str]:
    """The matched phrases, the winning category's first, deduplicated and bounded."""
    unique: dict[str, None] = {}
    for phrase in [p for c, p in found if c == best] + [p for c, p in found if c != best]:
        unique.setdefault(" ".join(phrase.split())[:_MAX_KEYWORD_CHARS], None)
        if len(unique) == MAX_KEYWORDS:
            break
    return list(unique)


def _clip_summary(item: Item) -> str:
    """The summary (or the title) with whitespace runs collapsed, at most SUMMARY_CHARS."""
    # Collapsing only a prefix keeps a 16 KB summary cheap.
    clipped = " ".join(item.summary[: SUMMARY_CHARS * 8].split())
    return (clipped or " ".join(item.title[: SUMMARY_CHARS * 8].split()))[:SUMMARY_CHARS]


class RulesClassifier:
    """The offline keyword classifier: free, instant, deterministic."""

    wake_fd = None

    def __init__(self, llm: LLMConfig):
        self.cache: cachetools.TTLCache = cachetools.TTLCache(maxsize=llm.cache_size,
                                                              ttl=llm.cache_ttl_s)
        self.counters: collections.Counter[str] = collections.Counter()

    def submit(self, item: Item, attempt: int) -> Analysis:
        cache_key = (item.key, content_hash(item))
        analysis = self.cache.get(cache_key)
        if analysis is not None:
            self.counters["cache_hits"] += 1
            return analysis
        analysis = classify(item)
        self.counters["classified_rules"] += 1
        self.cache[cache_key] = analysis
        return analysis

    def answers(self) -> list[Answer]:
        return []

    def tick(self, now: float) -> None:
        pass

    def next_deadline(self, now: float) -> float:
        return float("inf")

    def saturated(self) -> bool:
        return False

    def busy(self) -> bool:
        return False

    def stats(self) -> dict:
        return {**self.counters, "cache_size": len(self.cache)}

    def close(self) -> None:
        pass
